import json

import pytest

from grasprune.data import calibration_blocks, data_root, read_source
from grasprune.errors import UserError


def test_named_sources_read_from_the_data_root():
    assert read_source("wikitext2").origin.endswith("wiki.valid.raw")  # train split absent: validation stands in
    assert read_source("wikitext2", "evaluation").origin.endswith("wiki.test.raw")
    assert read_source("c4").origin.endswith("c4_validation_2k.jsonl")
    assert data_root().name == "data"


def test_line_slices_split_a_file_into_disjoint_halves():
    first = read_source("wikitext-2-tokenized/valid.txt#lines=0:50%")
    second = read_source("wikitext-2-tokenized/valid.txt#lines=50%:100%")
    assert len(first.rows) + len(second.rows) == 3760
    assert first.rows[-1] != second.rows[0] or first.rows[-1] == ""


def test_jsonl_and_parquet_files(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(3)))
    assert read_source(str(jsonl)).rows == ["row 0", "row 1", "row 2"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", "c d"]}), tmp_path / "d.parquet")
    assert read_source(str(tmp_path / "d.parquet")).text() == "a b\n\nc d"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("\n\n  \n", "is empty"),
    ],
)
def test_empty_text_files_are_refused(tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_source(str(path))


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: each line needs a string 'text' field"):
        read_source(str(path))
    path.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        read_source(str(path))


def test_missing_file_and_bad_slice_are_clear_errors():
    with pytest.raises(UserError, match="data file not found"):
        read_source("/nonexistent/calib.txt")
    with pytest.raises(UserError, match="bad data slice"):
        read_source("wikitext2#rows=1:2")
    with pytest.raises(UserError, match="never calibrate on it"):
        read_source("wikitext2-test")


def test_calibration_blocks_are_consecutive_token_blocks(smol_tokenizer, tmp_path):
    blocks = calibration_blocks("wikitext2", smol_tokenizer, num_blocks=3, block_len=32)
    assert blocks.shape == (3, 32)
    path = tmp_path / "short.txt"
    path.write_text("just a few words\n")
    with pytest.raises(UserError, match="fewer than one block"):
        calibration_blocks(str(path), smol_tokenizer, num_blocks=1, block_len=256)
    with pytest.raises(UserError, match="holds only"):
        calibration_blocks("wikitext2", smol_tokenizer, num_blocks=100000, block_len=256)
