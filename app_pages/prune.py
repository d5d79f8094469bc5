"""Prune: choose a model and a budget, start a background job, watch it live."""

from __future__ import annotations

import math

import streamlit as st
import torch

from grasprune.cli.command import prune_command
from grasprune.config import (
    DEFAULT_CALIB,
    DEFAULT_RESCALE,
    DEFAULT_VARIANT,
    DEVICE_MAPS,
    EXPERIMENTAL_VARIANTS,
    LAYER_MINIMUMS,
    METHODS,
    TIE_BREAKS,
    VARIANTS,
    PruneConfig,
    option_help,
)
from grasprune.errors import UserError
from grasprune.evaluation.perplexity import EVAL_DATASETS
from grasprune.method.budget import BudgetPreview
from grasprune.method.models import EMBEDDED_ALIAS
from grasprune.runs.inputs import check_inputs
from grasprune.runs.store import create_run
from studio.common import attach, attached_run_id, cached_preview, jobs, root, shown_errors
from studio.defaults import QUICK
from studio.estimates import expected_duration_caption
from studio.live import live_view
from studio.placement import placement_panel

STEP = 0.01
ALIGNS = (1, 8, 16, 32, 64, 128, 256)  # FFN channels per layer kept in multiples of this (1 = off)
MAX_KEEP = 0.99  # a keep ratio of 1 prunes nothing (PruneConfig refuses it)
CALIB_CHOICES = {DEFAULT_CALIB: "WikiText-2 (first half)", "c4": "C4 sample", "ptb": "PTB",
                 "custom": "A file or dataset id…"}


def devices() -> list[str]:
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def budget_panel(spec: str, keep_ratio: float, align: int = 1) -> BudgetPreview | None:
    found, error = cached_preview(spec)
    if error:
        st.error(error)
        return None
    found = found.aligned(align)
    try:
        found.check(keep_ratio)
    except UserError as err:
        st.error(str(err))
        return found
    s = found.summary(keep_ratio)
    cols = st.columns(3)
    cols[0].metric("Removed of prunable", f"{s['removed_pct_of_prunable']:.1f}%")
    cols[1].metric("Removed of all parameters", f"{s['removed_pct_of_total']:.1f}%")
    cols[2].metric("Parameters after (at most)", f"{s['total_after'] / 1e6:,.2f} M",
                   delta=f"-{s['removed_params'] / 1e6:,.2f} M", delta_color="off")
    st.caption(f"{found.total_params:,} parameters, {found.prunable_params:,} prunable (FFN channels and KV groups "
               f"of {found.num_layers} layers); the smallest keep ratio this model allows is "
               f"{found.minimum_keep_ratio:.4f}.")
    return found


def lowest_keep_ratio(spec: str, align: int = 1) -> float:
    """The model's minimum keep ratio (at this FFN alignment) rounded up to the slider's step (the smallest
    step for a model whose config cannot be read: the budget panel says why)."""
    found, _ = cached_preview(spec)
    if found is None:
        return STEP
    found = found.aligned(align)
    steps = max(1, math.ceil(found.minimum_keep_ratio / STEP - 1e-9))
    if found.budget(steps * STEP) < found.minimum_params:
        steps += 1  # the float product rounded the budget below the minimum
    # a slider needs min < max; above that the budget panel says the model cannot be pruned
    return round(min(steps * STEP, MAX_KEEP - STEP), 2)


def keep_ratio_key(lowest: float) -> str:
    """The slider's session key, its value set in the session: the quick default on the first visit, a value
    from an earlier model raised to this model's lowest (a slider refuses a value under its minimum)."""
    key = "prune_keep_ratio"
    value = st.session_state.get(key, QUICK["keep_ratio"])
    st.session_state[key] = min(max(value, lowest), MAX_KEEP)
    return key


def config_form() -> PruneConfig:
    left, right = st.columns([3, 2])
    with left:
        model = st.text_input("Model", value=EMBEDDED_ALIAS, key="prune_model",
                              help=option_help("model")).strip()
        align = int(st.session_state.get("prune_align", 1))  # its widget is further down, in the advanced settings
        lowest = lowest_keep_ratio(model, align)
        keep_ratio = st.slider("Keep ratio (fraction of prunable parameters kept)", lowest, MAX_KEEP,
                               step=STEP, key=keep_ratio_key(lowest),
                               help="1 would keep everything and prune nothing; the lowest value is the "
                                    "smallest this model allows (one FFN channel and one KV group per layer)")
        budget_panel(model, keep_ratio, align)
        duration_slot = st.container()  # filled once every setting is read
    with right:
        choice = st.selectbox("Calibration data", list(CALIB_CHOICES), format_func=CALIB_CHOICES.get,
                              key="prune_calib_choice")
        calib = (st.text_input("Calibration file or dataset id", key="prune_calib_custom",
                               placeholder="/path/to/text.txt, data.jsonl, owner/name").strip()
                 if choice == "custom" else choice)
        c1, c2 = st.columns(2)
        samples = c1.number_input("Samples", 1, 100_000, QUICK["calib_samples"], key="prune_samples")
        block_len = c2.number_input("Block length (tokens)", 2, 32_768, QUICK["block_len"], key="prune_block_len")
        epochs = c1.number_input("Epochs", 1, 100, QUICK["epochs"], key="prune_epochs")
        seed = c2.number_input("Seed", 0, 2**31 - 1, 0, key="prune_seed")
        device = c1.selectbox("Device", devices(), key="prune_device")
        rescale_samples = c2.number_input("Scale-calibration samples", 1, 100_000, QUICK["rescale_samples"],
                                          key="prune_rescale_samples")
    with st.expander("Evaluation and advanced settings"):
        a1, a2, a3 = st.columns(3)
        eval_datasets = a1.multiselect("Perplexity after export", list(EVAL_DATASETS), ["wikitext2"],
                                       key="prune_eval")
        eval_seqlen = a2.number_input("Eval seqlen", 2, 32_768, QUICK["eval_seqlen"], key="prune_eval_seqlen")
        eval_windows = a3.number_input("Eval windows", 1, 100_000, QUICK["eval_windows"], key="prune_eval_windows")
        eval_dense = a1.checkbox("Dense perplexity beside it", True, key="prune_eval_dense",
                                 help="Also measures the unpruned model at the same settings, once per model and "
                                      "settings (then cached), so the pruned figure has a reference: unchecked is "
                                      "`--no-eval-dense`")
        rescale_data = a1.text_input("Scale-calibration data", DEFAULT_RESCALE, key="prune_rescale_data").strip()
        checkpoint_every = a2.number_input("Checkpoint every (steps)", 1, 100_000, QUICK["checkpoint_every"],
                                           key="prune_checkpoint_every")
        dtype = a3.selectbox("Backbone precision", ["auto", "bf16", "fp32"], key="prune_dtype")
        method = a1.selectbox("Method", METHODS, key="prune_method", help=option_help("method"))
        variants = [v for v in VARIANTS if v not in EXPERIMENTAL_VARIANTS]  # the CLI has the rest (--experimental)
        variant = a2.selectbox("Gate-training variant", variants, variants.index(DEFAULT_VARIANT),
                               key="prune_variant", help=option_help("variant"))
        a2.selectbox("FFN channel alignment", ALIGNS, key="prune_align",
                     format_func=lambda n: "off" if n == 1 else f"multiples of {n}",
                     help=option_help("align"))
        tie_break = a3.selectbox("Tie-break", [None, *TIE_BREAKS], key="prune_tie_break",
                                 format_func=lambda v: v or "the variant's", help=option_help("tie_break"))
        layer_minimum = a3.selectbox("Layer minimum", [None, *LAYER_MINIMUMS], key="prune_layer_minimum",
                                     format_func=lambda v: v or "the variant's", help=option_help("layer_minimum"))
        trust_remote_code = a3.checkbox("Trust remote code", False, key="prune_trust_remote_code",
                                        help=option_help("trust_remote_code"))
        device_map = device_map_input(a1)
    config = PruneConfig(model=model, align=align, method=method, variant=variant, tie_break=tie_break,
                         layer_minimum=layer_minimum, trust_remote_code=trust_remote_code,
                         keep_ratio=float(keep_ratio), calib_data=calib, calib_samples=int(samples),
                         block_len=int(block_len), epochs=int(epochs), rescale_data=rescale_data,
                         rescale_samples=int(rescale_samples), seed=int(seed), device=device, dtype=dtype,
                         checkpoint_every=int(checkpoint_every), eval_datasets=list(eval_datasets),
                         eval_seqlen=int(eval_seqlen), eval_windows=int(eval_windows), eval_dense=eval_dense,
                         device_map=device_map)
    with duration_slot:
        expected_duration_caption(config)
    return config


def device_map_input(column) -> str | None:
    """accelerate's placement over several GPUs (CPU offload where they are full), or a JSON map file."""
    choices = ["one device", *DEVICE_MAPS, "JSON file…"]
    choice = column.selectbox("Device map", choices, key="prune_device_map",
                              help=option_help("device_map"))
    if choice == "JSON file…":
        return column.text_input("Device map file", key="prune_device_map_file",
                                 placeholder="/path/to/map.json").strip() or None
    return None if choice == "one device" else choice


def start(config: PruneConfig) -> None:
    """Everything the job would refuse is refused before the run exists, with the CLI's one-line message.
    Model and data paths are the user's own files (the studio binds to localhost): resolved and checked,
    never served."""
    check_inputs(config)
    run = create_run(config, root())
    jobs().submit(run, root())
    attach(run.id)
    st.rerun()


def main() -> None:
    st.title("Prune")
    run_id = attached_run_id()
    with st.expander("New run", expanded=run_id is None):
        config = config_form()
        st.caption("Equivalent command:")
        st.code(prune_command(config), language="bash")
        if st.button("Start pruning", type="primary", key="prune_start"):
            with shown_errors():
                start(config)
    if run_id is not None:
        live_view(run_id)
        placement_panel(run_id)


main()
