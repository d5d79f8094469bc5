"""The Prune page's parameter counts for a GGUF model come from its converted copy when the cache holds
one (the GGUF header takes seconds to read) and from the GGUF itself otherwise: the same counts."""

from grasprune.method.budget import budget_preview as preview
from grasprune.method.models import (
    converted_gguf_folder,
    embedded_gguf_path,
    is_converted,
    load_model,
    model_config,
)

SMOLLM2_TOTAL, SMOLLM2_PRUNABLE = 134_515_008, 106_168_320


def test_the_embedded_models_counts_are_the_same_with_and_without_its_converted_copy(tmp_path, monkeypatch):
    load_model("smollm2-135m")  # converts it into the user cache, as a first run does
    assert is_converted(converted_gguf_folder(embedded_gguf_path()))
    cached = preview("smollm2-135m")
    assert model_config("smollm2-135m").architectures == ["LlamaForCausalLM"]  # read from the converted config.json

    monkeypatch.setenv("GRASPRUNE_CACHE", str(tmp_path))  # an empty cache: the GGUF is read
    assert not is_converted(converted_gguf_folder(embedded_gguf_path()))
    assert model_config("smollm2-135m").architectures is None
    from_gguf = preview("smollm2-135m")
    assert (cached.total_params, cached.prunable_params) == (from_gguf.total_params, from_gguf.prunable_params)
    assert (cached.total_params, cached.prunable_params) == (SMOLLM2_TOTAL, SMOLLM2_PRUNABLE)
    assert cached == from_gguf
