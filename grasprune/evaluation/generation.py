"""Greedy text generation from a prompt: the same call for the dense and the pruned model."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """The greedy continuation of ``prompt`` (without the prompt)."""
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
