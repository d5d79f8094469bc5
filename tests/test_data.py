import json

from grasprune.data import calibration_blocks, data_root, read_source


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


def test_calibration_blocks_are_consecutive_token_blocks(smol_tokenizer):
    blocks = calibration_blocks("wikitext2", smol_tokenizer, num_blocks=3, block_len=32)
    assert blocks.shape == (3, 32)
    tokens = calibration_blocks("wikitext2", smol_tokenizer, num_blocks=1, block_len=96).flatten()
    assert blocks.flatten().tolist() == tokens.tolist()  # consecutive: three blocks of 32 are one of 96
