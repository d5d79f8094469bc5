"""Text generation from a prompt: the same call, with the same settings, for the dense, pruned and healed model.

The defaults are greedy decoding with a mild repetition penalty and no repeated 3-gram: a 135M model, and more
so a pruned one, falls into loops under plain greedy decoding ("the Strait of the Strait of ..."), because its
flattened next-token distribution keeps the same few tokens on top once they have appeared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from grasprune.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How each model continues the prompt: greedy at ``temperature`` 0, else sampled (nucleus ``top_p``, seeded)."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.15
    no_repeat_ngram: int = 3  # 0: off
    seed: int = 0

    def check(self) -> None:
        if not self.temperature >= 0 or not 0 < self.top_p <= 1 or not self.repetition_penalty >= 1 \
                or self.no_repeat_ngram < 0:
            raise UserError("generation settings out of range: --temperature 0 (greedy) or more, --top-p in (0, 1], "
                            "--repetition-penalty 1 (off) or more, --no-repeat-ngram 0 (off) or more")

    def key(self) -> str:
        """The settings as part of a stored result's key (a different setting is another result)."""
        return ",".join(f"{k}={v:g}" for k, v in asdict(self).items())


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 48, sampling: Sampling | None = None) -> str:
    """The continuation of ``prompt`` (without the prompt)."""
    import torch  # here: the CLI reads ``Sampling``'s defaults for its help without importing torch

    sampling = sampling or Sampling()
    sampling.check()
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = {"do_sample": sampling.temperature > 0, "repetition_penalty": sampling.repetition_penalty,
               "no_repeat_ngram_size": sampling.no_repeat_ngram}
    if sampling.temperature > 0:
        torch.manual_seed(sampling.seed)
        options.update(temperature=sampling.temperature, top_p=sampling.top_p)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **options)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
