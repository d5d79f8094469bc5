"""The vLLM plugin (integrations/vllm_grasprune) and the GPU script's checks, without vLLM.

vLLM is GPU-only and is not installed here: these tests cover the plugin's packaging and registration,
the per-layer sizes its model classes use (against a real pruned checkpoint's tensors), its classes'
glue against stand-ins that have vLLM's constructor signatures, the ``per_layer_config`` mirror in
``config.json``, and the parts of ``bench/gpu_vllm.py`` that do not need vLLM. Serving itself is checked
by ``bash bench/gpu_vllm.sh`` on a GPU machine with vLLM.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grasprune.method.adapters import ModelAdapter
from grasprune.method.export import FAMILY_CLASS, save_pruned
from grasprune.method.hf_modeling import configuration_grasprune
from grasprune.method.units import layout_of, project

from conftest import REPO, tiny_model

PLUGIN = REPO / "integrations" / "vllm_grasprune"


@pytest.fixture
def plugin(monkeypatch):
    """The plugin package, importable from the source tree."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    import vllm_grasprune

    return vllm_grasprune


def pruned_checkpoint(family: str, folder: Path) -> Path:
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    mask = project(torch.rand(layout.num_units, generator=torch.Generator().manual_seed(3)), layout,
                   layout.budget(0.5))
    return save_pruned(folder, adapter, layout, mask, torch.ones(layout.num_units), None, {"base_model": "tiny"})


def load_config(folder: Path):
    family = json.loads((folder / "config.json").read_text())["model_type"].removeprefix("grasprune_")
    return getattr(configuration_grasprune, f"Grasprune{FAMILY_CLASS[family]}Config").from_pretrained(folder)


def test_plugin_declares_its_vllm_entry_point_and_lazy_classes(plugin):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project_file = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
    assert project_file["project"]["entry-points"]["vllm.general_plugins"] == {"grasprune": "vllm_grasprune:register"}
    assert callable(plugin.register)
    # every architecture the exporter writes is registered, by a name that models.py defines
    assert set(plugin.ARCHITECTURES) == {f"Grasprune{stem}ForCausalLM" for stem in FAMILY_CLASS.values()}
    tree = ast.parse((PLUGIN / "vllm_grasprune" / "models.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    for name, target in plugin.ARCHITECTURES.items():
        module, _, cls = target.partition(":")
        assert module == "vllm_grasprune.models" and cls == name and cls in defined


def test_register_without_vllm_says_what_to_install(plugin, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"needs vLLM: `pip install vllm`") as error:
        plugin.register()
    assert "\n" not in str(error.value)


class FakeRegistry:
    """vLLM's ``ModelRegistry`` surface that plugins use."""

    def __init__(self, models: dict):
        self.models = models

    def get_supported_archs(self):
        return self.models.keys()

    def register_model(self, name, target):
        assert name not in self.models, f"{name} registered twice"
        self.models[name] = target


def test_register_names_each_architecture_once_by_module_and_class(plugin, monkeypatch):
    fake = types.ModuleType("vllm")
    registry = fake.ModelRegistry = FakeRegistry({"LlamaForCausalLM": object,
                                                  "GraspruneMistralForCausalLM": "someone.else:Mine"})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    plugin.register()
    plugin.register()  # vLLM calls plugins in every process it starts; twice must not re-register
    assert registry.models["GraspruneLlamaForCausalLM"] == "vllm_grasprune.models:GraspruneLlamaForCausalLM"
    assert registry.models["GraspruneQwen3ForCausalLM"] == "vllm_grasprune.models:GraspruneQwen3ForCausalLM"
    assert registry.models["GraspruneMistralForCausalLM"] == "someone.else:Mine"  # left as it was


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3"])
def test_layer_sizes_give_the_checkpoint_tensor_shapes(plugin, family, tmp_path):
    from vllm_grasprune.sizes import layer_sizes

    folder = pruned_checkpoint(family, tmp_path / "ckpt")
    config = load_config(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    sizes = layer_sizes(config)
    hidden = config.hidden_size
    assert len(sizes) == config.num_hidden_layers
    for i, s in enumerate(sizes):
        p = f"model.layers.{i}."
        assert tensors[p + "self_attn.q_proj.weight"].shape == (s.num_heads * s.head_dim, hidden)
        assert tensors[p + "self_attn.k_proj.weight"].shape == (s.num_kv_heads * s.head_dim, hidden)
        assert tensors[p + "self_attn.v_proj.weight"].shape == (s.num_kv_heads * s.head_dim, hidden)
        assert tensors[p + "self_attn.o_proj.weight"].shape == (hidden, s.num_heads * s.head_dim)
        assert tensors[p + "mlp.gate_proj.weight"].shape == (s.intermediate_size, hidden)
        assert tensors[p + "mlp.up_proj.weight"].shape == (s.intermediate_size, hidden)
        assert tensors[p + "mlp.down_proj.weight"].shape == (hidden, s.intermediate_size)
        assert s.num_heads // s.num_kv_heads == config.num_attention_heads // config.num_key_value_heads
    assert sum(s.intermediate_size for s in sizes) < config.intermediate_size * len(sizes)  # really pruned


def test_layer_config_describes_one_layer_and_leaves_the_model_config_alone(plugin, tmp_path):
    from vllm_grasprune.sizes import layer_config, layer_index

    config = load_config(pruned_checkpoint("llama", tmp_path / "ckpt"))
    layer = layer_config(config, 1)
    kv = config.layer_num_key_value_heads[1]
    assert (layer.num_key_value_heads, layer.num_attention_heads) == (kv, kv * 2)
    assert (layer.intermediate_size, layer.head_dim) == (config.layer_intermediate_sizes[1], 16)
    assert (config.num_key_value_heads, config.num_attention_heads, config.intermediate_size) == (4, 8, 96)
    assert layer_index("model.layers.7") == 7
    with pytest.raises(ValueError, match="no single layer number"):
        layer_index("model.layers")


def test_layer_sizes_refuse_a_config_that_is_not_pruned(plugin):
    from transformers import LlamaConfig
    from vllm_grasprune.sizes import layer_sizes

    with pytest.raises(ValueError, match="not a GRASPrune checkpoint"):
        layer_sizes(LlamaConfig())


@pytest.fixture
def vllm_stand_ins(plugin, monkeypatch):
    """Modules with vLLM's Llama/Mistral constructor signatures (as of vLLM 0.3x), recording what each
    layer would build: ``LlamaAttention`` takes its head counts, and its head size, from the config the
    decoder layer is given; ``LlamaMLP`` its width."""

    class LlamaDecoderLayer:
        def __init__(self, vllm_config, prefix="", config=None, attn_layer_type=None):
            config = config or vllm_config.model_config.hf_config
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            self.prefix = prefix
            self.qkv_rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
            self.o_cols = config.num_attention_heads * head_dim
            self.gate_up_rows = 2 * config.intermediate_size

    class LlamaForCausalLM:
        def __init__(self, *, vllm_config, prefix="", layer_type=LlamaDecoderLayer):
            layers = vllm_config.model_config.hf_config.num_hidden_layers
            self.layers = [layer_type(vllm_config=vllm_config, prefix=f"model.layers.{i}") for i in range(layers)]

    class MistralDecoderLayer(LlamaDecoderLayer):
        pass

    class MistralForCausalLM(LlamaForCausalLM):
        def __init__(self, *, vllm_config, prefix="", layer_type=MistralDecoderLayer):
            super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)

    modules = {
        "vllm": {}, "vllm.config": {"VllmConfig": object}, "vllm.model_executor": {},
        "vllm.model_executor.models": {},
        "vllm.model_executor.models.llama": {"LlamaDecoderLayer": LlamaDecoderLayer,
                                             "LlamaForCausalLM": LlamaForCausalLM},
        "vllm.model_executor.models.mistral": {"MistralDecoderLayer": MistralDecoderLayer,
                                               "MistralForCausalLM": MistralForCausalLM},
        "vllm.model_executor.models.qwen2": {"Qwen2ForCausalLM": type("Qwen2ForCausalLM", (), {})},
        "vllm.model_executor.models.qwen3": {"Qwen3ForCausalLM": type("Qwen3ForCausalLM", (), {})},
    }
    for name, attributes in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    monkeypatch.delitem(sys.modules, "vllm_grasprune.models", raising=False)
    models = importlib.import_module("vllm_grasprune.models")

    yield models
    sys.modules.pop("vllm_grasprune.models", None)  # built on stand-ins: not for other tests
    vars(plugin).pop("models", None)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_model_classes_build_every_layer_with_its_checkpoint_shapes(vllm_stand_ins, family, tmp_path):
    folder = pruned_checkpoint(family, tmp_path / "ckpt")
    config = load_config(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    cls = getattr(vllm_stand_ins, config.architectures[0])
    model = cls(vllm_config=types.SimpleNamespace(model_config=types.SimpleNamespace(hf_config=config)))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        qkv = sum(tensors[p + f"self_attn.{x}_proj.weight"].shape[0] for x in "qkv")
        assert layer.qkv_rows == qkv and layer.o_cols == tensors[p + "self_attn.o_proj.weight"].shape[1]
        assert layer.gate_up_rows == 2 * tensors[p + "mlp.gate_proj.weight"].shape[0]
    assert config.num_key_value_heads == 4  # the served model's config is still the base one


def test_qwen_checkpoints_are_refused_in_one_line(vllm_stand_ins):
    with pytest.raises(NotImplementedError, match="Llama and Mistral checkpoints only"):
        vllm_stand_ins.GraspruneQwen2ForCausalLM(vllm_config=None)


def test_config_json_mirrors_the_widths_as_transformers_per_layer_config(plugin, tmp_path):
    from transformers import PreTrainedConfig
    from vllm_grasprune.sizes import layer_sizes

    folder = pruned_checkpoint("llama", tmp_path / "ckpt")
    written = json.loads((folder / "config.json").read_text())
    mirror = written["per_layer_config"]
    assert sorted(mirror) == ["0", "1", "2"]
    assert [mirror[k]["intermediate_size"] for k in sorted(mirror)] == written["layer_intermediate_sizes"]
    assert [mirror[k]["num_key_value_heads"] for k in sorted(mirror)] == written["layer_num_key_value_heads"]
    # transformers' own per-layer machinery reads it as the plugin's sizes (the stock LlamaConfig cannot
    # hold it: its validation reads the global num_attention_heads, which then varies by layer)
    generic = PreTrainedConfig(**{k: written[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                          "num_attention_heads", "num_key_value_heads",
                                                          "head_dim", "per_layer_config")})
    assert generic.is_heterogeneous
    sizes = layer_sizes(load_config(folder))
    assert [(c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size)
            for c in generic.per_layer_config] == [
        (s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size) for s in sizes]
    # read back, the config is homogeneous (the stock modeling code reads the global widths) and
    # writes the same mirror again
    config = load_config(folder)
    assert not config.is_heterogeneous and config.intermediate_size == 96
    config.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["per_layer_config"] == mirror


def test_a_per_layer_config_that_disagrees_with_the_lists_is_refused(tmp_path):
    folder = pruned_checkpoint("llama", tmp_path / "ckpt")
    written = json.loads((folder / "config.json").read_text())
    written["per_layer_config"]["1"]["intermediate_size"] += 1
    (folder / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="per_layer_config disagrees"):
        load_config(folder)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_gpu_vllm_script_says_in_one_line_that_vllm_is_missing(tmp_path):
    done = subprocess.run(["bash", "bench/gpu_vllm.sh"], check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("bench/gpu_vllm: vLLM is not installed")
    assert not list(tmp_path.glob("gpu_vllm_*.json"))


def test_gpu_vllm_check_passes_the_reference_tokens_and_catches_a_wrong_one(tmp_path):
    from bench import gpu_vllm

    folder = gpu_vllm.build_checkpoint(tmp_path / "ckpt", "llama", 0.5)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GraspruneLlamaForCausalLM"]
    assert sum(config["layer_intermediate_sizes"]) < gpu_vllm.SHAPE["intermediate_size"] * 4
    model = gpu_vllm.reference(folder, "cpu")
    prompt = gpu_vllm.prompts()[0]
    tokens = gpu_vllm.greedy(model, prompt, 6)
    same = gpu_vllm.compare(tokens, tokens, gpu_vllm.logit_gaps(model, prompt, tokens), 0.25)
    assert same["identical"] and same["within_tolerance"] and same["max_gap"] <= 1e-4
    with torch.no_grad():
        worst = int(model(torch.tensor([prompt + tokens[:3]])).logits[0, -1].argmin())
    wrong = tokens[:3] + [worst] + tokens[4:]
    caught = gpu_vllm.compare(tokens, wrong, gpu_vllm.logit_gaps(model, prompt, wrong), 0.25)
    assert caught["first_difference"] == 3 and not caught["within_tolerance"] and caught["max_gap"] > 5
