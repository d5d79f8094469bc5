"""A heal's held-out text, and the adapters of the step that did best on it.

LoRA on a few hundred calibration blocks overfits them when it runs long (at keep 0.7 on SmolLM2, 15
minutes of CPU took WikiText-2 from 50.6 to 38.4 and 30 minutes back up to 48.8: docs/heal.md). So the heal
measures the loss on held-out blocks at the start, every ``holdout_every`` steps and at the end, keeps a
copy of the adapters wherever it is the lowest so far, and merges that copy: a longer heal can no longer
end worse than a shorter one, and never worse than the checkpoint it started from (step 0, the adapters'
B matrices still zero, is a candidate too).

The held-out blocks are by default the ``holdout_samples`` blocks right after the training ones in the
same text: the same domain, never trained on, and nothing else to configure.
"""

from __future__ import annotations

import math

import torch

from grasprune.config import HealConfig
from grasprune.data import calibration_blocks, text_blocks
from grasprune.errors import UserError


def heal_blocks(cfg: HealConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training blocks and the held-out ones (None when ``--holdout none``)."""
    if cfg.holdout_source is not None or not cfg.uses_holdout:  # the held-out text is not inside ``data``
        train = calibration_blocks(cfg.data, tokenizer, cfg.samples, cfg.block_len, samples_flag="--samples")
        held = None if cfg.holdout_source is None else calibration_blocks(
            cfg.holdout_source, tokenizer, cfg.holdout_samples, cfg.block_len, samples_flag="--holdout-samples")
        return train, held
    blocks = text_blocks(cfg.data, tokenizer, cfg.block_len)
    wanted = cfg.samples + cfg.holdout_samples
    if blocks.shape[0] < wanted:
        raise UserError(f"data '{cfg.data}' holds {blocks.shape[0]} blocks of {cfg.block_len} tokens, fewer than "
                        f"--samples {cfg.samples} plus --holdout-samples {cfg.holdout_samples} held out after them: "
                        "pass fewer samples, more text, --holdout with other text, or --holdout none")
    return blocks[:cfg.samples], blocks[cfg.samples:wanted]


def holdout_loss(model, blocks: torch.Tensor) -> float:
    """Mean next-token loss over the blocks (equal lengths: the per-token mean), without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(model(input_ids=b.unsqueeze(0), labels=b.unsqueeze(0), use_cache=False).loss.item()
                    for b in blocks)
    model.train(was_training)
    return total / blocks.shape[0]


class BestAdapters:
    """The held-out loss curve, and a copy of the adapters at its lowest point so far."""

    def __init__(self, blocks: torch.Tensor, every: int):
        self.blocks, self.every = blocks, every
        self.curve: list[list] = []  # [step, loss], in step order
        self.best_step: int | None = None
        self.best_loss = math.inf
        self.tensors: dict[str, torch.Tensor] = {}

    def due(self, step: int, last: bool) -> bool:
        measured = bool(self.curve) and self.curve[-1][0] == step
        return not measured and (last or step % self.every == 0)

    def measure(self, model, params: dict, step: int) -> float:
        loss = holdout_loss(model, self.blocks)
        self.curve.append([step, round(loss, 6)])
        if loss < self.best_loss:
            self.best_step, self.best_loss = step, loss
            self.tensors = {name: p.detach().clone() for name, p in params.items()}
        return loss

    def restore_best(self, params: dict) -> None:
        """The adapters of the best step put back (a no-op when the last step was the best)."""
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.tensors[name])

    def summary(self) -> dict:
        return {"best_step": self.best_step, "best_loss": round(self.best_loss, 6), "curve": self.curve}

    # saved with the heal's state, so a resumed heal knows the best step before it stopped
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        info = {"best_step": self.best_step, "best_loss": self.best_loss, "curve": self.curve}  # the loss unrounded
        return info, {f"best/{name}": t.contiguous() for name, t in self.tensors.items()}

    def load_state(self, info: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.curve, self.best_step = info["curve"], info["best_step"]
        self.best_loss = math.inf if self.best_step is None else info["best_loss"]
        self.tensors = {key.removeprefix("best/"): t for key, t in tensors.items() if key.startswith("best/")}
