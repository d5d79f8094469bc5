"""GGUF export: the file's metadata and weights, the RoPE permutation, refusals and bad inputs (no
llama.cpp needed), then the file in llama.cpp itself (llama-cpp-python): logits against transformers'
for a tiny pruned model, tokenization, the quantized types, and a pruned SmolLM2 that generates and
matches transformers' WikiText-2 perplexity."""

from __future__ import annotations

import json
import math

import gguf
import numpy as np
import pytest
import torch
from test_export import report_for

from grasprune.cli.main import main
from grasprune.errors import UserError
from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import load_pruned, save_pruned
from grasprune.method.units import layout_of, project
from grasprune.serving.gguf_export import export_gguf, llama_cpp_available, permute_for_rope

from conftest import tiny_model

needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(),
    reason="llama-cpp-python is not installed (it is in requirements-dev.txt: pip install llama-cpp-python==0.3.36)",
)
IDS = torch.randint(0, 4000, (40,), generator=torch.Generator().manual_seed(3)).tolist()
# f32 weights with an f32 KV cache: llama.cpp and torch differ only in summation order (measured: 2.1e-7
# of the logits' range on the tiny model).
F32_TOLERANCE = 1e-5
# f16 weights (11-bit mantissa) and llama.cpp's default f16 KV cache (measured: 3.7e-4 of the range).
F16_TOLERANCE = 2e-3


def pruned_checkpoint(folder, tokenizer, family="llama", keep=0.6, seed=1, **config):
    """A tiny pruned fp32 checkpoint (random mask and scales) with ``tokenizer``; ``config`` overrides the
    model's config (e.g. RoPE scaling)."""
    model = tiny_model(family, vocab_size=len(tokenizer))
    for key, value in config.items():
        setattr(model.config, key, value)
    if config:  # RoPE settings take effect in a model built from the changed config
        state = model.state_dict()
        model = type(model)(model.config).eval()
        model.load_state_dict(state)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    generator = torch.Generator().manual_seed(seed)
    mask = project(torch.rand(layout.num_units, generator=generator), layout, layout.budget(keep))
    gamma = 1 + 0.3 * torch.tanh(torch.randn(layout.num_units, generator=generator))
    report = {**report_for(layout, mask, model), "base_model": "smollm2-135m", "keep_ratio": keep}
    return save_pruned(folder, adapter, layout, mask, gamma, tokenizer, report)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smol_tokenizer):
    return pruned_checkpoint(tmp_path_factory.mktemp("gguf") / "checkpoint", smol_tokenizer)


@pytest.fixture(scope="module")
def f32_export(checkpoint, tmp_path_factory):
    return export_gguf(checkpoint, tmp_path_factory.mktemp("gguf-f32") / "out", "f32")


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_holds_per_layer_widths_and_the_checkpoint_weights(checkpoint, f32_export):
    config = json.loads((checkpoint / "config.json").read_text())
    meta = fields(f32_export.gguf_file)
    group = config["num_attention_heads"] // config["num_key_value_heads"]
    assert meta["general.architecture"] == "deci"
    assert meta["deci.feed_forward_length"] == config["layer_intermediate_sizes"]
    assert meta["deci.attention.head_count_kv"] == config["layer_num_key_value_heads"]
    assert meta["deci.attention.head_count"] == [kv * group for kv in config["layer_num_key_value_heads"]]
    assert meta["deci.attention.key_length"] == meta["deci.rope.dimension_count"] == config["head_dim"]
    assert len(set(meta["deci.feed_forward_length"])) > 1  # the layers really differ
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == config["vocab_size"]
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "model.safetensors"))
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(f32_export.gguf_file).tensors}
    assert not config["tie_word_embeddings"]  # an untied output matrix: written (SmolLM2's tied one is not)
    assert np.array_equal(tensors["output.weight"], weights["lm_head.weight"].numpy())
    assert len(tensors) == len(weights)
    heads = config["layer_num_key_value_heads"][1]
    expected_k = permute_for_rope(weights["model.layers.1.self_attn.k_proj.weight"], heads).numpy()
    assert np.array_equal(tensors["blk.1.attn_k.weight"], expected_k)
    assert np.array_equal(tensors["blk.2.ffn_down.weight"], weights["model.layers.2.mlp.down_proj.weight"].numpy())
    assert np.array_equal(tensors["token_embd.weight"], weights["model.embed_tokens.weight"].numpy())
    assert (f32_export.folder / "Modelfile").read_text().splitlines()[5:] == [
        f"FROM ./{f32_export.gguf_file.name}", 'PARAMETER stop "<|im_end|>"']


def rope_halves(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Hugging Face's RoPE: dimension j is rotated with j + d/2."""
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    first, second = x.chunk(2, -1)
    return x * cos + torch.cat([-second, first], -1) * sin


def rope_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """llama.cpp's normal RoPE: dimension 2j is rotated with 2j + 1."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)


def test_the_permutation_turns_half_split_rope_into_pair_rope():
    heads, head_dim, hidden, tokens = 3, 8, 12, 5
    generator = torch.Generator().manual_seed(0)
    weight, x = torch.randn(heads * head_dim, hidden, generator=generator), torch.randn(tokens, hidden, generator=generator)
    angles = torch.arange(tokens)[:, None, None] * 10000.0 ** (-torch.arange(head_dim // 2) / (head_dim // 2))
    hf = rope_halves((x @ weight.T).view(tokens, heads, head_dim), angles)
    ours = rope_pairs((x @ permute_for_rope(weight, heads).T).view(tokens, heads, head_dim), angles)
    # the same vectors, each head's dimensions reordered the same way: attention scores are unchanged
    assert torch.allclose(ours, torch.cat([hf[..., : head_dim // 2, None], hf[..., head_dim // 2 :, None]], -1)
                          .flatten(-2), atol=1e-5)


def test_q8_0_stores_rows_that_are_not_a_multiple_of_32_in_f16(checkpoint, tmp_path):
    from safetensors.torch import load_file

    result = export_gguf(checkpoint, tmp_path / "q8", "q8_0")
    rows = [w.shape[1] for w in load_file(str(checkpoint / "model.safetensors")).values() if w.dim() == 2]
    odd = sum(length % 32 != 0 for length in rows)
    assert len(rows) == 23 and odd > 0 and result.tensor_types == {"Q8_0": 23 - odd, "F16": odd, "F32": 7}
    note = f"{odd} of 23 weight matrices have rows that are not a multiple of 32 (q8_0's block): stored in f16"
    assert result.notes == [note + ", as llama.cpp's quantizer does"]
    f16 = export_gguf(checkpoint, tmp_path / "f16", "f16")
    assert result.size < 0.6 * f16.size and f16.tensor_types == {"F16": 23, "F32": 7} and not f16.notes


@pytest.mark.parametrize("family, reason", [
    ("qwen2", "Qwen2 has q/k/v biases"), ("qwen3", "Qwen3 normalises each query and key head"),
    ("llama-bias", "the checkpoint has biases")])
def test_qwen_and_biased_checkpoints_are_refused_in_one_line(family, reason, tmp_path, smol_tokenizer):
    source = pruned_checkpoint(tmp_path / "ckpt", smol_tokenizer, family)
    with pytest.raises(UserError, match=reason) as caught:
        export_gguf(source, tmp_path / "out")
    assert "\n" not in str(caught.value) and "safetensors" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_rope_scaling_is_written_and_unsupported_kinds_are_refused(tmp_path, smol_tokenizer):
    linear = pruned_checkpoint(tmp_path / "linear", smol_tokenizer,
                               rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0})
    meta = fields(export_gguf(linear, tmp_path / "linear-out", "f32").gguf_file)
    assert (meta["deci.rope.scaling.type"], meta["deci.rope.scaling.factor"], meta["deci.rope.freq_base"]) == (
        "linear", 2.0, 5000.0)
    yarn = pruned_checkpoint(tmp_path / "yarn", smol_tokenizer, rope_parameters={
        "rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0, "original_max_position_embeddings": 256})
    with pytest.raises(UserError, match="RoPE scaling 'yarn' is not supported"):
        export_gguf(yarn, tmp_path / "yarn-out")


def test_cli_gguf_export_and_its_bad_inputs(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["export", str(checkpoint), "--format", "gguf", "--type", "f16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/smollm2-135m-pruned-keep0.6-f16.gguf (f16: " in printed and "ollama create" in printed
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "smollm2-135m-pruned-keep0.6-f16.gguf"]
    bad = [
        (["--format", "gguf", "--out", str(out)], "exists: pass --overwrite"),
        (["--format", "gguf", "--dtype", "bf16", "--out", str(tmp_path / "x")], "--dtype is for --format safetensors"),
        (["--type", "q8_0", "--out", str(tmp_path / "x")], "--type is for --format gguf"),
        (["--format", "gguf", "--out", str(checkpoint / "inside")], "overlaps the checkpoint"),
    ]
    for args, message in bad:
        assert main(["export", str(checkpoint), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "gguf", "--out", str(tmp_path / "x")]) == 2
    assert "is not a GRASPrune checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(checkpoint), "--format", "gguf", "--type", "q3_k", "--out", str(tmp_path / "x")])
    monkeypatch.setattr("grasprune.serving.gguf_export.llama_cpp_available", lambda: False)
    assert main(["export", str(checkpoint), "--format", "gguf", "--type", "q4_k_m", "--out", str(tmp_path / "x")]) == 2
    assert "pip install llama-cpp-python==0.3.36" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- in llama.cpp ----

def llama_cpp_logits(path, ids: list[int], f32_cache: bool = True) -> np.ndarray:
    from llama_cpp import GGML_TYPE_F32, Llama

    cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    llm = Llama(str(path), n_ctx=max(64, len(ids)), n_batch=len(ids), logits_all=True, n_threads=2,
                verbose=False, **cache)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def transformers_logits(folder, ids: list[int]) -> np.ndarray:
    model, _ = load_pruned(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / (expected.max() - expected.min()))


@needs_llama_cpp
def test_llama_cpp_logits_match_transformers_in_f32_and_f16(checkpoint, f32_export, tmp_path):
    expected = transformers_logits(checkpoint, IDS)
    assert relative_error(llama_cpp_logits(f32_export.gguf_file, IDS), expected) < F32_TOLERANCE
    f16 = export_gguf(checkpoint, tmp_path / "f16", "f16")
    assert relative_error(llama_cpp_logits(f16.gguf_file, IDS, f32_cache=False), expected) < F16_TOLERANCE


@needs_llama_cpp
def test_a_pruned_mistral_runs_in_llama_cpp_as_in_transformers(tmp_path, smol_tokenizer):
    source = pruned_checkpoint(tmp_path / "ckpt", smol_tokenizer, "mistral", keep=0.5, seed=4)
    got = llama_cpp_logits(export_gguf(source, tmp_path / "out", "f32").gguf_file, IDS)
    assert relative_error(got, transformers_logits(source, IDS)) < F32_TOLERANCE


@needs_llama_cpp
@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 10000.0}], ids=["linear", "llama3"])
def test_llama_cpp_applies_the_rope_scaling_as_transformers_does(rope, tmp_path, smol_tokenizer):
    source = pruned_checkpoint(tmp_path / "ckpt", smol_tokenizer, rope_parameters=rope)
    got = llama_cpp_logits(export_gguf(source, tmp_path / "out", "f32").gguf_file, IDS)
    assert relative_error(got, transformers_logits(source, IDS)) < F32_TOLERANCE


@needs_llama_cpp
def test_llama_cpp_tokenizes_as_transformers(f32_export, smol_tokenizer):
    from llama_cpp import Llama

    llm = Llama(str(f32_export.gguf_file), vocab_only=True, verbose=False)
    for text in ["Hello world!", "The year 2024 had 366 days;  spaces\tand\nnewlines.", "naïve café — 東京 🙂",
                 "<|im_start|>user\nhi<|im_end|>"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == smol_tokenizer.encode(text)


def sentencepiece_style_tokenizer(vocab_size: int = 400):
    """A Llama-2-style tokenizer: BPE with byte fallback over "▁"-joined text, its merges made from the
    vocabulary as transformers' SentencePiece converter makes them, trained on a slice of WikiText-2."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from grasprune.data import read_source

    rows = [row for row in read_source("wikitext2#lines=0:3%", "calibration").rows if row.strip()]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = Tokenizer(models.BPE())
    trainer.normalizer = normalizer
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer.train_from_iterator(rows, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = json.loads(trainer.to_str())["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token in sorted(learned, key=learned.get):
        vocab.setdefault(token, len(vocab))
    merges = sorted(((a, b) for t in vocab if vocab[t] > 258 for a, b in ((t[:i], t[i:]) for i in range(1, len(t)))
                     if a in vocab and b in vocab), key=lambda ab: (vocab[ab[0] + ab[1]], vocab[ab[0]], vocab[ab[1]]))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1",
                                                             special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@needs_llama_cpp
def test_a_sentencepiece_style_tokenizer_becomes_a_llama_vocab_that_tokenizes_alike(tmp_path):
    from llama_cpp import Llama

    from grasprune.data import read_source

    tokenizer = sentencepiece_style_tokenizer()
    source = pruned_checkpoint(tmp_path / "ckpt", tokenizer)
    result = export_gguf(source, tmp_path / "out", "f32")
    meta = fields(result.gguf_file)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.add_space_prefix"]) == ("llama", True)
    assert (meta["tokenizer.ggml.add_bos_token"], meta["tokenizer.ggml.bos_token_id"]) == (True, 1)
    types = meta["tokenizer.ggml.token_type"]
    assert [types.count(t) for t in (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.BYTE)] == [1, 2, 256]
    llm = Llama(str(result.gguf_file), vocab_only=True, verbose=False)
    texts = ["Hello world!", "The year 2024 had 366 days;  spaces\tand\nnewlines.", "naïve café — 東京 🙂",
             " leading space", *[row for row in read_source("wikitext2#lines=50%:51%", "calibration").rows
                                 if row.strip()][:40]]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text), text
    llm.close()


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type, agreement", [("q8_0", 0.999), ("q4_k_m", 0.97)])  # measured 0.9997, 0.989
def test_quantized_gguf_loads_and_predicts_like_the_checkpoint(gguf_type, agreement, checkpoint, tmp_path):
    result = export_gguf(checkpoint, tmp_path / gguf_type, gguf_type)
    logits = llama_cpp_logits(result.gguf_file, IDS, f32_cache=False)
    expected = transformers_logits(checkpoint, IDS)
    cosine = (logits * expected).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert cosine.min() > agreement
    if gguf_type == "q4_k_m":
        assert result.tensor_types.get("Q4_K", 0) + result.tensor_types.get("Q5_0", 0) > 0
        assert result.notes and "not a multiple of 256" in result.notes[0]


# ---- the embedded SmolLM2, pruned ----

@pytest.fixture(scope="module")
def smollm2_pruned(tmp_path_factory):
    """SmolLM2-135M sliced at keep 0.7 by the one-shot wanda-sp criterion (8 calibration blocks of 128
    tokens, no training: seconds), saved as a checkpoint."""
    from grasprune.config import DEFAULT_CALIB
    from grasprune.data import calibration_blocks
    from grasprune.method.baselines import unit_importance
    from grasprune.method.models import load_model

    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    blocks = calibration_blocks(DEFAULT_CALIB, tokenizer, 8, 128)
    mask = project(unit_importance("wanda-sp", model, adapter, layout, blocks), layout, layout.budget(0.7))
    report = {**report_for(layout, mask, model), "base_model": "smollm2-135m", "keep_ratio": 0.7}
    folder = tmp_path_factory.mktemp("smollm2") / "checkpoint"
    return save_pruned(folder, adapter, layout, mask, torch.ones(layout.num_units), tokenizer, report)


SMOL_SEQLEN, SMOL_WINDOWS = 512, 8
GREEDY_TOKENS, GREEDY_AGREE = 12, 4  # f16 against fp32: later tokens may part at a near tie


@pytest.mark.slow
@needs_llama_cpp
def test_pruned_smollm2_generates_in_llama_cpp_and_matches_transformers_perplexity(smollm2_pruned, tmp_path):
    from llama_cpp import Llama

    from grasprune.evaluation.perplexity import evaluation_tokens, perplexity

    result = export_gguf(smollm2_pruned, tmp_path / "gguf", "f16")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(result.gguf_file).tensors}  # tied: reused
    model, tokenizer = load_pruned(smollm2_pruned, dtype=torch.float32)
    llm = Llama(str(result.gguf_file), n_ctx=SMOL_SEQLEN, n_batch=SMOL_SEQLEN, logits_all=True, n_threads=2,
                verbose=False, seed=0)
    prompt = tokenizer.encode("The capital of France is")
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, do_sample=False)
    expected = expected[0, len(prompt):].tolist()
    generated = []
    for token in llm.generate(prompt, temp=0.0):
        generated.append(token)
        if len(generated) == GREEDY_TOKENS:
            break
    assert generated[:GREEDY_AGREE] == expected[:GREEDY_AGREE] and tokenizer.decode(generated).strip()
    tokens = evaluation_tokens("wikitext2", tokenizer)
    reference = perplexity(model, tokenizer, seqlen=SMOL_SEQLEN, max_windows=SMOL_WINDOWS, tokens=tokens).ppl
    nll = 0.0
    for w in range(SMOL_WINDOWS):
        ids = tokens[w * SMOL_SEQLEN: (w + 1) * SMOL_SEQLEN].tolist()
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(np.array(llm.scores[: SMOL_SEQLEN - 1]))
        nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    got = math.exp(nll / (SMOL_WINDOWS * (SMOL_SEQLEN - 1)))
    print(f"\npruned SmolLM2 (keep 0.7, wanda-sp one-shot) WikiText-2 ppl, {SMOL_WINDOWS} windows of {SMOL_SEQLEN}: "
          f"transformers fp32 {reference:.3f}, llama.cpp f16 {got:.3f} ({100 * (got / reference - 1):+.3f}%); "
          f"greedy: llama.cpp {tokenizer.decode(generated)!r}, transformers {tokenizer.decode(expected)!r}")
    assert abs(got / reference - 1) < 0.01


def test_the_llamacpp_bench_counts_each_weight_byte_once_per_decoded_token(f32_export):
    from bench.llamacpp import KV_BYTES, gguf_cost

    reader = gguf.GGUFReader(f32_export.gguf_file)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    meta = {name: reader.fields[name].contents() for name in ("deci.attention.head_count_kv", "deci.attention.head_count")}
    cost = gguf_cost(f32_export.gguf_file, context=100)
    # untied: the output matrix is read, the embedding only by one row (not counted)
    assert cost["weight_bytes"] == sum(sizes.values()) - sizes["token_embd.weight"]
    assert cost["kv_bytes"] == sum(2 * kv * 16 * KV_BYTES * 100 for kv in meta["deci.attention.head_count_kv"])
    matrices = sum(int(t.n_elements) for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2)
    attention = sum(2 * q * 16 * 50 for q in meta["deci.attention.head_count"])
    assert cost["prefill_macs"] == matrices + attention
