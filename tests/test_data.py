import json

import pytest

from grasprune.data import BUNDLED_DATA, calibration_blocks, data_roots, read_source
from grasprune.errors import UserError

WIKI = BUNDLED_DATA / "wikitext-2-raw"


def test_named_sources_read_the_bundled_data_without_grasprune_data(monkeypatch):
    monkeypatch.delenv("GRASPRUNE_DATA", raising=False)
    assert data_roots() == [BUNDLED_DATA]
    calibration = read_source("wikitext2")
    assert calibration.origin == str(WIKI / "wiki.valid.raw")  # the train split does not ship
    assert len(calibration.rows) == 3760
    assert read_source("wikitext2", "evaluation").origin == str(WIKI / "wiki.test.raw")
    assert read_source("ptb", "evaluation").origin == str(BUNDLED_DATA / "ptb" / "ptb.test.txt")
    c4 = read_source("c4")
    assert c4.origin == str(BUNDLED_DATA / "c4-sample" / "c4_validation_256.jsonl") and len(c4.rows) == 256


def test_grasprune_data_is_searched_first_file_by_file(tmp_path, monkeypatch):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.train.raw").write_text(" = Train = \n \n train text\n")
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(" test text\n")
    (tmp_path / "mine.txt").write_text("my text\n")
    monkeypatch.setenv("GRASPRUNE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "wikitext-2-raw")  # relative files: the working folder comes first
    (tmp_path / "wikitext-2-raw" / "mine.txt").write_text("working folder\n")
    assert data_roots() == [tmp_path.resolve(), BUNDLED_DATA]
    assert read_source("wikitext2").rows == [" = Train = \n", "", " train text\n"]  # train, where present
    assert read_source("wikitext2", "evaluation").rows == [" test text\n"]
    assert read_source("wikitext2-valid").origin == str(WIKI / "wiki.valid.raw")
    assert read_source("ptb").origin == str(BUNDLED_DATA / "ptb" / "ptb.valid.txt")  # absent there: bundled
    assert read_source("mine.txt").rows == ["working folder\n"]
    (tmp_path / "wikitext-2-raw" / "mine.txt").unlink()
    assert read_source("mine.txt").rows == ["my text\n"]
    assert read_source("ptb/ptb.test.txt").origin == str(BUNDLED_DATA / "ptb" / "ptb.test.txt")


def test_a_missing_named_file_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr("grasprune.data.BUNDLED_DATA", tmp_path / "gone")
    monkeypatch.delenv("GRASPRUNE_DATA", raising=False)
    message = (
        r"^data 'ptb' is missing: no ptb/ptb.valid.txt under .*gone "
        r"\(reinstall grasprune, or set GRASPRUNE_DATA to a folder holding ptb/ptb.valid.txt\)$"
    )
    with pytest.raises(UserError, match=message):
        read_source("ptb")


def test_line_slices_split_a_file_into_disjoint_halves():
    first = read_source("wikitext-2-raw/wiki.valid.raw#lines=0:50%")
    second = read_source("wikitext-2-raw/wiki.valid.raw#lines=50%:100%")
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


def test_calibration_blocks_are_consecutive_token_blocks(smol_tokenizer):
    blocks = calibration_blocks("wikitext2", smol_tokenizer, num_blocks=3, block_len=32)
    assert blocks.shape == (3, 32)
    tokens = calibration_blocks("wikitext2", smol_tokenizer, num_blocks=1, block_len=96).flatten()
    assert blocks.flatten().tolist() == tokens.tolist()  # consecutive: three blocks of 32 are one of 96
