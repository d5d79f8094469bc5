"""Path traversal on every route, query parameter and form that takes a path or a run id.

The policy (README, "Reliability and security"): whatever the studio serves, deletes or writes (the
download route, run ids from links and pickers, Resume, Delete, Export, output folders) stays inside
the runs folder: ids are validated, paths resolved, and ``..``, absolute paths, symlinks out of the
folder and odd names are refused. Model and data paths typed into the Prune form are the user's own
files (the server binds to localhost): resolved and checked for kind, never served.

The arena: a runs folder with one good run and three traps, and a folder outside it with a secret.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import tarfile
import urllib.parse
from pathlib import Path

import pytest
import tomllib
from test_browser import server  # noqa: F401 - a fixture: `streamlit run app.py` on a free port

from grasprune.config import PruneConfig
from grasprune.errors import UserError
from grasprune.runs.archive import build_archive, served_archive
from grasprune.runs.jobs import JobRegistry
from grasprune.runs.store import Run, delete_run, list_runs, run_in_root

from conftest import REPO

GOOD = "20261128-120000-00000a"  # a completed run inside the runs folder, its archive prepared
OUTSIDE = "20261128-120000-00000b"  # a completed run in a folder outside, with a secret in its checkpoint
LINKED = "20261128-120000-00000c"  # in the runs folder: a symlink to OUTSIDE's folder
LINKED_ARCHIVE = "20261128-120000-00000d"  # a run inside whose checkpoint.tar is a symlink to OUTSIDE's archive
OUT_ELSEWHERE = "20261128-120000-00000e"  # a run inside whose checkpoint (run.json "out") is outside
SECRET = "TOP-SECRET-do-not-serve"
MARKER = "outside-model-marker"


def fake_run(folder: Path, model: str, content: str, out: Path | None = None) -> Run:
    """A completed run folder with a small exported checkpoint (no model needed)."""
    folder.mkdir(parents=True)
    run = Run(folder)
    (folder / "config.json").write_text(json.dumps(PruneConfig(model=model, keep_ratio=0.5).to_dict()))
    (folder / "run.json").write_text(json.dumps({"out": str(out) if out else None}))
    layer = {"layer": 0, "ffn_channels": 1, "kv_groups": 1, "q_heads": 2, "ffn_channels_before": 2,
             "kv_groups_before": 1}
    (folder / "report.json").write_text(json.dumps({"base_model": model, "keep_ratio": 0.5, "metrics": {},
                                                    "params": {"total_before": 10, "total_after": 5},
                                                    "layers": [layer]}))
    checkpoint = run.output_dir()
    checkpoint.mkdir(parents=True)
    (checkpoint / "grasprune.json").write_text("{}")
    (checkpoint / "weights.txt").write_text(content)
    run.set_status("completed")
    return run


def build_arena(base: Path) -> tuple[Path, Path]:
    root, outside = base / "runs", base / "outside"
    build_archive(fake_run(root / GOOD, "inside-model", "inside"))
    secret_run = fake_run(outside / OUTSIDE, MARKER, SECRET)
    build_archive(secret_run)
    (root / LINKED).symlink_to(outside / OUTSIDE, target_is_directory=True)
    linked = fake_run(root / LINKED_ARCHIVE, "inside-model", "x")
    shutil.rmtree(linked.output_dir())
    shutil.copytree(secret_run.output_dir(), linked.output_dir())  # the same files: the fingerprints match
    shutil.copy(secret_run.folder / "checkpoint.tar.json", linked.folder / "checkpoint.tar.json")
    (linked.folder / "checkpoint.tar").symlink_to(secret_run.folder / "checkpoint.tar")
    build_archive(fake_run(root / OUT_ELSEWHERE, "inside-model", SECRET, out=outside / "elsewhere"))
    return root, outside


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> tuple[Path, Path]:
    return build_arena(tmp_path_factory.mktemp("arena"))


# ---- run ids (links, pickers, the download route): ids only, validated, inside the runs folder

def bad_refs(root: Path, outside: Path) -> list[str]:
    return ["../../etc", "..", ".", "", "/etc/passwd", str(outside / OUTSIDE), str(root / GOOD), LINKED,
            f"{GOOD}/../../outside/{OUTSIDE}", f"{GOOD}\x00", f"{GOOD}\n", "%2e%2e%2f%2e%2e", "x" * 500,
            GOOD.upper(), "２０２６１１２８-１２００００-００００0a", "20261128-120000-ffffff"]


def test_run_ids_are_validated_and_must_stay_in_the_runs_folder(arena):
    root, outside = arena
    assert run_in_root(GOOD, root).folder == root / GOOD
    for ref in bad_refs(root, outside):
        with pytest.raises(UserError) as err:
            run_in_root(ref, root)
        assert "\n" not in str(err.value).replace(repr(ref), "")
    assert [run.id for run in list_runs(root)] == [OUT_ELSEWHERE, LINKED_ARCHIVE, GOOD]  # no symlink out


def test_delete_resume_and_export_refuse_what_is_outside(arena):
    root, outside = arena
    with pytest.raises(UserError, match="refusing to delete"):
        delete_run(Run(root / LINKED), root)
    assert (outside / OUTSIDE / "config.json").is_file()
    jobs = JobRegistry()
    with pytest.raises(UserError, match="is not inside the runs folder"):
        jobs.submit(Run(root / LINKED), root)
    with pytest.raises(UserError, match="writes its checkpoint to .* outside the runs folder"):
        jobs.submit(Run(root / OUT_ELSEWHERE), root)
    assert jobs.state()["jobs"] == {}
    with pytest.raises(UserError, match="outside the runs folder"):
        build_archive(Run(root / OUT_ELSEWHERE), root)
    for run_id, message in ((LINKED, "is not inside the runs folder"), (OUT_ELSEWHERE, "outside the runs folder"),
                            (LINKED_ARCHIVE, "no archive for run")):
        with pytest.raises(UserError, match=message):
            served_archive(root, run_id)
    assert served_archive(root, GOOD).path == root / GOOD / "checkpoint.tar"


def raw_get(url: str, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """A request with the path sent as is (no client-side normalisation of ``..`` or ``%2F``)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.putrequest(method, path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("content-type") or "", body


def test_the_download_route_serves_only_archives_inside_the_runs_folder(server, tmp_path):  # noqa: F811
    url, runs = server
    root, outside = build_arena(tmp_path)
    assert runs == root
    status, kind, body = raw_get(url, f"/grasprune-download/{GOOD}")
    assert status == 200 and kind == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile(f"grasprune-{GOOD}/weights.txt").read() == b"inside"
    quoted = urllib.parse.quote
    # one path segment: reaches the route, which refuses it (or the server refuses it first: 400)
    single_segment = [LINKED, LINKED_ARCHIVE, OUT_ELSEWHERE, "..", "%2e%2e", f"{GOOD}%00", f"{GOOD}%0a",
                      quoted("２０２６"), "x" * 300, GOOD.upper(), "20261128-120000-ffffff"]
    # more segments (%2F is decoded before routing): never the route; Streamlit's own page at most
    other = ["../../etc/passwd", f"{GOOD}/../../outside/{OUTSIDE}", "/etc/passwd", f"{GOOD}/checkpoint.tar",
             f"{LINKED}/checkpoint.tar", f"%2e%2e/%2e%2e/outside/{OUTSIDE}", "..%2F..%2Fetc%2Fpasswd",
             quoted(str(outside / OUTSIDE), safe=""), "%2Fetc%2Fpasswd", f"{GOOD}%2F..%2F..%2Foutside%2F{OUTSIDE}"]
    for path in [f"/grasprune-download/{p}" for p in single_segment + other] + ["/grasprune-download/"]:
        for method in ("GET", "HEAD"):
            status, kind, body = raw_get(url, path, method)
            assert SECRET.encode() not in body and b"root:x:0:" not in body, path
            assert kind != "application/x-tar", (path, status)
            assert status != 200 or kind.startswith("text/html"), (path, status, kind)  # Streamlit's own page
    for path in single_segment:  # refused in one line (by the route, or by the server before it: 400)
        status, kind, body = raw_get(url, f"/grasprune-download/{path}")
        assert status in (400, 404) and body.count(b"\n") == 0 and b"Traceback" not in body, (path, body[:200])
    assert_bound_to_localhost_only(urllib.parse.urlsplit(url).port)


def assert_bound_to_localhost_only(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if not address.startswith("127."):  # (a machine with loopback alone has nothing to check)
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass


def test_streamlit_config_is_local_bounded_and_hides_error_details():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["server"]["headless"] is True
    assert 0 < config["server"]["maxUploadSize"] <= 200  # MB; the studio has no upload widget (below)
    assert config["client"]["showErrorDetails"] == "none"
    assert config["browser"]["gatherUsageStats"] is False


# ---- every page with ?run=: a bad link shows no run; pickers list only real runs inside the folder

def rendered(at) -> str:
    parts = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)




def pages_with_run_ids() -> list[str]:
    """The pages that take a run id (a ``?run=`` link or a run picker)."""
    from studio.common import PAGES

    helpers = ("attached_run_id", "pick_run", "pick_completed_run", "list_runs")
    return [name for name, path in PAGES.items()
            if (REPO / path).is_file() and any(h in (REPO / path).read_text() for h in helpers)]


def test_every_page_refuses_run_links_outside_the_runs_folder(arena, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from grasprune.runs import jobs
    from studio.common import PAGES

    root, outside = arena
    monkeypatch.setenv("GRASPRUNE_RUNS", str(root))
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    pages = pages_with_run_ids()
    assert {"prune", "runs", "inspect", "evaluate", "export"} <= set(pages)
    # every ref is refused by run_in_root (above); here each page's use of it
    visits = [("prune", ref) for ref in (GOOD, "../../etc", f"{GOOD}/../../outside/{OUTSIDE}", f"{GOOD}\x00")]
    visits += [(page, ref) for page in pages for ref in (str(outside / OUTSIDE), LINKED)]
    try:
        for page, ref in visits:
            at.query_params["run"] = ref
            at.switch_page(PAGES[page])
            at.run()
            assert not at.exception, (page, ref, at.exception)
            text = rendered(at)
            assert MARKER not in text and SECRET not in text, (page, ref)
            for box in at.selectbox:
                assert LINKED not in box.options and not any(MARKER in str(o) for o in box.options), page
            assert at.get("file_uploader") == [], "an upload widget needs its own size and type checks"
            if page == "prune":
                warnings = [w.value for w in at.warning]
                if ref == GOOD:
                    assert not warnings and f"Run {GOOD}" in text
                else:
                    assert any(w.endswith("showing no run") for w in warnings), (ref, warnings)
        # a run whose checkpoint is outside: explained, never offered for download
        at.query_params["run"] = OUT_ELSEWHERE
        at.switch_page(PAGES["export"])
        at.run()
        assert at.selectbox(key="export_run").value == OUT_ELSEWHERE
        assert any("outside the runs folder" in w.value for w in at.warning)
        assert "grasprune-download" not in rendered(at)
    finally:
        jobs.registry().shutdown()
        st.cache_resource.clear()


# ---- the Prune form: model and data paths are the user's own files, resolved and checked for kind

def test_form_paths_are_resolved_and_checked_for_kind(tmp_path, tiny_model_dir):
    from grasprune.data import read_source
    from grasprune.method.models import model_source

    link = tmp_path / "my-model"
    link.symlink_to(tiny_model_dir, target_is_directory=True)
    model_source(str(link))  # a symlink to a model folder: the user's own, accepted
    text = tmp_path / "notes.txt"
    text.write_text("some calibration text\n")
    (tmp_path / "notes-link.txt").symlink_to(text)
    assert read_source(str(tmp_path / "notes-link.txt")).origin == str(text)
    # a folder without config.json, reached through "..": the clone's depth must not matter
    (tmp_path / "not-a-model").mkdir()
    dotted = os.path.relpath(tmp_path / "not-a-model", Path.cwd())
    assert dotted.startswith("..")
    refusals = [
        (lambda: model_source("/dev/zero"), "is not a model folder or a .gguf file"),
        (lambda: model_source(str(tmp_path / "model.gguf")), "GGUF file not found"),
        (lambda: model_source(dotted), "has no config.json"),
        (lambda: read_source("/dev/zero"), "is not a file"),
        (lambda: read_source(str(tiny_model_dir / "model.safetensors")), "is not a text file"),
        (lambda: read_source("/etc/passwd"), "is not a text file"),
    ]
    for call, message in refusals:
        with pytest.raises(UserError, match=message):
            call()
