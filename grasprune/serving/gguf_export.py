"""A pruned checkpoint as a GGUF file for llama.cpp and Ollama, with an Ollama ``Modelfile`` beside it.

llama.cpp's ``llama`` architecture reads per-layer head and FFN counts but builds every layer at layer 0's
sizes; its ``deci`` architecture (Nemotron-NAS) builds each layer at its own sizes, with the same blocks
as Llama otherwise (RMSNorm, RoPE on consecutive pairs, SwiGLU, tied or untied output). So a pruned
Llama, SmolLM2 or Mistral checkpoint is written as ``deci``: per-layer ``feed_forward_length``,
``attention.head_count`` and ``attention.head_count_kv`` arrays; explicit ``key_length``,
``value_length`` and ``rope.dimension_count`` (llama.cpp would otherwise derive the head size from
layer 0's head count); Q and K rows permuted per head as llama.cpp's convert_hf_to_gguf.py does (its
RoPE rotates consecutive pairs, Hugging Face's the two halves of a head). Qwen2 and Qwen3 are refused.

f32, f16, bf16 and q8_0 are encoded here (gguf-py); q8_0 stores a matrix whose rows are not a multiple
of 32 in f16, as llama.cpp's quantizer does. k-quants (q4_k_m) go through llama.cpp's own quantizer
(llama-cpp-python): it picks each tensor's type and falls back where a row is not a multiple of 256
(q5_0 or q8_0, f16 where not a multiple of 32). The output folder is written under a temporary name and
renamed: a folder at the final name is complete.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from grasprune.atomic import write_folder_atomic
from grasprune.errors import UserError
from grasprune.serving.formats import DEFAULT_GGUF_TYPE, GGUF_TYPES

QT = gguf.GGMLQuantizationType
PYTHON_TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}
LLAMA_CPP_TYPES = ("q4_k_m",)  # quantized by llama.cpp itself, from a lossless intermediate file
INSTALL_LLAMA_CPP = "pip install llama-cpp-python==0.3.36"
# the intermediate file for llama.cpp's quantizer keeps the checkpoint's own precision
LOSSLESS = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16}
REFUSED = {
    "qwen2": "Qwen2 has q/k/v biases, which llama.cpp's deci architecture read at the full model width until "
             "recently (and Ollama's builds may still)",
    "qwen3": "Qwen3 normalises each query and key head (q/k norms), which llama.cpp's deci architecture has not",
}
ROPE_TYPES = ("default", "linear", "llama3")
# the pre-tokenizers llama.cpp implements that a Llama-family BPE tokenizer can have, by their tokenizer.json
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class GgufExport:
    """What ``export_gguf`` wrote: the folder, the .gguf file in it, the Modelfile, and the tensor types."""

    folder: Path
    gguf_file: Path
    modelfile: Path
    gguf_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> number of tensors
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.gguf_file.stat().st_size


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: its GGUF name, where it comes from, its shape and GGML type."""

    name: str
    source: str
    shape: tuple[int, ...]
    qtype: QT
    rope_heads: int = 0  # > 0: rows permuted per head for llama.cpp's RoPE (query and key projections)


def check_gguf_type(gguf_type: str) -> str:
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    return gguf_type


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def export_gguf(source: Path, out: Path, gguf_type: str = DEFAULT_GGUF_TYPE, overwrite: bool = False) -> GgufExport:
    """Write the pruned checkpoint ``source`` as ``out/<name>-<type>.gguf`` and ``out/Modelfile`` (atomically)."""
    from grasprune.method.export import checked_pruned_folder

    check_gguf_type(gguf_type)
    source = checked_pruned_folder(source)
    out = Path(out).expanduser().resolve()
    if out == source or out in source.parents or source in out.parents:
        raise UserError(f"output folder {out} overlaps the checkpoint {source}: choose an --out outside it")
    if gguf_type in LLAMA_CPP_TYPES and not llama_cpp_available():
        raise UserError(f"{gguf_type} is quantized by llama.cpp: install it with `{INSTALL_LLAMA_CPP}` (a source "
                        "build, minutes), or export f16, bf16 or q8_0")
    model = _GgufModel(source)
    name = gguf_file_name(source, gguf_type)
    result = GgufExport(out, out / name, out / "Modelfile", gguf_type)

    def write(folder: Path) -> None:
        target = folder / name
        if gguf_type in LLAMA_CPP_TYPES:
            intermediate = folder / f".{name}.intermediate"
            model.write(intermediate, None)
            _llama_cpp_quantize(intermediate, target, FILE_TYPES[gguf_type])
            intermediate.unlink()
            result.tensor_types = tensor_type_counts(target)  # the types llama.cpp chose
        else:
            result.tensor_types = dict(Counter(t.qtype.name for t in model.write(target, gguf_type)))
        (folder / "Modelfile").write_text(modelfile(name, model))

    write_folder_atomic(out, write, overwrite=overwrite)
    result.notes = fallback_notes(gguf_type, result.tensor_types, model)
    return result


def check_gguf_exportable(checkpoint: Path) -> None:
    """Raise the one-line ``UserError`` that ``export_gguf`` would for this checkpoint (family, biases,
    RoPE scaling, tokenizer), without writing anything."""
    from grasprune.method.export import checked_pruned_folder

    _GgufModel(checked_pruned_folder(checkpoint))


def gguf_file_name(checkpoint: Path, gguf_type: str) -> str:
    """The .gguf file's name in the export folder: base model, keep ratio and type."""
    return f"{_slug(model_title(Path(checkpoint)))}-{gguf_type}.gguf"


def model_title(checkpoint: Path) -> str:
    report = json.loads((checkpoint / "grasprune.json").read_text())
    base = str(report.get("base_model") or checkpoint.name)
    keep = report.get("keep_ratio")
    return f"{Path(base).name.removesuffix('.gguf')}-pruned" + (f"-keep{keep:g}" if keep else "")


def estimated_size(checkpoint: Path, gguf_type: str) -> int:
    """The .gguf file's size, from the safetensors header: exact for the tensors of f32, f16, bf16 and
    q8_0 (plus the tokenizer's size on disk for the metadata); for k-quants an estimate (Q4_K where a row
    is a multiple of 256, else Q5_0 or f16: llama.cpp's fallbacks, without its Q6_K upgrades)."""
    total = (checkpoint / "tokenizer.json").stat().st_size if (checkpoint / "tokenizer.json").is_file() else 0
    for header in _headers(checkpoint).values():
        shape = tuple(header["shape"])
        if len(shape) < 2:
            qtype = QT.F32
        elif gguf_type in LLAMA_CPP_TYPES:
            qtype = QT.Q4_K if shape[-1] % gguf.QK_K == 0 else QT.Q5_0 if shape[-1] % 32 == 0 else QT.F16
        else:
            qtype = _GgufModel.type_for(shape, header["dtype"], gguf_type)
        total += _encoded_layout(shape, qtype)[2]
    return total


def tensor_type_counts(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds."""
    reader = gguf.GGUFReader(path)
    return dict(Counter(tensor.tensor_type.name for tensor in reader.tensors))


def fallback_notes(gguf_type: str, counts: dict[str, int], model: _GgufModel) -> list[str]:
    """One line per thing the GGUF does not carry as asked: a sliding window, matrices in another type."""
    return _window_notes(model.config) + _type_notes(gguf_type, counts, model)


def _window_notes(config) -> list[str]:
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        return [(f"the sliding window ({window} tokens) is not written: llama.cpp attends over the whole context, "
                f"as in its own conversion of Mistral, so the two agree up to {window} tokens")]
    return []


def _type_notes(gguf_type: str, counts: dict[str, int], model: _GgufModel) -> list[str]:
    if gguf_type == "q8_0" and counts.get("F16"):
        note = (f"{counts['F16']} of {model.matrix_count()} weight matrices have rows that are not a multiple of 32 "
                "(q8_0's block): stored in f16, as llama.cpp's quantizer does")
        return [note]
    if gguf_type in LLAMA_CPP_TYPES:
        misfit = sum(cols % gguf.QK_K != 0 for cols in model.matrix_row_lengths())
        if misfit:
            kept = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
            note = (f"{misfit} of {model.matrix_count()} weight matrices have rows that are not a multiple of 256 "
                    f"(the k-quant block): llama.cpp stored them in its fallback types ({kept} tensors in all)")
            return [note]
    return []


class _GgufModel:
    """A pruned checkpoint read for GGUF: its config, tensors (from the safetensors headers) and tokenizer."""

    def __init__(self, folder: Path):
        from grasprune.method.export import model_class_for

        self.folder = folder
        raw = json.loads((folder / "config.json").read_text())
        family = raw.get("model_type", "").removeprefix("grasprune_")
        if family in REFUSED:
            raise UserError(f"cannot export this {family} checkpoint to GGUF: {REFUSED[family]}; "
                            "export it as safetensors (--format safetensors)")
        self.config = model_class_for(raw.get("model_type", "")).config_class.from_pretrained(folder)
        self.report = json.loads((folder / "grasprune.json").read_text())
        self.headers = _headers(folder)
        self._check_layers()
        self.rope = _rope(self.config)
        self.vocab = _Vocab(folder, self.config.vocab_size)

    def _check_layers(self) -> None:
        config, headers = self.config, self.headers
        biases = sorted(name for name in headers if name.endswith(".bias"))
        if biases:
            raise UserError(f"cannot export to GGUF: the checkpoint has biases ({biases[0]}, ...), which llama.cpp's "
                            "deci architecture does not read at pruned widths in every build; export safetensors")
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        group = config.num_attention_heads // config.num_key_value_heads
        ffn = list(config.layer_intermediate_sizes or [config.intermediate_size] * config.num_hidden_layers)
        kv = list(config.layer_num_key_value_heads or [config.num_key_value_heads] * config.num_hidden_layers)
        for i, (width, groups) in enumerate(zip(ffn, kv, strict=True)):
            prefix = f"model.layers.{i}"
            expected = {f"{prefix}.mlp.down_proj.weight": [config.hidden_size, width],
                        f"{prefix}.self_attn.q_proj.weight": [groups * group * self.head_dim, config.hidden_size],
                        f"{prefix}.self_attn.k_proj.weight": [groups * self.head_dim, config.hidden_size]}
            for name, shape in expected.items():
                if headers.get(name, {}).get("shape") != shape:
                    raise UserError(f"checkpoint {self.folder} is inconsistent: {name} is "
                                    f"{headers.get(name, {}).get('shape')}, config.json says {shape}; export it again")
        self.ffn, self.kv, self.q_heads = ffn, kv, [groups * group for groups in kv]

    def title(self) -> str:
        return model_title(self.folder)

    def tensors(self, gguf_type: str | None) -> list[_Tensor]:
        """Every tensor in the file's order; ``gguf_type`` None: the lossless intermediate for llama.cpp."""
        names = gguf.TensorNameMap(gguf.MODEL_ARCH.DECI, self.config.num_hidden_layers)
        planned = []
        for source, header in self.headers.items():
            name = names.get_name(source, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise UserError(f"cannot export to GGUF: tensor {source} has no llama.cpp counterpart")
            shape = tuple(header["shape"])
            planned.append(_Tensor(name, source, shape, self.type_for(shape, header["dtype"], gguf_type),
                                   self._rope_heads(source, shape)))
        if self.rope.factors is not None:
            planned.append(_Tensor("rope_freqs.weight", "", self.rope.factors.shape, QT.F32))
        order = {"token_embd.weight": 0, "output_norm.weight": 2, "output.weight": 3, "rope_freqs.weight": 1}
        return sorted(planned, key=lambda t: (order.get(t.name, 4), _layer_of(t.name), t.name))

    @staticmethod
    def type_for(shape: tuple[int, ...], dtype: str, gguf_type: str | None) -> QT:
        """A tensor's GGML type: ``gguf_type`` None gives the lossless intermediate for llama.cpp."""
        if len(shape) < 2:
            return QT.F32  # norms stay in f32, as in every llama.cpp conversion
        if gguf_type is None:
            return LOSSLESS.get(dtype, QT.F32)
        qtype = PYTHON_TYPES[gguf_type]
        if qtype == QT.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0]:
            return QT.F16
        return qtype

    def _rope_heads(self, source: str, shape: tuple[int, ...]) -> int:
        if source.endswith(("q_proj.weight", "k_proj.weight")):
            return shape[0] // self.head_dim
        return 0

    def matrix_row_lengths(self) -> list[int]:
        return [header["shape"][-1] for header in self.headers.values() if len(header["shape"]) == 2]

    def matrix_count(self) -> int:
        return len(self.matrix_row_lengths())

    def write(self, path: Path, gguf_type: str | None) -> list[_Tensor]:
        """Stream the GGUF file to ``path``: metadata, tensor infos, then one tensor at a time; the tensors
        written."""
        plan = self.tensors(gguf_type)
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI])
        self._add_metadata(writer, gguf_type)
        for tensor in plan:
            dtype, shape, nbytes = _encoded_layout(tensor.shape, tensor.qtype)
            writer.add_tensor_info(tensor.name, shape, dtype, nbytes, raw_dtype=tensor.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with safe_open(str(self.folder / "model.safetensors"), framework="pt") as handle:
            for tensor in plan:
                writer.write_tensor_data(_encode(self._values(handle, tensor), tensor.qtype))
        writer.close()
        return plan

    def _values(self, handle, tensor: _Tensor) -> np.ndarray:
        if not tensor.source:
            return self.rope.factors
        weights = handle.get_tensor(tensor.source).float()
        if tensor.rope_heads:
            weights = permute_for_rope(weights, tensor.rope_heads)
        return weights.numpy()

    def _add_metadata(self, writer: gguf.GGUFWriter, gguf_type: str | None) -> None:
        config = self.config
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(self.title())
        writer.add_description(f"{self.report.get('base_model')} pruned with GRASPrune (keep ratio "
                               f"{self.report.get('keep_ratio')}): per-layer widths, llama.cpp deci architecture")
        writer.add_file_type(FILE_TYPES[gguf_type] if gguf_type else _lossless_file_type(self.headers))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(self.ffn)
        writer.add_head_count(self.q_heads)
        writer.add_head_count_kv(self.kv)
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        writer.add_rope_dimension_count(self.head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        self.rope.add_to(writer)
        self.vocab.add_to(writer)


def permute_for_rope(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from Hugging Face's half-split RoPE layout to llama.cpp's pairs (the
    permutation of llama.cpp's convert_hf_to_gguf.py): row ``j`` of the first half goes to ``2j``, row ``j``
    of the second half to ``2j + 1``."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _headers(folder: Path) -> dict[str, dict]:
    from grasprune.serving.convert import _tensor_entries

    files = sorted(folder.glob("*.safetensors"))
    if [f.name for f in files] != ["model.safetensors"]:
        raise UserError(f"{folder} has {len(files)} safetensors files: a GRASPrune checkpoint has one "
                        "model.safetensors (export it again)")
    return _tensor_entries(files[0])


def _layer_of(name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def _lossless_file_type(headers: dict[str, dict]) -> gguf.LlamaFileType:
    kinds = {h["dtype"] for h in headers.values() if len(h["shape"]) == 2}
    by_kind = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16}
    return by_kind.get(kinds.pop(), gguf.LlamaFileType.ALL_F32) if len(kinds) == 1 else gguf.LlamaFileType.ALL_F32


def _encoded_layout(shape: tuple[int, ...], qtype: QT) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(numpy dtype, shape as the writer takes it, bytes)`` of a tensor encoded in ``qtype``."""
    count = math.prod(shape)
    if qtype == QT.F32:
        return np.dtype(np.float32), shape, 4 * count
    if qtype == QT.F16:
        return np.dtype(np.float16), shape, 2 * count
    if qtype == QT.BF16:
        return np.dtype(np.uint16), shape, 2 * count
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return np.dtype(np.uint8), byte_shape, math.prod(byte_shape)


def _encode(values: np.ndarray, qtype: QT) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return values if qtype == QT.F32 else gguf.quants.quantize(values, qtype)


@dataclass(frozen=True)
class _Rope:
    theta: float
    kind: str
    factor: float = 1.0
    factors: np.ndarray | None = None  # llama3: per-frequency divisors (llama.cpp's rope_freqs tensor)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(self.theta)
        if self.kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(self.factor)


def _rope(config) -> _Rope:
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    kind = params.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise UserError(f"cannot export to GGUF: RoPE scaling {kind!r} is not supported (only "
                        f"{', '.join(ROPE_TYPES)}); export safetensors")
    if kind == "linear":
        return _Rope(theta, kind, float(params["factor"]))
    if kind == "llama3":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return _Rope(theta, kind, factors=llama3_rope_factors(params, theta, head_dim))
    return _Rope(theta, kind)


def llama3_rope_factors(params: dict, theta: float, head_dim: int) -> np.ndarray:
    """Llama 3's RoPE scaling as llama.cpp takes it: a divisor per frequency (convert_hf_to_gguf.py's)."""
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    context = params.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (context / wavelen - low) / (high - low)
    factors = np.where(wavelen < context / high, 1.0,
                       np.where(wavelen > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


class _Vocab:
    """The tokenizer as llama.cpp reads it: gpt2 (byte-level BPE, e.g. SmolLM2, Llama 3) or llama
    (SentencePiece-style BPE with byte fallback, e.g. Llama 2, Mistral), from tokenizer.json."""

    def __init__(self, folder: Path, vocab_size: int):
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"cannot export to GGUF: {folder} has no tokenizer.json (llama.cpp needs the "
                            "tokenizer): export the checkpoint again with its tokenizer")
        self.folder, self.size = folder, vocab_size
        self.data = json.loads(path.read_text(encoding="utf-8"))
        model = self.data.get("model", {})
        if model.get("type") != "BPE":
            raise UserError(f"cannot export to GGUF: a {model.get('type')} tokenizer (llama.cpp's gpt2 and llama "
                            "tokenizers are BPE)")
        self.kind = "llama" if model.get("byte_fallback") else "gpt2"
        self.pre = None if self.kind == "llama" else bpe_pre_tokenizer(self.data)
        ids = [*model["vocab"].values(), *(t["id"] for t in self.data.get("added_tokens", []))]
        if max(ids) >= vocab_size:
            raise UserError(f"cannot export to GGUF: token id {max(ids)} is outside the model's {vocab_size} "
                            "embeddings")

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        tokens, scores, types = self._tokens()
        writer.add_tokenizer_model(self.kind)
        writer.add_tokenizer_pre(self.pre or "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if self.kind == "llama":
            writer.add_token_scores(scores)
            writer.add_add_space_prefix(self._adds_space_prefix())
        special = gguf.SpecialVocab(self.folder, load_merges=self.kind == "gpt2", n_vocab=self.size)
        special.add_special_token.update(bos=self.adds("bos"), eos=self.adds("eos"))
        special.add_to_gguf(writer, quiet=True)

    def _tokens(self) -> tuple[list[str], list[float], list[int]]:
        model = self.data["model"]
        added = {t["id"]: t for t in self.data.get("added_tokens", [])}
        by_id = {i: token for token, i in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
        rank = self._merge_ranks() if self.kind == "llama" else {}
        tokens, scores, types = [], [], []
        for i in range(self.size):
            token = by_id.get(i)
            if token is None:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            else:
                tokens.append(token)
                types.append(self._type(token, added.get(i)))
            scores.append(-float(rank.get(token, 0)))
        return tokens, scores, types

    def _type(self, token: str, added: dict | None) -> int:
        if self.kind == "llama" and token == self.data["model"].get("unk_token"):
            return gguf.TokenType.UNKNOWN
        if added is not None:
            return gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        if self.kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            return gguf.TokenType.BYTE
        return gguf.TokenType.NORMAL

    def _merge_ranks(self) -> dict[str, int]:
        """SentencePiece scores from the merges: a token made by an earlier merge scores higher, so llama.cpp's
        SPM tokenizer (which merges the best-scoring pair first) merges in the BPE order."""
        ranks: dict[str, int] = {}
        for rank, merge in enumerate(self.data["model"].get("merges", []), start=1):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            ranks.setdefault(left + right, rank)
        return ranks

    def _adds_space_prefix(self) -> bool:
        text = json.dumps([self.data.get("normalizer"), self.data.get("pre_tokenizer")])
        return '"Prepend"' in text or '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text

    def adds(self, which: str) -> bool:
        """Whether the tokenizer puts its bos (eos) token around every encoded text (its post-processor)."""
        processor = self.data.get("post_processor") or {}
        singles = [p.get("single", []) for p in processor.get("processors", [processor])
                   if p.get("type") == "TemplateProcessing"]
        position = 0 if which == "bos" else -1
        return any(single and "SpecialToken" in single[position] for single in singles)


def bpe_pre_tokenizer(data: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, read from tokenizer.json."""
    steps = data.get("pre_tokenizer") or {}
    steps = steps.get("pretokenizers", [steps]) if steps.get("type") == "Sequence" else [steps]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_REGEX:
        return "llama-bpe"
    raise UserError(f"cannot export to GGUF: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not "
                    "one llama.cpp implements that grasprune knows (gpt-2, smollm, llama-bpe)")


def modelfile(gguf_name: str, model: _GgufModel) -> str:
    """An Ollama Modelfile for the GGUF beside it: ``ollama create NAME -f Modelfile``."""
    stops = sorted({t["content"] for t in model.vocab.data.get("added_tokens", [])
                    if t.get("special") and t["id"] in _end_ids(model.config)})
    tag = _slug(model.title()).lower()
    lines = [f"# {model.title()}: `ollama create {tag} -f Modelfile`, then `ollama run {tag}`.",
             "# Ollama takes the chat template from the GGUF's tokenizer.chat_template when it knows it;",
             "# add a TEMPLATE here otherwise.",
             "# The GGUF is llama.cpp's `deci` architecture with per-layer head counts: Ollama releases before",
             "# April 2025 (before ollama pull request 10238) crash reading them; llama.cpp itself is tested.",
             f"FROM ./{gguf_name}"]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def _end_ids(config) -> set[int]:
    eos = getattr(config, "eos_token_id", None)
    return set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _llama_cpp_quantize(source: Path, target: Path, ftype: int) -> None:
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp could not quantize {source.name} to {gguf.LlamaFileType(ftype).name} "
                        "(its log above says why)")
