"""The whole prune: load, importance, gate training, scale calibration, export, evaluation, emitting events.

``prune_run`` is the one library call behind the CLI and the app. It resumes from the run folder's
checkpoints when they exist (each phase is skipped once its result is on disk).
"""

from __future__ import annotations

import threading
import time

import torch
from safetensors.torch import load_file, save_file

from grasprune.atomic import write_atomic, write_json_atomic
from grasprune.config import WEIGHT_FREE_INITS, PruneConfig
from grasprune.data import calibration_blocks
from grasprune.errors import UserError
from grasprune.evaluation.dense_reference import dense_perplexities
from grasprune.evaluation.perplexity import PerplexityResult, perplexity
from grasprune.method.adapters import ModelAdapter
from grasprune.method.collectives import world
from grasprune.method.export import load_pruned, save_pruned, sliced_model
from grasprune.method.gates import Gates
from grasprune.method.train import (
    LoopConfig,
    Stopped,
    calibrate_scales,
    gate_probs,
    scores_from_importance,
    teacher_for,
    train_gates,
)
from grasprune.method.units import UnitLayout, layout_of, project
from grasprune.runs import evaluations
from grasprune.runs.store import Run
from grasprune.scaleout.placement import load_for_training


def parameter_report(layout: UnitLayout, mask: torch.Tensor, total_before: int) -> dict:
    prunable_before = layout.prunable_params
    prunable_after = layout.kept_params(mask)
    total_after = total_before - (prunable_before - prunable_after)
    return {
        "total_before": total_before,
        "total_after": total_after,
        "prunable_before": prunable_before,
        "prunable_after": prunable_after,
        "removed_pct_of_prunable": round(100 * (1 - prunable_after / prunable_before), 3),
        "removed_pct_of_total": round(100 * (total_before - total_after) / total_before, 3),
    }


def layer_report(layout: UnitLayout, mask: torch.Tensor) -> list[dict]:
    ffn, kv = layout.kept_counts(mask)
    return [
        {"layer": i, "ffn_channels": f, "kv_groups": k, "q_heads": k * layout.group_size,
         "ffn_channels_before": s.ffn_channels, "kv_groups_before": s.kv_groups}
        for i, (f, k, s) in enumerate(zip(ffn, kv, layout.shapes, strict=True))
    ]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_run(run: Run, stop: threading.Event | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) the prune described by ``run``'s config; return the report."""
    config = run.config().resolved()
    emit = run.event_log().emit
    run.set_status("running")
    try:
        report = _prune(config, run, emit, stop, overwrite)
    except Stopped as err:
        run.set_status("stopped", message=str(err))
        raise
    except Exception as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        emit("error", message=message, kind=type(err).__name__)
        run.set_status("failed", message=message)
        raise
    run.set_status("completed")
    return report


def _prune(config: PruneConfig, run: Run, emit, stop, overwrite: bool) -> dict:
    timing: dict[str, float] = {}
    out_dir = run.output_dir()
    if out_dir.exists() and not overwrite and not run.report_path.exists():
        raise UserError(f"output folder {out_dir} exists: pass --overwrite or another --out")
    emit("phase", phase="loading", config=config.to_dict())
    started = time.perf_counter()
    placed = load_for_training(config)  # frozen, in the training dtype, on its device(s)
    model, tokenizer = placed.model, placed.tokenizer
    total_before = count_parameters(model)
    adapter = ModelAdapter(model)
    layout = layout_of(adapter)
    budget = layout.budget(config.keep_ratio)
    rule = projection_rule(config)
    project(torch.zeros(layout.num_units), layout, budget, **rule)  # fails early on an impossible budget
    calib = calibration_blocks(config.calib_data, tokenizer, config.calib_samples, config.block_len)
    rescale = (calibration_blocks(config.rescale_data, tokenizer, config.rescale_samples, config.block_len,
                                  samples_flag="--rescale-samples") if config.rescale_epochs > 0 else None)
    timing["load_s"] = round(time.perf_counter() - started, 2)
    emit("model", total_params=total_before, prunable_params=layout.prunable_params, budget=budget,
         layers=layout.to_json()["layers"], group_size=layout.group_size)
    emit("placement", **placed.describe())

    gates = Gates(adapter, layout)
    scores = _gate_phase(config, run, model, gates, layout, calib, budget, emit, stop, timing)
    ranking = gate_probs(scores.float().cpu(), config.tau) if config.method == "grasprune" else scores.float().cpu()
    mask = project(ranking, layout, budget, **rule)
    write_atomic(run.scores_path, lambda tmp: save_file({"scores": scores.cpu(), "mask": mask}, str(tmp)))
    gamma = _scale_phase(config, run, model, gates, layout, mask, rescale, adapter, emit, stop, timing)
    gates.remove()
    write_atomic(run.gamma_path, lambda tmp: save_file({"gamma": gamma.contiguous()}, str(tmp)))
    emit("placement", **placed.describe())  # now with the training's peak memory per device
    if not world().is_main:
        return {}  # under torchrun, rank 0 alone exports and evaluates

    emit("phase", phase="export")
    started = time.perf_counter()
    adapter = ModelAdapter(placed.export_model())  # the checkpoint's own weights and precision, on the CPU
    report = {
        "base_model": config.model,
        "method": config.method,
        "keep_ratio": config.keep_ratio,
        "budget": budget,
        "align": config.align,
        "tie_break": config.tie_break,
        "layer_minimum": config.layer_minimum,
        "params": parameter_report(layout, mask, total_before),
        "layers": layer_report(layout, mask),
        "mask": {"ffn": [m.nonzero().flatten().tolist() for m, _ in layout.split(mask)],
                 "kv": [m.nonzero().flatten().tolist() for _, m in layout.split(mask)]},
        "calibration": {k: getattr(config, k) for k in ("calib_data", "calib_samples", "block_len", "epochs",
                                                         "rescale_data", "rescale_samples", "rescale_epochs",
                                                         "variant", "score_init", "init_strength", "lr", "tau", "tau_end", "warmup",
                                                         "distill", "seed", "dtype", "device")},
        "config": config.to_dict(),
        "timing": timing,
        "metrics": {},
    }
    save_pruned(out_dir, adapter, layout, mask, gamma, tokenizer, report, overwrite=True)
    timing["export_s"] = round(time.perf_counter() - started, 2)
    write_json_atomic(run.mask_path, report["mask"])
    _evaluate_phase(config, run, out_dir, report, emit)
    write_json_atomic(out_dir / "grasprune.json", report)
    write_json_atomic(run.report_path, report)
    emit("done", params=report["params"], metrics=report["metrics"], timing=timing, out=str(out_dir))
    return report


def projection_rule(config: PruneConfig) -> dict:
    """``units.project``'s options as the (resolved) config sets them."""
    return {"align": config.align, "tie_break": config.tie_break, "layer_minimum": config.layer_minimum}


def _gate_phase(config, run, model, gates, layout, calib, budget, emit, stop, timing) -> torch.Tensor:
    """Scores whose projection is the mask: learned gates, or a baseline's one-shot importance."""
    if run.scores_path.is_file():
        return load_file(str(run.scores_path))["scores"]
    started = time.perf_counter()
    if config.method != "grasprune":
        scores = _importance(config.method, config, model, gates, layout, calib, emit)
        timing["importance_s"] = round(time.perf_counter() - started, 2)
        return scores
    init = None
    loop = LoopConfig(epochs=config.epochs, lr=config.lr, tau=config.tau, seed=config.seed,
                      checkpoint_every=config.checkpoint_every, tau_end=config.tau_end, warmup=config.warmup,
                      distill=config.distill, distill_topk=config.distill_topk,
                      batch_blocks=config.batch_blocks, teacher_cache_mb=_teacher_cache_mb(config),
                      compile=config.compile, second_moment=config.second_moment, **projection_rule(config))
    start = config.score_init != "zero" and not run.gates_checkpoint.is_file()  # a resumed run restores its scores
    teacher = teacher_for(loop, None, prefilled=start)  # made here so that the importance pass can fill it
    if start:
        record = teacher.record if teacher is not None else None
        importance = _importance(config.score_init, config, model, gates, layout, calib, emit, record)
        init = scores_from_importance(importance, layout, config.tau * config.init_strength)
    emit("phase", phase="gate_training", total=config.epochs * -(-calib.shape[0] // config.batch_blocks))
    scores = train_gates(model, gates, layout, calib, budget, loop, emit, stop, run.gates_checkpoint, init, teacher)
    timing["gate_training_s"] = round(time.perf_counter() - started, 2)
    return scores


def _teacher_cache_mb(config: PruneConfig) -> int:
    """Memory for kept dense logits in either loop; none under FSDP, where a forward is collective and
    every rank must run the same ones (a cache hit on one rank and a miss on another would hang)."""
    return 0 if config.fsdp else config.teacher_cache_mb


def _importance(name: str, config, model, gates, layout, calib, emit, on_logits=None) -> torch.Tensor:
    """One-shot per-unit importance: a baseline's ranking, or the start of the gate scores."""
    from grasprune.method.baselines import CALIBRATION_PASSES, unit_importance

    if name not in WEIGHT_FREE_INITS and any(p.device.type == "meta" for p in model.parameters()):
        what = f"--method {name}" if config.method != "grasprune" else f"--score-init {name}"
        raise UserError(f"{what} reads whole weight matrices, but the device map keeps some on disk: map every "
                        "layer to a GPU or 'cpu', or train gates from tied scores (--method grasprune "
                        "--score-init zero)")
    emit("phase", phase="importance", total=calib.shape[0] if CALIBRATION_PASSES.get(name) else None)
    return unit_importance(name, model, gates.adapter, layout, calib, seed=config.seed, on_logits=on_logits,
                           progress=lambda done, total: emit("progress", phase="importance", done=done, total=total))


def _scale_phase(config, run, model, gates, layout, mask, rescale, adapter, emit, stop, timing) -> torch.Tensor:
    if rescale is None:
        timing["rescale_s"] = 0.0
        return torch.ones(layout.num_units)
    steps = config.rescale_epochs * -(-rescale.shape[0] // config.batch_blocks)
    emit("phase", phase="scale_calibration", total=steps)
    started = time.perf_counter()
    loop = LoopConfig(epochs=config.rescale_epochs, lr=config.rescale_lr, seed=config.seed + 1,
                      checkpoint_every=config.checkpoint_every, distill=config.rescale_distill,
                      distill_topk=config.distill_topk, batch_blocks=config.batch_blocks,
                      teacher_cache_mb=_teacher_cache_mb(config), compile=config.compile)
    student = _sliced_student(config, adapter, layout, mask)
    try:
        gamma = calibrate_scales(model, gates, layout, mask, rescale, loop, adapter.family.scale_keys, emit, stop,
                                 run.scales_checkpoint, student)
    finally:
        if student is not None:
            student[1].remove()
    timing["rescale_s"] = round(time.perf_counter() - started, 2)
    return gamma.cpu()


def _sliced_student(config: PruneConfig, adapter: ModelAdapter, layout: UnitLayout, mask: torch.Tensor):
    """The model cut to its mask, with gates of its own, for the scale calibration: on one device only
    (a device map or FSDP shards would have to be rebuilt for it; there the gated full model is used)."""
    if config.fsdp or config.device_map:
        return None
    student = sliced_model(adapter, layout, mask)
    student_adapter = ModelAdapter(student)
    return student, Gates(student_adapter, layout_of(student_adapter))


def _evaluate_phase(config: PruneConfig, run: Run, out_dir, report: dict, emit) -> None:
    if not config.eval_datasets:
        return
    emit("phase", phase="evaluation")
    started = time.perf_counter()
    model, tokenizer = load_pruned(out_dir, device=config.device)
    if count_parameters(model) != report["params"]["total_after"]:
        raise RuntimeError("exported model's parameter count differs from the report")
    dtype = next(model.parameters()).dtype
    for dataset in config.eval_datasets:
        result = perplexity(model, tokenizer, dataset, config.eval_seqlen, config.eval_windows,
                            progress=lambda w, n, d=dataset: emit("eval_progress", dataset=d, window=w, total=n))
        report["metrics"][f"ppl_{dataset}"] = result.to_json()
        evaluations.record(run, _evaluation_key("pruned", config, result), result.to_json())
        emit("metric", **result.to_json())
    report["timing"]["eval_s"] = round(time.perf_counter() - started, 2)
    del model
    if config.eval_dense:
        _dense_phase(config, run, dtype, report, emit)


def _dense_phase(config: PruneConfig, run: Run, dtype: torch.dtype, report: dict, emit) -> None:
    """The base model's perplexity at the pruned one's settings and precision, beside it in the report."""
    started = time.perf_counter()
    try:
        measured = dense_perplexities(config, dtype, emit)
    except torch.OutOfMemoryError:  # the pruned checkpoint fits where its dense model may not: keep the run
        emit("dense_skipped", message=f"the dense model does not fit on {config.device} for its perplexity: "
                                      "the pruned figure stands alone (--no-eval-dense skips the attempt)")
        return
    for dataset, (result, cached) in measured.items():
        report["metrics"][f"ppl_{dataset}"]["dense_ppl"] = result.ppl
        evaluations.record(run, _evaluation_key("dense", config, result), result.to_json())
        emit("dense_metric", **result.to_json(), cached=cached)
    report["timing"]["dense_eval_s"] = round(time.perf_counter() - started, 2)


def _evaluation_key(role: str, config: PruneConfig, result: PerplexityResult) -> str:
    """The Evaluate page's key for this result: the windows asked for (all of them: those scored)."""
    windows = result.windows if config.eval_windows is None else config.eval_windows
    return evaluations.ppl_key(role, result.dataset, result.seqlen, windows)
