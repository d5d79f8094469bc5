"""Gates on a frozen model: multiply each FFN channel and each KV group by a per-unit factor.

Forward hooks apply the factors, so the Hugging Face modeling code is untouched:
FFN ``down_proj(act(gate(x)) * up(x) * z)`` (a pre-hook on ``down_proj``); a KV factor multiplies
both the keys (after ``k_norm`` where the family has one) and the values of its group. A group with
factor 0 has all-zero keys over all-zero values, so its heads output exactly zero and the gated model
equals the sliced one.

Under a device map each layer's factors are placed on that layer's execution device (its slice of the
flat vector is copied there, differentiably), so the hooks multiply on the activations' own device.
"""

from __future__ import annotations

import torch

from grasprune.method.adapters import ModelAdapter
from grasprune.method.devices import execution_device
from grasprune.method.units import UnitLayout


class Gates:
    """Attach once, then ``set(factors)`` before each forward pass; ``remove()`` restores the model."""

    def __init__(self, adapter: ModelAdapter, layout: UnitLayout):
        self.adapter = adapter
        self.layout = layout
        self.head_dim = adapter.head_dim
        self._ffn: list[torch.Tensor | None] = [None] * layout.num_layers
        self._kv: list[torch.Tensor | None] = [None] * layout.num_layers
        self._key: list[torch.Tensor | None] = [None] * layout.num_layers
        self._handles = []
        fallback = next(adapter.model.parameters()).device
        self.devices = [execution_device(layer, fallback) for layer in adapter.model.model.layers]
        self.dtype = adapter.views[0].down.weight.dtype if adapter.views else torch.float32
        for i, view in enumerate(adapter.views):
            self._handles.append(view.down.register_forward_pre_hook(self._ffn_hook(i)))
            self._handles.append(view.key_output.register_forward_hook(self._kv_hook(self._key, i)))
            self._handles.append(view.v.register_forward_hook(self._kv_hook(self._kv, i)))

    def set(self, factors: torch.Tensor | None, key_factors: torch.Tensor | None = None) -> None:
        """Per-unit factors (flat, ``layout`` order); ``None`` turns the gates off.

        ``key_factors`` (default: ``factors``) lets the keys get the mask without a scale, for
        families whose key norm would divide a scale away (see ``Family.scale_keys``).
        """
        if factors is None:
            for slots in (self._ffn, self._kv, self._key):
                slots[:] = [None] * self.layout.num_layers
            return
        parts = self.layout.split(factors)
        key_parts = parts if key_factors is None else self.layout.split(key_factors)
        self._ffn[:] = self._per_layer([ffn for ffn, _ in parts])
        self._kv[:] = self._per_layer(self._per_column(parts))
        self._key[:] = self._per_layer(self._per_column(key_parts))

    def _per_column(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Each layer's KV factors repeated over the head dimension (one factor per key/value column)."""
        return [kv.repeat_interleave(self.head_dim) for _, kv in parts]

    def _per_layer(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """The layers' factors on their devices, in their activations' dtype.

        One dtype conversion for the whole vector instead of one per layer and hook call (a bf16 model
        had ~90 conversions forward and backward per step); the values, and the gradients reaching the
        scores, are bit for bit those of converting each slice on its own."""
        if len(set(self.devices)) > 1 or not parts:
            return [part.to(device, self.dtype) for part, device in zip(parts, self.devices)]
        whole = torch.cat(parts).to(self.devices[0], self.dtype)
        return list(torch.split(whole, [part.numel() for part in parts]))

    def snapshot(self) -> tuple[list, list, list]:
        return list(self._ffn), list(self._kv), list(self._key)

    def restore(self, saved: tuple[list, list, list]) -> None:
        self._ffn[:], self._kv[:], self._key[:] = saved

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def _ffn_hook(self, layer: int):
        def hook(module, args):
            z = self._ffn[layer]
            if z is None:
                return None
            return (args[0] * z.to(args[0].device, args[0].dtype),) + tuple(args[1:])

        return hook

    def _kv_hook(self, slots: list, layer: int):
        def hook(module, args, output):
            z = slots[layer]
            if z is None:
                return None
            z = z.to(output.device, output.dtype)
            if output.shape[-1] == z.numel():  # k_proj / v_proj output: (..., groups * head_dim)
                return output * z
            # k_norm output: (..., groups, head_dim)
            return output * z.view(-1, self.head_dim)

        return hook
