"""Healing a pruned checkpoint: LoRA on calibration text, merged back into the same checkpoint format.

Pruning removes units; a short low-rank fine-tune lets the kept ones take over some of their work
(LLM-Pruner's recovery stage; Minitron's distillation when ``distill`` > 0, with the dense base model as
the teacher). The backbone stays frozen: only LoRA adapters (peft) on the attention and MLP linears
learn, with AdamW at a constant learning rate, one calibration block per step, the data order a
permutation per (seed, epoch) as in gate training. At the end the adapters are merged into the weights,
so the healed checkpoint has exactly the source's shapes, files and loading paths: those of the step with
the lowest loss on held-out text (``heal_holdout``), so a long heal that overfits its calibration blocks
gives back its best step, not its last.

Stopping is safe: every ``checkpoint_every`` steps and on stop, the adapters, the optimiser state and
the step are written atomically to a state folder beside the output; the same command resumes there
and finishes bit for bit as an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grasprune.atomic import write_atomic, write_folder_atomic, write_json_atomic
from grasprune.config import HealConfig
from grasprune.data import check_sources
from grasprune.errors import Stopped, UserError
from grasprune.events import Emit, no_events
from grasprune.method.export import checked_pruned_folder, load_pruned
from grasprune.method.heal_holdout import BestAdapters, heal_blocks
from grasprune.method.train import epoch_order

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def state_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.heal-state"


def with_lora(model, cfg: HealConfig):
    """``model`` frozen, with LoRA adapters (B = 0: the start is the checkpoint itself) on its linears."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none", target_modules=list(LINEARS))
    torch.manual_seed(cfg.seed)  # the A matrices' initialisation
    return get_peft_model(model, lora)


def adapter_tensors(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def heal_loss(model, block: torch.Tensor, teacher, distill: float) -> torch.Tensor:
    """Next-token cross-entropy, mixed with the KL divergence to the teacher's distribution."""
    ids = block.unsqueeze(0)
    if teacher is None or distill == 0:
        return model(input_ids=ids, labels=ids, use_cache=False).loss
    logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
    with torch.no_grad():
        target = torch.log_softmax(teacher(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
    ce = torch.nn.functional.nll_loss(logprobs, ids[0, 1:])
    kl = torch.nn.functional.kl_div(logprobs, target, log_target=True, reduction="batchmean")
    return (1 - distill) * ce + distill * kl


class HealState:
    """The adapters, AdamW's moments and the step, saved and restored atomically."""

    def __init__(self, folder: Path, cfg: HealConfig):
        self.folder, self.cfg = folder, cfg

    def save(self, params: dict, optimizer, step: int, elapsed: float, best: BestAdapters | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"param/{k}": v.detach().contiguous() for k, v in params.items()}
        for name, p in params.items():
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"{key}/{name}"] = value.contiguous()
        info = {"step": step, "elapsed_s": elapsed, "settings": self.cfg.identity()}
        if best is not None:
            info["holdout"], best_tensors = best.state()
            tensors.update(best_tensors)
        write_atomic(self.folder / "state.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        write_json_atomic(self.folder / "state.json", info)

    def saved(self) -> dict | None:
        """The saved step, time and settings (None before the first save); refused if of other settings."""
        info_path = self.folder / "state.json"
        if not info_path.is_file():
            return None
        info = json.loads(info_path.read_text())
        if info["settings"] != self.cfg.identity():
            raise UserError(f"{self.folder} holds a heal of other settings: pass the same settings to resume, or "
                            "--restart to discard it")
        return info

    def restore(self, params: dict, optimizer, best: BestAdapters | None = None) -> tuple[int, float]:
        info = self.saved()
        if info is None:
            return 0, 0.0
        tensors = load_file(str(self.folder / "state.safetensors"))
        if best is not None and "holdout" in info:
            best.load_state(info["holdout"], tensors)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[f"param/{name}"])
                if f"exp_avg/{name}" in tensors:
                    optimizer.state[p] = {key: tensors[f"{key}/{name}"] for key in ("step", "exp_avg", "exp_avg_sq")}
        return info["step"], info["elapsed_s"]


def check_heal(source: str | Path, out: str | Path, cfg: HealConfig, overwrite: bool = False,
               restart: bool = False) -> tuple[Path, Path]:
    """Everything a heal refuses before it loads a model, each in one line: the settings, the checkpoint, the
    output folder, the training text and a saved state of other settings. Returns ``(source, out)`` resolved."""
    cfg.validate()
    source, out = checked_pruned_folder(source), Path(out).expanduser().resolve()
    if out == source:
        raise UserError("--out must be another folder than the checkpoint being healed")
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} exists: pass --overwrite or another --out")
    if not restart:
        HealState(state_folder(out), cfg).saved()
    check_sources([cfg.data] + ([cfg.holdout_source] if cfg.holdout_source else []), cfg.eval_datasets)
    return source, out


def heal(source: str | Path, out: str | Path, cfg: HealConfig, emit: Emit = no_events,
         stop: threading.Event | None = None, overwrite: bool = False, restart: bool = False) -> dict:
    """Heal the checkpoint at ``source`` into ``out``; return the report written into its grasprune.json.

    ``emit`` gets the events a run's log has (``phase`` loading, healing, merging; ``step`` with the loss and
    the training time so far; ``holdout`` with the held-out loss and the best step so far; ``stopped``;
    ``done`` with the step merged): ``grasprune heal --events FILE`` appends them to FILE."""
    source, out = check_heal(source, out, cfg, overwrite, restart)
    state = HealState(state_folder(out), cfg)
    if restart:
        shutil.rmtree(state.folder, ignore_errors=True)
    emit("phase", phase="loading")
    model, tokenizer = load_pruned(source, dtype=torch.float32)
    blocks, held_out = heal_blocks(cfg, tokenizer)
    best = None if held_out is None else BestAdapters(held_out, cfg.holdout_every)
    teacher = dense_teacher(source) if cfg.distill > 0 else None
    peft_model = with_lora(model, cfg)
    params = adapter_tensors(peft_model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    step, elapsed = state.restore(params, optimizer, best)
    emit("phase", phase="healing", total=cfg.steps, resumed_at=step)
    losses, done = train_adapters(peft_model, blocks, teacher, optimizer, params, state, cfg, step, elapsed, emit, stop,
                                  best=best)
    emit("phase", phase="merging")
    if best is not None:
        best.restore_best(params)
    merged = peft_model.merge_and_unload()
    report = heal_report(source, cfg, done, losses, best)
    write_folder_atomic(out, lambda tmp: write_healed(source, tmp, merged, report), overwrite=True)
    shutil.rmtree(state.folder, ignore_errors=True)
    emit("done", out=str(out), steps=done["steps"], elapsed_s=done["elapsed_s"], merged_step=report["heal"]["merged_step"])
    return report


def train_adapters(model, blocks, teacher, optimizer, params, state: HealState, cfg: HealConfig, step: int,
                   elapsed: float, emit: Emit, stop, best: BestAdapters | None = None) -> tuple[list[float], dict]:
    """The training loop from ``step``; returns the losses of this call and what was done in total. With
    ``best``, the held-out loss is measured at the start, every ``holdout_every`` steps and at the end (the
    time it takes counts as training time: ``--minutes`` bounds the whole heal)."""
    losses: list[float] = []
    started = time.perf_counter() - elapsed
    if best is not None and step == 0:
        measure_holdout(model, params, best, 0, emit)
    model.train()
    while step < cfg.steps:
        epoch, index = divmod(step, blocks.shape[0])
        block = blocks[epoch_order(cfg.seed, epoch, blocks.shape[0])[index]]
        loss = heal_loss(model, block, teacher, cfg.distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        spent = time.perf_counter() - started
        emit("step", phase="healing", step=step, total=cfg.steps, loss=round(losses[-1], 5), elapsed_s=round(spent, 2))
        out_of_time = cfg.minutes is not None and spent >= 60 * cfg.minutes
        if best is not None and best.due(step, last=out_of_time or step == cfg.steps):
            measure_holdout(model, params, best, step, emit)
        if step % cfg.checkpoint_every == 0 or (stop is not None and stop.is_set()):
            state.save(params, optimizer, step, spent, best)
        if stop is not None and stop.is_set():
            emit("stopped", phase="healing", step=step, total=cfg.steps)
            raise Stopped(f"stopped during healing at step {step} of {cfg.steps}")
        if out_of_time:
            break
    model.eval()
    return losses, {"steps": step, "elapsed_s": round(time.perf_counter() - started, 2)}


def measure_holdout(model, params: dict, best: BestAdapters, step: int, emit: Emit) -> None:
    loss = best.measure(model, params, step)
    emit("holdout", phase="healing", step=step, loss=round(loss, 5), best_step=best.best_step,
         best_loss=round(best.best_loss, 5))


def dense_teacher(source: Path):
    """The checkpoint's base model (its grasprune.json names it), frozen, in fp32."""
    from grasprune.method.models import load_model

    base = json.loads((source / "grasprune.json").read_text()).get("base_model")
    if not base:
        raise UserError(f"{source}/grasprune.json names no base model: heal without --distill")
    teacher, _ = load_model(base, dtype=torch.float32)
    return teacher.requires_grad_(False).eval()


def heal_report(source: Path, cfg: HealConfig, done: dict, losses: list[float], best: BestAdapters | None) -> dict:
    """The source's report with a ``heal`` section: the steps trained, the step merged (the best held-out one,
    or the last without held-out text) and the held-out curve."""
    report = json.loads((source / "grasprune.json").read_text())
    report["heal"] = {"source": str(source), "settings": dataclasses.asdict(cfg), **done,
                      "merged_step": done["steps"] if best is None else best.best_step,
                      "last_losses": [round(x, 5) for x in losses[-10:]]}
    if best is not None:
        report["heal"]["holdout"] = best.summary()
    report["metrics"] = {}  # the source's figures are not this model's
    return report


def write_healed(source: Path, folder: Path, merged, report: dict) -> None:
    """The source folder's files, with the merged weights (in the source's dtype) and the new report."""
    dtype = next(iter(load_file(str(source / "model.safetensors")).values())).dtype
    tied = getattr(merged.config, "tie_word_embeddings", False)
    state = {k: v.detach().to(dtype).contiguous() for k, v in merged.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    for path in source.iterdir():
        if path.is_file() and path.name not in ("model.safetensors", "grasprune.json"):
            shutil.copyfile(path, folder / path.name)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "grasprune.json").write_text(json.dumps(report, indent=2) + "\n")
