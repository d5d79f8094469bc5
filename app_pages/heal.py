"""Heal: LoRA recovery of a pruned checkpoint (``grasprune heal``) as a background job, its loss live."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from grasprune.cli.command import heal_command
from grasprune.config import option_help
from grasprune.errors import UserError
from grasprune.evaluation.perplexity import EVAL_DATASETS
from grasprune.method.heal import HealConfig, check_heal
from studio.common import completed_runs, pick_run, root, shown_errors
from studio.heal_jobs import heal_job_in_root, heal_section, list_heal_jobs, registry, start_heal
from studio.heal_view import heal_view

SOURCES = {"run": "A completed run", "path": "A checkpoint folder"}


def checkpoint_input() -> tuple[Path | None, str | None]:
    """The pruned checkpoint, resolved, and the run it comes from; None where none is chosen."""
    kind = st.radio("Pruned checkpoint", list(SOURCES), format_func=SOURCES.get, key="heal_source_kind",
                    horizontal=True)
    if kind == "run":
        run = pick_run("Completed run", completed_runs(), key="heal_run")
        if run is None:
            st.info("No completed run yet: prune a model first, or give a checkpoint folder's path.")
            return None, None
        return run.output_dir().resolve(), run.id
    text = st.text_input("Checkpoint folder", key="heal_path",
                         placeholder="/path/to/pruned-0.5 (a folder with grasprune.json)").strip()
    return (Path(text).expanduser().resolve() if text else None), None


def default_out(source: Path | None) -> Path | None:
    """``<checkpoint>-healed`` beside a checkpoint inside the runs folder, ``<runs>/healed/<name>-healed`` for
    one elsewhere: the studio writes only inside the runs folder."""
    if source is None:
        return None
    if source.is_relative_to(root()):
        return source.with_name(f"{source.name}-healed")
    return root() / "healed" / f"{source.name}-healed"


def checkpoint_protocol(source: Path | None) -> tuple[list[str], int, int]:
    """The perplexity protocol of the checkpoint's own report (its run's settings), so the healed model is
    measured as the pruned one was; WikiText-2 at 512 x 64 (the README's) where it names none."""
    try:
        config = json.loads((source / "grasprune.json").read_text()).get("config") or {}
    except (OSError, TypeError, ValueError):
        config = {}
    datasets = [d for d in config.get("eval_datasets") or [] if d in EVAL_DATASETS] or ["wikitext2"]
    return (datasets, int(config.get("eval_seqlen") or 512),
            int(config.get("eval_windows") or 64))


def evaluation_inputs(source: Path | None) -> tuple[list[str], int, int]:
    """Measured on the healed checkpoint once written: the source's own protocol by default (reset when the
    checkpoint changes)."""
    datasets, seqlen, windows = checkpoint_protocol(source)
    if st.session_state.get("heal_eval_source") != str(source):
        st.session_state.update(heal_eval_datasets=datasets, heal_eval_seqlen=seqlen, heal_eval_windows=windows,
                                heal_eval_source=str(source))
    e1, e2, e3 = st.columns([2, 1, 1])
    datasets = e1.multiselect("Perplexity after healing", list(EVAL_DATASETS), key="heal_eval_datasets",
                              help=option_help("eval_datasets", HealConfig))
    seqlen = e2.number_input("Sequence length", 2, 32_768, key="heal_eval_seqlen",
                             help=option_help("eval_seqlen", HealConfig))
    windows = e3.number_input("Windows", 1, 100_000, key="heal_eval_windows", help=option_help("eval_windows", HealConfig))
    return list(datasets), int(seqlen), int(windows)


def settings_form(source: Path | None) -> HealConfig:
    d = HealConfig()
    c1, c2, c3 = st.columns(3)
    steps = c1.number_input("Steps", 1, 10**7, d.steps, key="heal_steps", help=option_help("steps", HealConfig))
    minutes = c2.number_input("Time limit (minutes, 0 = none)", 0.0, 100_000.0, 0.0, step=1.0, key="heal_minutes",
                              help=option_help("minutes", HealConfig) + "; whichever of steps and minutes comes first ends training")
    lr = c3.number_input("Learning rate", 1e-8, 1.0, d.lr, step=1e-5, format="%.1e", key="heal_lr", help=option_help("lr", HealConfig))
    rank = c1.number_input("LoRA rank", 1, 4096, d.rank, key="heal_rank", help=option_help("rank", HealConfig))
    distill = c2.number_input("Distillation weight", 0.0, 1.0, d.distill, step=0.1, key="heal_distill",
                              help=option_help("distill", HealConfig))
    samples = c3.number_input("Calibration samples", 1, 100_000, d.samples, key="heal_samples", help=option_help("samples", HealConfig))
    data = st.text_input("Calibration data", d.data, key="heal_data", help=option_help("data", HealConfig)).strip()
    with st.expander("Advanced settings"):
        a1, a2, a3, a4 = st.columns(4)
        block_len = a1.number_input("Block length (tokens)", 2, 32_768, d.block_len, key="heal_block_len",
                                    help=option_help("block_len", HealConfig))
        alpha = a2.number_input("LoRA alpha", 1, 100_000, d.alpha, key="heal_alpha", help=option_help("alpha", HealConfig))
        seed = a3.number_input("Seed", 0, 2**31 - 1, d.seed, key="heal_seed", help=option_help("seed", HealConfig))
        every = a4.number_input("Save every (steps)", 1, 10**7, d.checkpoint_every, key="heal_checkpoint_every",
                                help=option_help("checkpoint_every", HealConfig))
        h1, h2, h3 = st.columns([2, 1, 1])
        holdout = h1.text_input("Held-out text", d.holdout, key="heal_holdout", help=option_help("holdout", HealConfig)).strip()
        holdout_samples = h2.number_input("Held-out samples", 1, 100_000, d.holdout_samples,
                                          key="heal_holdout_samples", help=option_help("holdout_samples", HealConfig))
        holdout_every = h3.number_input("Measure every (steps)", 1, 10**7, d.holdout_every, key="heal_holdout_every",
                                        help=option_help("holdout_every", HealConfig))
    eval_datasets, eval_seqlen, eval_windows = evaluation_inputs(source)
    return HealConfig(steps=int(steps), minutes=float(minutes) or None, lr=float(lr), rank=int(rank), alpha=int(alpha),
                      data=data, samples=int(samples), block_len=int(block_len), distill=float(distill),
                      seed=int(seed), checkpoint_every=int(every), holdout=holdout,
                      holdout_samples=int(holdout_samples), holdout_every=int(holdout_every),
                      eval_datasets=eval_datasets, eval_seqlen=eval_seqlen, eval_windows=eval_windows)


def output_input(source: Path | None) -> tuple[Path | None, bool, bool]:
    default = default_out(source)
    text = st.text_input("Output folder", key="heal_out", placeholder=str(default or ""),
                         help="Empty: the folder shown. Inside the runs folder (the studio writes nowhere else); a "
                              "stopped heal's state is saved beside it").strip()
    o1, o2 = st.columns(2)
    overwrite = o1.checkbox("Replace an existing output folder", key="heal_overwrite")
    restart = o2.checkbox("Discard a stopped heal's saved state", key="heal_restart",
                          help="Without it, a heal into the same output folder with the same settings resumes there")
    return (Path(text).expanduser().resolve() if text else default), overwrite, restart


def check(source: Path | None, out: Path | None, cfg: HealConfig, overwrite: bool, restart: bool) -> tuple[Path, Path]:
    """Everything the job would refuse, refused here in one line. The checkpoint is the user's own folder
    (the studio binds to localhost): resolved and checked, never served. The output stays in the runs folder,
    and what it replaces (with overwrite) is an earlier healed checkpoint, never a run or a pruned checkpoint."""
    if source is None or out is None:
        raise UserError("choose a pruned checkpoint: a completed run, or the path of a checkpoint folder")
    source, out = check_heal(source, out, cfg, overwrite, restart)
    if out == root():
        raise UserError(f"output folder {out} is the runs folder itself: name a folder inside it")
    if not out.is_relative_to(root()):
        raise UserError(f"output folder {out} is outside the runs folder {root()}: the studio writes only inside "
                        "it (heal elsewhere with the command shown)")
    if out.exists() and heal_section(out) is None:  # overwrite: a run folder or a pruned checkpoint must stay
        raise UserError(f"output folder {out} exists and is no healed checkpoint: the studio replaces only those "
                        "(choose another output folder)")
    return source, out


def start(source: Path | None, out: Path | None, cfg: HealConfig, overwrite: bool, restart: bool,
          run_id: str | None) -> None:
    source, out = check(source, out, cfg, overwrite, restart)
    job = start_heal(registry(), root(), source, out, cfg, overwrite, restart, run_id)
    st.query_params["heal"] = job.id
    st.rerun()


def attached_job_id() -> str | None:
    """The job of ``?heal=<id>`` (an invalid or stale link is reported, not raised); without one, the heal
    running now, so that a second tab or a page opened from the sidebar shows it."""
    job_id = st.query_params.get("heal")
    if job_id:
        try:
            heal_job_in_root(job_id, root())
        except UserError as err:
            st.warning(f"{err}: showing no heal")
            return None
        return job_id
    jobs = registry()
    running = jobs.running() or next((job.id for job in list_heal_jobs(root())[:5] if jobs.alive(job)), None)
    if running is not None:
        st.query_params["heal"] = running
    return running


def earlier_heals(current: str | None) -> None:
    """Every heal in the runs folder, to open one (its page is ``?heal=<id>``); the Runs page lists them too."""
    found = [job for job in list_heal_jobs(root()) if job.id != current]
    if not found:
        return
    with st.expander(f"Earlier heals ({len(found)})", expanded=current is None):
        by_id = {job.id: job for job in found}

        def label(job_id: str) -> str:
            job = by_id[job_id]
            done = "healed" if job.report() is not None else "not finished"
            return f"{job_id} · {job.out.name} · {done}"

        chosen = st.selectbox("Heal", list(by_id), key="heal_open_choice", format_func=label)
        if st.button("Open", key="heal_open", icon=":material/open_in_new:"):
            st.query_params["heal"] = chosen
            st.rerun()


def main() -> None:
    st.title("Heal")
    st.markdown("A short LoRA fine-tune lets a pruned model's kept units take over part of the removed ones' "
                "work; the adapters are then merged, so the healed folder has the pruned checkpoint's shapes and "
                "loads the same way. Stop saves the adapters and the optimiser; the same settings resume.")
    with shown_errors():
        job_id = attached_job_id()
        with st.expander("New heal", expanded=job_id is None):
            source, run_id = checkpoint_input()
            cfg = settings_form(source)
            out, overwrite, restart = output_input(source)
            st.caption("Equivalent command:")
            st.code(heal_command(source or "CHECKPOINT_DIR", out or "OUT", cfg, overwrite, restart), language="bash")
            if st.button("Start healing", type="primary", key="heal_start"):
                with shown_errors():
                    start(source, out, cfg, overwrite, restart, run_id)
        earlier_heals(job_id)
        if job_id is not None:
            heal_view(job_id)


main()
