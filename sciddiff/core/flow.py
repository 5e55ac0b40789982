"""Flow matching / rectified flow on any ``Space`` (Lipman et al. 2023; Liu et al. 2023; FrameFlow, Yim et al. 2023).

Time runs from t = 0 (noise, ``x_noise`` drawn from the space's prior) to t = 1 (data). The interpolant is the geodesic
x_t = exp_{x0}(t log_{x0}(x1)): straight lines in R^n, great circles on the torus, geodesics on SO(3). Networks predict the clean
point, ``model(x_t, t, **cond) -> x1_hat``; the velocity is log_{x_t}(x1_hat) / (1 - t). Per-component ``rates`` replace 1/(1 - t)
by a constant (FrameFlow's exponential schedule for rotations, rate 10).

Stochastic sampling (Euclidean components whose prior is N(0, I)): with x_t = (1 - t) x0 + t x1 the score of p_t is
E[(t x1 - x_t) / (1 - t)^2 | x_t], estimated with the predicted clean point. Adding Langevin dynamics of strength g(t),
dx = [v + g s] dt + sqrt(2 g T) dW, leaves the marginals unchanged at temperature T = 1 for any g >= 0; T < 1 sharpens
them toward their modes (the low-temperature sampling of Proteina, Geffner et al. 2025). Here g(t) = eta (1 - t), so the
extra drift -eta x0_hat stays bounded as t -> 1.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from .spaces import Euclidean, Point, Space

__all__ = ["interpolate", "flow_matching_loss", "sample_flow"]


def interpolate(space: Space, x_noise: Point, x_data: Point, t: Tensor) -> Point:
    """Geodesic interpolant at per-sample times t (B,)."""
    return space.exp(x_noise, Space.scale(space.log(x_noise, x_data), t))


def flow_matching_loss(model: Callable, space: Space, x_noise: Point, x_data: Point, t: Tensor, t_clip: float = 0.9,
                       **cond) -> tuple[Tensor, dict[str, Tensor]]:
    """|log_{x_t}(x1_hat) - log_{x_t}(x1)|^2 / (1 - t)^2: the velocity error, with 1 - t floored at 1 - t_clip."""
    ref = next(iter(x_data.values())) if isinstance(x_data, dict) else x_data
    if not torch.is_tensor(t):  # a number: one t for the whole batch
        t = torch.full((ref.shape[0],), float(t), dtype=ref.dtype, device=ref.device)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError("flow_matching_loss: t must lie in [0, 1] (0 noise, 1 data)")
    x_t = interpolate(space, x_noise, x_data, t)
    pred = model(x_t, t, **cond)
    Space.check_tangent(pred, x_t, what="point")
    diff = Space.add(space.log(x_t, pred), Space.scale(space.log(x_t, x_data), -1.0))
    err = space.sq_norm(diff)
    w = 1 / (1 - t.clamp(max=t_clip)) ** 2
    if not isinstance(err, dict):
        err = {"x": err}
    parts = {k: (e * w).mean() for k, e in err.items()}
    return torch.stack(list(parts.values())).mean(), parts


@torch.no_grad()
def sample_flow(model: Callable, space: Space, x_init: Point, *, steps: int, method: str = "euler", t_min: float = 0.0,
                rates: Mapping[str, float] | None = None, langevin: Mapping[str, float] | None = None,
                temperature: float = 1.0, noise: Callable[[Point], Point] | None = None, progress: Callable = iter,
                **cond) -> Point:
    """Integrate the learned flow from t_min to 1 on a float64 grid; the last step jumps to the predicted clean point.

    `rates` maps components (of a ``Product``; the key "x" for a single space) to a constant rate > 0 that replaces
    1 / (1 - t) in their velocity (FrameFlow's exponential schedule for rotations). `langevin` maps Euclidean
    components (keyed the same way) to eta, turning on the Langevin term of the module doc at `temperature` (Euler
    only). The model gets t (B,) in float64 for float64 points, else float32. `noise(x)` draws its standard normal tangent at x
    (default ``space.randn_tangent``): pass one to project the noise (e.g. keep centroids fixed) or to seed it per sample.
    """
    if steps < 1 or not 0 <= t_min < 1 or temperature < 0:
        raise ValueError(f"need steps >= 1, 0 <= t_min < 1 and temperature >= 0; got {steps}, {t_min}, {temperature}")
    ts = torch.linspace(t_min, 1.0, steps + 1, dtype=torch.float64).tolist()
    ref = next(iter(x_init.values())) if isinstance(x_init, dict) else x_init
    rates = rates or {}
    langevin = {k: eta for k, eta in (langevin or {}).items() if eta > 0}
    if langevin and method != "euler":
        raise ValueError("Langevin sampling is implemented for the euler method only")
    parts = getattr(space, "components", None) or {"x": space}  # a product's named spaces (any class that has them)
    for k, rate in rates.items():
        if k not in parts or not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rates: {k!r} must name a component ({', '.join(parts)}) and map to a finite rate > 0, "
                             f"got {rate!r}")
    for k in langevin:
        if not isinstance(parts.get(k), Euclidean):
            raise ValueError(f"Langevin sampling needs a Euclidean component; {k!r} is {parts.get(k)!r}")
    noise = noise or space.randn_tangent

    t_dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32

    def velocity(x, t):
        x1 = model(x, torch.full((ref.shape[0],), t, device=ref.device, dtype=t_dtype), **cond)
        Space.check_tangent(x1, x, what="point")
        x1 = Space.in_dtype_of(x1, x)
        v = space.log(x, x1)
        if isinstance(v, dict):
            return {k: vk * rates.get(k, 1 / (1 - t)) for k, vk in v.items()}, x1
        return (v * rates["x"] if "x" in rates else v / (1 - t)), x1

    x = x_init
    for i in progress(range(steps)):
        t, dt = ts[i], ts[i + 1] - ts[i]
        v, x1 = velocity(x, t)
        if i == steps - 1:  # the network's point, put on the manifold (wrapped angles, orthonormal rotations)
            return space.exp(x, space.log(x, x1))
        x_euler = space.exp(x, Space.scale(v, dt))
        if langevin:
            x = _add_langevin(space, x_euler, x, x1, t, dt, langevin, temperature, noise)
        elif method == "heun" and i < steps - 2:
            v2, _ = velocity(x_euler, ts[i + 1])
            x = space.exp(x, Space.scale(Space.add(v, v2), dt / 2))
        elif method in ("euler", "heun"):
            x = x_euler
        else:
            raise ValueError(f"unknown ODE method {method!r}; choose euler or heun")
    return x


def _add_langevin(space: Space, x_next: Point, x: Point, x1: Point, t: float, dt: float, langevin: Mapping[str, float],
                  temperature: float, noise: Callable[[Point], Point]) -> Point:
    """Add the Langevin drift g s dt and noise sqrt(2 g T dt) z (module doc) to the Euler step x_next of each listed
    Euclidean component (where exp is addition, so the two parts simply add)."""
    z, single = noise(x), not isinstance(x, dict)
    wrap = (lambda p: {"x": p}) if single else (lambda p: p)
    x_next, x, x1, z = dict(wrap(x_next)), wrap(x), wrap(x1), wrap(z)
    for k, eta in langevin.items():
        g = eta * (1 - t)
        score = (t * x1[k] - x[k]) / (1 - t) ** 2
        x_next[k] = x_next[k] + g * score * dt + (2 * g * temperature * dt) ** 0.5 * z[k]
    return x_next["x"] if single else x_next
