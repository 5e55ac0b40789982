"""Batched L-BFGS: B independent minimizations in lockstep, one batched function evaluation per iteration.

For many small problems (one per chain, pose, sample) a per-problem `torch.optim.LBFGS` loop is bound by Python and
dispatch overhead, not arithmetic: evaluating all problems in one call costs about what one costs alone. Every problem
keeps its own history, step size and acceptance; only the evaluations are shared, so a problem's iterates do not depend
on which others share its batch (up to float rounding).

Each iteration proposes x + t d with d from the two-loop recursion (Nocedal & Wright, Numerical Optimization, 2nd ed.,
Algorithm 7.4; initial Hessian scaled by s'y / y'y) and evaluates it once. A problem whose proposal fails the Armijo
condition f(x + t d) <= f(x) + c1 t g'd stays where it is and halves t (backtracking, spread over iterations instead of
an inner loop that would make every problem wait for the slowest); an accepted step doubles t back toward 1. The first
step is steepest descent scaled to at most unit L1 length, as in `torch.optim.LBFGS`. Curvature pairs with s'y <= 1e-10
are not stored, which keeps the implicit Hessian positive definite without a Wolfe line search.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def minimize_lbfgs_batched(value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, max_evals: int,
                           history: int = 10, c1: float = 1e-4, tolerance_grad: float = 1e-7
                           ) -> tuple[Tensor, Tensor]:
    """Minimize B independent functions from x (B, ...): value_and_grad(x) -> (f (B,), grad like x).

    Stops after `max_evals` evaluations, or once every problem's gradient max-norm is <= `tolerance_grad` (a converged
    problem stays put meanwhile). Returns (x, f) at the best accepted iterates."""
    dims = tuple(range(1, x.dim()))

    def per_problem(v: Tensor) -> Tensor:
        return v.view(-1, *([1] * len(dims)))

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dims)

    f, g = value_and_grad(x)
    pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, rho), oldest first; rho = 0 marks a skipped pair
    gamma = (1.0 / g.abs().sum(dims)).clamp(max=1.0)
    t = torch.ones_like(f)
    for _ in range(max_evals - 1):
        active = g.abs().amax(dims) > tolerance_grad
        if not bool(active.any()):
            break
        q, alphas = -g, []
        for s, y, rho in reversed(pairs):
            alphas.append(rho * dot(s, q))
            q = q - per_problem(alphas[-1]) * y
        d = per_problem(gamma) * q
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            d = d + per_problem(a - rho * dot(y, d)) * s
        slope = dot(g, d)
        descent = slope < 0
        d = torch.where(per_problem(descent), d, -g)  # rounding can spoil the recursion: fall back to steepest descent
        slope = torch.where(descent, slope, -dot(g, g))
        x_new = x + per_problem(t) * d
        f_new, g_new = value_and_grad(x_new)
        accept = (f_new <= f + c1 * t * slope) & active
        s, y = per_problem(accept) * (x_new - x), per_problem(accept) * (g_new - g)
        sy = dot(s, y)
        curved = sy > 1e-10
        rho = torch.where(curved, 1.0 / torch.where(curved, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        pairs.append((s, y, rho))
        if len(pairs) > history:
            pairs.pop(0)
        gamma = torch.where(curved, sy / dot(y, y).clamp_min(torch.finfo(y.dtype).tiny), gamma)
        x, f, g = (torch.where(per_problem(accept), x_new, x), torch.where(accept, f_new, f),
                   torch.where(per_problem(accept), g_new, g))
        t = torch.where(accept, (2 * t).clamp(max=1.0), torch.where(active, 0.5 * t, t))
    return x, f
