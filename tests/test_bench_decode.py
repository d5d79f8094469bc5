"""bench.timing's decode settings measure the same computation: eager and compiled, batch 1 and batched,
on a pruned model whose layers all have their own widths."""

import sys

import pytest
import torch

from conftest import REPO, TINY, tiny_model

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.speed_report import markdown
from bench.timing import GreedyDecoder, decode_rows, interleaved_decode, params_read_per_token, weight_matmuls
from grasprune.method.hf_modeling.configuration_grasprune import GraspruneLlamaConfig
from grasprune.method.hf_modeling.modeling_grasprune import GraspruneLlamaForCausalLM


@pytest.fixture(scope="module")
def models():
    dense = tiny_model("llama")
    torch.manual_seed(1)
    config = GraspruneLlamaConfig(vocab_size=256, **TINY, layer_intermediate_sizes=[37, 96, 5],
                                  layer_num_key_value_heads=[1, 4, 2])
    return {"dense": dense, "pruned": GraspruneLlamaForCausalLM(config).eval()}


def test_batched_decoding_gives_each_row_its_own_greedy_tokens(models):
    prompts = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    for model in models.values():
        alone = [GreedyDecoder(model, 1, 12, 6)(row[None])["tokens"] for row in prompts]
        together = GreedyDecoder(model, 2, 12, 6)(prompts)
        assert torch.equal(together["tokens"], torch.cat(alone))
    kv = GreedyDecoder(models["pruned"], 2, 12, 6)(prompts)["kv_cache_bytes_per_token_measured"]
    assert kv == sum((1, 4, 2)) * TINY["head_dim"] * 2 * 4


def test_compiled_static_cache_decoding_matches_eager(models):
    """The pruned model only (its per-layer widths are the case to check; compiling takes a while)."""
    prompts = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    pruned = {"pruned": models["pruned"]}
    eager = decode_rows(interleaved_decode(models, prompts, 5, 1, False, 1), 1, 10, 5, "dense")
    compiled = decode_rows(interleaved_decode(pruned, prompts, 5, 1, True, 1), 1, 10, 5, "pruned")
    assert compiled["pruned"]["first_tokens"] == eager["pruned"]["first_tokens"]
    assert compiled["pruned"]["kv_cache_bytes_per_token_measured"] == eager["pruned"]["kv_cache_bytes_per_token_measured"]
    assert len(compiled["pruned"]["decode_s"]) == 2 and compiled["pruned"]["decode_tokens_per_s"] > 0
    assert eager["dense"]["decode_speedup"] == 1.0 and len(eager["pruned"]["decode_s"]) == 2


def test_weight_matmuls_read_every_parameter_a_decode_step_reads(models):
    for model in models.values():
        linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
        assert linears + norms == params_read_per_token(model)
        weight_matmuls(model)()


def test_the_report_says_where_keep_half_meets_ninety_percent():
    def row(model, keep, share):
        return {"model": model, "method": "dense" if keep == 1 else "grasprune", "keep_ratio": keep,
                "decode_tokens_per_s": 10.0, "decode_speedup": share * 2, "ideal_speedup": 2.0 if keep < 1 else 1.0,
                "decode_share_of_ideal": share, "warmup_s": 0.1}

    settings = [{"threads": t, "omp_wait_policy": "default", "compile": c, "batch": 1, "runs_per_model": 4,
                 "load_average_1min": [1.0, 1.0], "setting": {"model": "d", "dtype": "fp32", "threads": t},
                 "rows": [row("d", 1.0, 1.0), row("p", 0.5, share)]}
                for t, c, share in ((2, False, 0.8), (1, True, 0.93))]
    text = markdown({"decode_settings": settings, "inference": [
        {**row("d", 1.0, 1.0), "params": 2e6, "prefill_tokens_per_s": 1, "peak_rss_bytes": 1, "peak_rss_delta_bytes": 1,
         "kv_cache_bytes_per_token": 8, "kv_cache_bytes_per_token_measured": 8, "prompts": 1, "prompt_len": 4,
         "new_tokens": 2, "setting": settings[0]["setting"]},
        {**row("p", 0.5, 0.8), "params": 1e6, "prefill_tokens_per_s": 1, "peak_rss_bytes": 1, "peak_rss_delta_bytes": 1,
         "kv_cache_bytes_per_token": 4, "kv_cache_bytes_per_token_measured": 4, "prompts": 1, "prompt_len": 4,
         "new_tokens": 2, "setting": settings[0]["setting"]}]})
    assert "met in 1 thread (default OMP wait) compiled batch 1 93%" in text
    assert "not met in 2 threads (default OMP wait) eager batch 1 80%" in text
    assert "| 2 | default | eager, batch 1 | 1.0→1.0 | grasprune | 0.50 |" in text
