"""The converted copy of a GGUF model in the user cache: keyed by the file's contents, one per file name."""

import os
import shutil

from grasprune.method.models import _evict_older_copies, converted_gguf_folder, embedded_gguf_path


def test_a_reinstalled_gguf_finds_the_copy_an_earlier_install_made(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASPRUNE_CACHE", str(tmp_path / "cache"))
    installed = embedded_gguf_path()
    reinstalled = tmp_path / "site-packages" / installed.name  # another path, another mtime, same bytes
    reinstalled.parent.mkdir()
    shutil.copyfile(installed, reinstalled)
    os.utime(reinstalled, (1_000_000, 1_000_000))
    assert converted_gguf_folder(reinstalled) == converted_gguf_folder(installed)
    with open(reinstalled, "r+b") as handle:  # other contents under the same name: another copy
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    assert converted_gguf_folder(reinstalled) != converted_gguf_folder(installed)


def test_converting_removes_the_older_copies_of_that_file_name_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASPRUNE_CACHE", str(tmp_path))
    current = converted_gguf_folder(embedded_gguf_path())
    stem = current.name.rsplit("-", 1)[0]
    kept = [current, current.with_name(f"{stem}-other-0123456789abcdef"), current.with_name("tiny-0123456789abcdef"),
            current.with_name(f".{current.name}.tmp")]
    older = [current.with_name(f"{stem}-0123456789abcdef"), current.with_name(f"{stem}-fedcba9876543210")]
    for folder in kept + older:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    _evict_older_copies(current)
    assert [f.exists() for f in kept] == [True] * 4 and [f.exists() for f in older] == [False] * 2
