"""Exponential moving average (EMA) of a model's weights, the weights diffusion models are sampled with.

Update n (n = 1, 2, ...) sets  ema <- decay_n * ema + (1 - decay_n) * param  for every trainable parameter, with
- fixed decay: decay_n = `decay`;
- power warm-up (`power` given; Karras/crowsonkb, used by Diffusion Policy with power 0.75):
  decay_n = clip(1 - (1 + k / inv_gamma) ** -power, min_decay, max_decay),  k = n - 1 = updates done before this one,
  so the first update copies the weights (decay 0) and decay reaches 0.999 after ~10k updates at power 0.75. This is
  diffusers' `EMAModel(use_ema_warmup=True)` exactly; Diffusion Policy's own copy evaluates it one update later.
Frozen parameters (requires_grad=False) and buffers (BatchNorm statistics) are copied, not averaged.

The averaged tensors live in `shadow`, keyed like `model.named_parameters()` / `named_buffers()` (a tied weight once)
and on the model's device, so they can be saved as a plain weights file or copied into any copy of the model. Pass
the bare module, or a DDP / torch.compile wrapper (unwrapped here). Pure torch; the update is one fused
`torch._foreach_lerp_` over all trainable tensors.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA"]


def _bare(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the model in .module, torch.compile in ._orig_mod; names must not carry prefixes.
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """EMA of `model`'s parameters and copies of its buffers; call `update(model)` after every optimiser step."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        *,
        power: float | None = None,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        max_decay: float = 0.9999,
    ):
        if not 0.0 <= decay <= 1.0 or not 0.0 <= min_decay <= max_decay <= 1.0:
            raise ValueError(f"decays must lie in [0, 1] with min <= max (decay={decay}, min={min_decay}, max={max_decay})")
        if power is not None and (power <= 0 or inv_gamma <= 0):
            raise ValueError(f"power and inv_gamma must be > 0 (power={power}, inv_gamma={inv_gamma})")
        self.decay, self.power, self.inv_gamma = decay, power, inv_gamma
        self.min_decay, self.max_decay = min_decay, max_decay
        self.step = 0  # updates applied so far
        model = _bare(model)
        self._param_names = [name for name, _ in model.named_parameters()]
        self._buffer_names = [name for name, _ in model.named_buffers()]
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]
        }

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if self.power is None:
            return self.decay
        value = 1.0 - (1.0 + self.step / self.inv_gamma) ** -self.power
        return min(max(value, self.min_decay), self.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = _bare(model)
        weight = 1.0 - self.current_decay()
        params = dict(model.named_parameters())
        if params.keys() != set(self._param_names):
            raise ValueError("EMA.update: the model's parameter names differ from those the EMA was built from")
        averaged, frozen = [], []
        for name in self._param_names:
            (averaged if params[name].requires_grad else frozen).append(name)
        if averaged:
            torch._foreach_lerp_([self.shadow[n] for n in averaged], [params[n].detach() for n in averaged], weight)
        buffers = dict(model.named_buffers())
        for name in frozen:
            self.shadow[name].copy_(params[name])
        for name in self._buffer_names:
            self.shadow[name].copy_(buffers[name])
        self.step += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s parameters and buffers with the EMA ones (e.g. on a deep copy used for sampling).
        Tensor by tensor, not `load_state_dict`: a tied weight is one shadow entry but two state_dict keys."""
        for name, tensor in [*_bare(model).named_parameters(), *_bare(model).named_buffers()]:
            tensor.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"step": self.step, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = self.shadow.keys() ^ state["shadow"].keys()
        if missing:
            raise KeyError(f"EMA state does not match the model; differing keys: {sorted(missing)[:5]}")
        self.step = int(state["step"])
        with torch.no_grad():
            for name, tensor in state["shadow"].items():
                self.shadow[name].copy_(tensor)
