"""Export: the checkpoint in bf16 (default), fp16 or fp32 as one archive, streamed from disk, its size
beside the original model's and the checkpoint's, the equivalent CLI command and the Python that loads it;
or as a GGUF file for llama.cpp and Ollama (f16, bf16, q8_0, q4_k_m, f32) with its Modelfile and the
commands that run it."""

from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from grasprune.errors import UserError
from grasprune.method.models import weights_size
from grasprune.runs.archive import (
    GGUF_PREFIX,
    ArchiveInfo,
    archive_info,
    build_archive,
    check_servable,
    load_snippet,
)
from grasprune.runs.store import Run
from grasprune.serving.convert import (
    DEFAULT_PRECISION,
    PRECISIONS,
    checkpoint_precision,
    converted_size,
    folder_size,
)
from grasprune.serving.gguf_export import (
    DEFAULT_GGUF_TYPE,
    GGUF_TYPES,
    INSTALL_LLAMA_CPP,
    LLAMA_CPP_TYPES,
    check_gguf_exportable,
    estimated_size,
    gguf_file_name,
    llama_cpp_available,
)
from studio.common import pick_completed_run, root, size
from studio.heal_jobs import finished_heals
from studio.routes import download_url


@st.cache_data(ttl=60, show_spinner=False)
def original_size(spec: str) -> int | None:
    return weights_size(spec)


def pick_source(run):
    """The run's pruned checkpoint, or one of its finished heals (``?heal=<id>`` preselects one)."""
    heals = {job.id: job for job in finished_heals(root(), run.output_dir())}
    if not heals:
        return run
    options = ["pruned", *heals]
    wanted = st.query_params.get("heal")
    if wanted in heals and st.session_state.get("export_heal_link") != wanted:  # a new link chooses it once
        st.session_state.update(export_source=wanted, export_heal_link=wanted)

    def label(option: str) -> str:
        if option == "pruned":
            return "pruned (the run's checkpoint)"
        ppl = heals[option].metrics().get("ppl_wikitext2")
        return f"healed {option}" + (f" · WikiText-2 {ppl['ppl']:.2f}" if ppl else "")

    choice = st.radio("Checkpoint", options, key="export_source", horizontal=True, format_func=label)
    return run if choice == "pruned" else heals[choice]


def main() -> None:
    st.title("Export")
    run = pick_completed_run("export_run", "a run's checkpoint is exported when it completes")
    if run is None:
        return
    source = pick_source(run)
    folder = source.output_dir()
    try:
        check_servable(source, root())
        stored = checkpoint_precision(folder)
    except UserError as err:
        st.warning(str(err))
        return
    formats = {"safetensors": "safetensors (transformers, vLLM)", "gguf": "GGUF (llama.cpp, Ollama)"}
    if st.radio("Format", list(formats), key="export_format", horizontal=True,
                format_func=formats.get) == "gguf":
        show_gguf(source, folder)
        return
    precision = st.radio("Precision", list(PRECISIONS), index=list(PRECISIONS).index(DEFAULT_PRECISION),
                         key="export_precision", horizontal=True,
                         format_func=lambda p: f"{p} (the run's checkpoint as is)" if p == stored else p)
    info = archive_info(source, precision)
    sizes = st.container()  # filled last: the archive's exact size once it is prepared below
    st.caption("The same export from the command line (a folder instead of an archive):")
    out = folder.with_name(f"{folder.name}-{precision}")
    st.code(f"grasprune export {shlex.quote(str(folder))} --dtype {precision} --out {shlex.quote(str(out))}",
            language="bash")
    if info is None:
        info = prepare(source, precision, "Prepare the archive", "export_prepare",
                       "Writing the archive (once per precision; later downloads reuse it)…")
    with sizes:
        show_sizes(run, folder, stored, precision, info)
    if info is None:
        st.caption("The archive is a .tar of the checkpoint folder in this precision, written once into the run "
                   "folder.")
        return
    show_download(source, precision, info)


def prepare(run, kind: str, label: str, button_key: str, doing: str) -> ArchiveInfo | None:
    """A button that writes the run's archive of ``kind`` (a precision, or GGUF_PREFIX + a GGUF type) into its
    folder; the archive's info once written, None before (a refusal is shown in one line)."""
    if not st.button(label, key=button_key, type="primary"):
        return None
    with st.spinner(doing):
        try:
            return build_archive(run, root(), kind)
        except UserError as err:
            st.error(str(err))
    return None


def show_sizes(run, folder: Path, stored: str | None, precision: str, info: ArchiveInfo | None) -> None:
    """The export's size against the dense model in the same precision (like for like), with the original
    download (its own format, e.g. a 4-bit GGUF) and the checkpoint beside it."""
    model = run.config().model
    original, checkpoint = original_size(model), folder_size(folder)
    exported = info.size if info is not None else converted_size(folder, precision)
    dense = run.report()["params"]["total_before"] * PRECISIONS[precision].itemsize
    first, second, third, fourth = st.columns(4)
    first.metric(f"Dense model ({precision})", size(dense),
                 help=f"{model}'s {run.report()['params']['total_before']:,} parameters in {precision}")
    second.metric(f"Export ({precision})", size(exported) if info is not None else f"≈ {size(exported)}",
                  help="the archive" if info is not None else "the folder: prepare the archive for its exact size")
    third.metric(f"Checkpoint ({stored})" if stored else "Checkpoint", size(checkpoint), help=f"`{folder}`")
    fourth.metric(f"Original download ({download_format(model)})", size(original) if original else "unknown",
                  help=f"the weight files of {model} on this machine, in their own format")
    st.caption(f"The {precision} export is {exported / dense:.2f}× the dense model in {precision} (the same "
               "precision: what pruning saved).")


def download_format(spec: str) -> str:
    """The original weights' format as a user downloaded them: the GGUF's quantization, or safetensors."""
    from grasprune.method.models import weight_files

    files = weight_files(spec) or []
    if files and files[0].suffix == ".gguf":
        quant = files[0].stem.rsplit(".", 1)[-1]
        return f"GGUF {quant}" if quant and quant != files[0].stem else "GGUF"
    return "safetensors" if files else "unknown"


def show_gguf(source, folder: Path) -> None:
    """The GGUF export: type, size, the CLI command, the archive (the .gguf and its Modelfile), and how to
    run it in llama.cpp and Ollama."""
    refusal = gguf_refusal(str(folder))
    if refusal:
        st.warning(refusal)
        return
    available = llama_cpp_available()
    gguf_type = st.radio("GGUF type", list(GGUF_TYPES), index=GGUF_TYPES.index(DEFAULT_GGUF_TYPE),
                         key="export_gguf_type", horizontal=True,
                         format_func=lambda t: f"{t} (needs llama-cpp-python)" if t in LLAMA_CPP_TYPES
                         and not available else t)
    key = GGUF_PREFIX + gguf_type
    info = archive_info(source, key)
    sizes = st.container()
    st.caption("The same export from the command line (a folder with the .gguf and an Ollama Modelfile):")
    out = folder.with_name(f"{folder.name}-gguf-{gguf_type}")
    st.code(f"grasprune export {shlex.quote(str(folder))} --format gguf --type {gguf_type} "
            f"--out {shlex.quote(str(out))}", language="bash")
    if gguf_type in LLAMA_CPP_TYPES and not available:
        st.info(f"{gguf_type} is quantized by llama.cpp's own quantizer: install it with `{INSTALL_LLAMA_CPP}` "
                "(a source build, minutes), or choose f16, bf16 or q8_0.")
    elif info is None:
        info = prepare(source, key, "Prepare the GGUF", "export_gguf_prepare",
                       "Writing the GGUF (once per type; later downloads reuse it)…")
    with sizes:
        checkpoint = folder_size(folder)
        exported = info.size if info is not None else estimated_gguf_size(str(folder), gguf_type)
        left, right = st.columns(2)
        left.metric("Checkpoint", size(checkpoint), help=f"`{folder}`")
        right.metric(f"GGUF ({gguf_type})", size(exported) if info is not None else f"≈ {size(exported)}",
                     help="the archive (.gguf + Modelfile)" if info is not None else "prepare it for its exact size")
        st.caption(f"The {gguf_type} GGUF is {exported / checkpoint:.2f}× the checkpoint. llama.cpp reads it as its "
                   "`deci` architecture, which gives every layer its own widths. Verified: llama.cpp loads it and its "
                   "logits agree with transformers (tests). Not verified here: Ollama, whose releases before April "
                   "2025 crash on per-layer head counts (fixed by ollama pull request 10238; docs/serving.md).")
    if info is None:
        return
    download_link(source, key, info)
    name = gguf_file_name(folder, gguf_type)
    st.caption("Modelfile (beside the .gguf in the archive):")
    st.code(modelfile_text(info.path, info.folder_name), language="dockerfile")
    st.caption("Run it, after `tar xf " + info.download_name() + "`:")
    st.code(f"cd {info.folder_name}\nollama create {info.folder_name} -f Modelfile && ollama run {info.folder_name}\n"
            f"llama-cli -m {name} -p 'The capital of France is' -n 32", language="bash")


@st.cache_data(ttl=60, show_spinner=False)
def gguf_refusal(folder: str) -> str | None:
    try:
        check_gguf_exportable(Path(folder))
    except UserError as err:
        return str(err)
    return None


@st.cache_data(ttl=60, show_spinner=False)
def estimated_gguf_size(folder: str, gguf_type: str) -> int:
    return estimated_size(Path(folder), gguf_type)


def modelfile_text(archive: Path, folder_name: str) -> str:
    """The Modelfile inside a GGUF archive."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{folder_name}/Modelfile")
        return member.read().decode() if member is not None else ""


def download_link(source, precision: str, info: ArchiveInfo) -> None:
    url = download_url(source.id, precision, heal=not isinstance(source, Run))
    st.markdown(f'<a href="{url}" download="{info.download_name()}" '
                f'class="grasprune-download">⬇ Download {info.download_name()}</a> ({size(info.size)})',
                unsafe_allow_html=True)
    st.markdown(f"Size **{info.size:,} bytes** · sha256 `{info.sha256}`")


def show_download(source, precision: str, info: ArchiveInfo) -> None:
    download_link(source, precision, info)
    st.caption("Load it in Python:")
    st.code(load_snippet(info), language="python")
    st.caption("Or with transformers alone, after unpacking:")
    st.code(f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('
            f'"{info.folder_name}", trust_remote_code=True, dtype="auto")'
            + (f"  # {info.precision}, as stored" if info.precision else ""), language="python")


main()
