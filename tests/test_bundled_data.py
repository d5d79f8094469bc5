"""The data that ships inside the package: byte copies equal to the published files, slices whose sizes and
hashes are the ones their SOURCE.md records."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from grasprune.data import BUNDLED_DATA

# sha256 and size of the full upstream files as published (each folder's SOURCE.md says who publishes them).
PUBLISHED = {
    "wikitext-2-raw/wiki.valid.raw": (
        "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7", 1146846),
    "wikitext-2-raw/wiki.test.raw": (
        "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08", 1290590),
    "wikitext-2-tokenized/valid.txt": (
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1121681),
    "ptb/ptb.valid.txt": ("c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399782),
    "ptb/ptb.test.txt": ("dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449945),
}
TABLE_ROW = re.compile(
    r"^\| `(?P<name>[^`]+)` \| (?P<bytes>\d+) \| (?P<lines>\d+) \| `(?P<sha>[0-9a-f]{64})` \|", re.MULTILINE
)
DATA_FILES = sorted(p for p in BUNDLED_DATA.rglob("*") if p.is_file() and p.suffix != ".md")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("relative", sorted(PUBLISHED))
def test_byte_copies_equal_the_published_files(relative):
    path = BUNDLED_DATA / relative
    assert (sha256(path), path.stat().st_size) == PUBLISHED[relative]


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(BUNDLED_DATA)))
def test_source_md_records_each_files_size_lines_and_sha256(path):
    text = (path.parent / "SOURCE.md").read_text(encoding="utf-8")
    # The first row naming the file: the bundled files' table comes before the verbatim upstream record.
    row = next(m for m in TABLE_ROW.finditer(text) if m["name"] == path.name)
    data = path.read_bytes()
    assert (int(row["bytes"]), int(row["lines"]), row["sha"]) == (len(data), data.count(b"\n"), sha256(path))


def test_the_slices_hold_256_c4_documents_and_200_items_per_task():
    c4 = (BUNDLED_DATA / "c4-sample" / "c4_validation_256.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(c4) == 256 and all(json.loads(line)["text"] for line in c4)
    lines = {p.relative_to(BUNDLED_DATA / "zeroshot").as_posix(): p.read_bytes().count(b"\n")
             for p in DATA_FILES if p.is_relative_to(BUNDLED_DATA / "zeroshot")}
    assert lines == {
        "arc_challenge/arc_challenge.jsonl": 200,
        "arc_easy/arc_easy.jsonl": 200,
        "boolq/boolq.jsonl": 200,
        "hellaswag/hellaswag_val_full.txt": 1200,  # 6 lines per item
        "openbookqa/openbook_qa.jsonl": 200,
        "piqa/valid-labels.lst": 200,
        "piqa/valid.jsonl": 200,
        "winogrande/winogrande.jsonl": 200,
    }


def test_the_bundle_stays_small():
    assert sum(p.stat().st_size for p in BUNDLED_DATA.rglob("*") if p.is_file()) < 6_000_000
