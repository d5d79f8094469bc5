"""The tokenized-text cache: the same ids as tokenizing, read back instead of recomputed, and never wrong
when the tokenizer, the text or the special-token setting changes."""

import copy
import os

import pytest
import torch

from grasprune import cache
from grasprune.cli.main import main as cli_main
from grasprune.data import read_source, tokenize_source
from grasprune.errors import UserError


class CountingTokenizer:
    """A tokenizer that counts how often it is asked to encode long texts (the probe is short)."""

    def __init__(self, tokenizer):
        self.inner, self.long_calls = tokenizer, 0
        self.backend_tokenizer = tokenizer.backend_tokenizer

    def __call__(self, text, **kwargs):
        self.long_calls += len(text) >= cache.MIN_CACHED_CHARS
        return self.inner(text, **kwargs)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def wikitext():
    return read_source("wikitext2", "evaluation")


def uncached(source, tokenizer, add_special_tokens: bool) -> torch.Tensor:
    ids = tokenizer(source.text(), add_special_tokens=add_special_tokens, return_attention_mask=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def test_a_second_read_returns_the_same_ids_from_the_cache_without_tokenizing(cache_root, smol_tokenizer, wikitext):
    counting = CountingTokenizer(smol_tokenizer)
    first = tokenize_source(wikitext, counting, add_special_tokens=True)
    second = tokenize_source(wikitext, counting, add_special_tokens=True)
    assert counting.long_calls == 1
    assert first.dtype == second.dtype == torch.long
    assert torch.equal(first, uncached(wikitext, smol_tokenizer, True)) and torch.equal(first, second)
    assert len(list((cache_root / "tokens").glob("*.safetensors"))) == 1


def test_special_tokens_text_and_tokenizer_each_key_their_own_entry(cache_root, smol_tokenizer, wikitext):
    with_bos = tokenize_source(wikitext, smol_tokenizer, add_special_tokens=True)
    without = tokenize_source(wikitext, smol_tokenizer, add_special_tokens=False)
    assert torch.equal(without, uncached(wikitext, smol_tokenizer, False))
    half = read_source("wikitext2#lines=0:50%", "evaluation")
    assert torch.equal(tokenize_source(half, smol_tokenizer, True), uncached(half, smol_tokenizer, True))

    changed = copy.deepcopy(smol_tokenizer)  # one more token in the vocabulary: other ids for that text
    changed.add_tokens(["the"])
    assert not torch.equal(tokenize_source(wikitext, changed, True), with_bos)
    assert torch.equal(tokenize_source(wikitext, changed, True), uncached(wikitext, changed, True))
    assert len(list((cache_root / "tokens").glob("*.safetensors"))) == 4


def test_a_torn_entry_is_tokenized_again_and_rewritten(cache_root, smol_tokenizer, wikitext):
    expected = tokenize_source(wikitext, smol_tokenizer, add_special_tokens=True)
    (entry,) = (cache_root / "tokens").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    assert torch.equal(tokenize_source(wikitext, smol_tokenizer, add_special_tokens=True), expected)
    assert entry.stat().st_size > 100


def test_an_unwritable_cache_still_gives_the_ids(tmp_path, monkeypatch, smol_tokenizer, wikitext):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GRASPRUNE_CACHE", str(blocker))  # its tokens/ folder cannot be made
    assert torch.equal(tokenize_source(wikitext, smol_tokenizer, True), uncached(wikitext, smol_tokenizer, True))


def test_short_texts_are_not_cached(cache_root, smol_tokenizer):
    short = read_source("wikitext2#lines=0:20", "evaluation")
    assert len(short.text()) < cache.MIN_CACHED_CHARS
    assert torch.equal(tokenize_source(short, smol_tokenizer, True), uncached(short, smol_tokenizer, True))
    assert not (cache_root / "tokens").exists()


def test_the_cache_stays_under_its_size_dropping_the_least_recently_read(cache_root, monkeypatch, smol_tokenizer):
    texts = [read_source(f"wikitext2#lines={start}:{start + 600}", "evaluation") for start in (0, 600, 1200)]
    first = tokenize_source(texts[0], smol_tokenizer, True)
    (first_file,) = (cache_root / "tokens").glob("*.safetensors")
    one_file_mb = first_file.stat().st_size / 2**20
    monkeypatch.setenv("GRASPRUNE_TOKEN_CACHE_MB", str(2.5 * one_file_mb))  # room for two of these
    tokenize_source(texts[1], smol_tokenizer, True)
    os.utime(first_file, (1, 1))  # read long ago...
    assert torch.equal(tokenize_source(texts[0], smol_tokenizer, True), first)  # ...and read again now
    tokenize_source(texts[2], smol_tokenizer, True)  # a third file: the least recently read (texts[1]) goes
    kept = set((cache_root / "tokens").glob("*.safetensors"))
    assert len(kept) == 2 and first_file in kept
    writes = []
    monkeypatch.setattr(cache, "_write_tokens", lambda path, tokens: writes.append(path))
    tokenize_source(texts[0], smol_tokenizer, True)
    tokenize_source(texts[2], smol_tokenizer, True)
    assert writes == []  # both kept texts come from the cache


def test_a_size_that_is_not_a_number_is_one_clear_error(cache_root, monkeypatch, smol_tokenizer, wikitext):
    monkeypatch.setenv("GRASPRUNE_TOKEN_CACHE_MB", "lots")
    with pytest.raises(UserError, match="GRASPRUNE_TOKEN_CACHE_MB='lots' is not a number"):
        tokenize_source(wikitext, smol_tokenizer, True)


def test_grasprune_cache_shows_each_part_and_clears_one(cache_root, smol_tokenizer, wikitext, capsys):
    tokenize_source(wikitext, smol_tokenizer, True)
    (cache_root / "dense-ppl").mkdir()
    (cache_root / "dense-ppl" / "a.json").write_text("{}")
    assert cli_main(["cache"]) == 0
    shown = capsys.readouterr().out
    assert str(cache_root) in shown and "tokens" in shown and "    1 files" in shown
    assert cli_main(["cache", "--clear", "tokens"]) == 0
    assert "cleared tokens" in capsys.readouterr().out
    assert not (cache_root / "tokens").exists() and (cache_root / "dense-ppl" / "a.json").is_file()
    assert cli_main(["cache", "--clear", "all"]) == 0
    assert not (cache_root / "dense-ppl").exists()
    assert cli_main(["cache", "--clear", "weights"]) == 2
    assert "unknown cache part weights" in capsys.readouterr().err
