"""Export: the checkpoint folder as one archive, streamed from disk, with its size, sha256 and the
Python that loads it."""

from __future__ import annotations

import streamlit as st

from grasprune.archive import archive_info, build_archive, check_servable, load_snippet
from grasprune.errors import UserError
from studio.common import pick_completed_run, root, size
from studio.routes import download_url


def main() -> None:
    st.title("Export")
    run = pick_completed_run("export_run", "a run's checkpoint is exported when it completes")
    if run is None:
        return
    try:
        check_servable(run, root())
    except UserError as err:
        st.warning(str(err))
        return
    folder = run.output_dir()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    st.caption(f"Checkpoint folder `{folder}`: {len(files)} files, {size(sum(p.stat().st_size for p in files))}")
    info = archive_info(run)
    if info is None and st.button("Prepare the archive", key="export_prepare", type="primary"):
        with st.spinner("Writing the archive (once; later downloads reuse it)…"):
            info = build_archive(run, root())
    if info is None:
        st.caption("The archive is a .tar of the checkpoint folder, written once into the run folder.")
        return
    st.markdown(f'<a href="{download_url(run.id)}" download="{info.download_name()}" class="grasprune-download">'
                f"⬇ Download {info.download_name()}</a> ({size(info.size)})", unsafe_allow_html=True)
    st.markdown(f"Size **{info.size:,} bytes** · sha256 `{info.sha256}`")
    st.caption("Load it in Python:")
    st.code(load_snippet(info), language="python")
    st.caption("Or with transformers alone, after unpacking:")
    st.code(f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('
            f'"{info.folder_name}", trust_remote_code=True)', language="python")


main()
