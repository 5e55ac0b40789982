"""Spaces that diffusion runs on, behind one interface used by every loss and sampler in ``sciddiff.core``.

A point of a batch has a leading batch dimension B. Tangent vectors (scores, velocities, noise) are:
- ``Euclidean(shape)``: points and tangents (B, *shape).
- ``SO3(shape)``: points are rotation matrices (B, *shape, 3, 3); tangents are body-frame rotation vectors (B, *shape, 3), acting by
  right multiplication, x' = x exp(v) (see ``sciddiff.core.so3``).
- ``Torus(n)``: points are angles (B, n) in [-pi, pi); tangents (B, n).
- ``Product(**components)``: points and tangents are dicts keyed by component name.

Noising is Brownian (variance-exploding): ``perturb(x0, sigma)`` moves x0 by Brownian motion run for time sigma^2 and returns the
exact score of that kernel at the result. ``sigma`` is a (B,) tensor, or for a ``Product`` either one (B,) tensor shared by all
components or a dict of them. For torsion vectors of variable length (several molecules flattened into one vector) pass sigma with
the same shape as the point instead of (B,).
"""
from __future__ import annotations

import math
import operator
from typing import Mapping, Union

import torch
from torch import Tensor

from . import so3, torus

__all__ = ["Space", "Euclidean", "SO3", "Torus", "Product", "Point", "Sigma"]

Point = Union[Tensor, dict]
Sigma = Union[Tensor, Mapping[str, Tensor]]


def _per_sample(per_element: Tensor, sigma: Tensor, element_shape: tuple[int, ...]) -> Tensor:
    """E|score|^2 per sample (B,) from the per-element values of a per-sample sigma (B,) or one that broadcasts against
    the points from the left: (B, 1), (B, N, 1), ... or per element (B, ...)."""
    if sigma.dim() <= 1:
        return math.prod(element_shape) * per_element
    per_element = per_element.reshape(per_element.shape + (1,) * (1 + len(element_shape) - per_element.dim()))
    return per_element.expand(sigma.shape[0], *element_shape).reshape(sigma.shape[0], -1).sum(-1)


def _fit_rank(sigma: Tensor, rank: int) -> Tensor:
    """``sigma`` without the trailing singleton dims beyond ``rank`` (a (B, 1) sigma on SO(3) points of shape (B,))."""
    while sigma.dim() > rank and sigma.shape[-1] == 1:
        sigma = sigma.squeeze(-1)
    if sigma.dim() > rank:
        raise ValueError(f"sigma of shape {tuple(sigma.shape)} has more dimensions than the points it scales ({rank})")
    return sigma


def _expand(sigma: Tensor, ref: Tensor) -> Tensor:
    """Broadcast a per-sample sigma (B,) with trailing singleton dims against ``ref``; a sigma that already has ref's rank
    (per-element sigma) is returned unchanged."""
    sigma = _fit_rank(torch.as_tensor(sigma, device=ref.device), ref.dim())
    return sigma.reshape(sigma.shape + (1,) * (ref.dim() - sigma.dim()))


class Space:
    """Interface; see the module docstring for shapes."""

    def prior_sample(self, batch: int, sigma_max: Sigma, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Point:
        raise NotImplementedError

    def perturb(self, x0: Point, sigma: Sigma, generator: torch.Generator | None = None) -> tuple[Point, Point]:
        """(x_t, grad log p(x_t | x0)) for Brownian noise of scale sigma. At sigma = 0, x_t = x0 and the score is not
        finite (the kernel is a point mass): the losses refuse sigma <= 0 and the samplers never perturb at 0."""
        raise NotImplementedError

    def exp(self, x: Point, v: Point) -> Point:
        raise NotImplementedError

    def log(self, x: Point, y: Point) -> Point:
        """The tangent v at x with exp(x, v) = y (shortest geodesic)."""
        raise NotImplementedError

    def randn_tangent(self, x: Point, generator: torch.Generator | None = None) -> Point:
        """Standard normal tangent at x (the increment of unit-time Brownian motion)."""
        raise NotImplementedError

    def score_norm_sq(self, sigma: Sigma) -> Tensor:
        """E|score|^2 of the perturbation kernel: the DSM loss weight is its inverse. (B,) tensor (dict for products)."""
        raise NotImplementedError

    def sq_norm(self, v: Point) -> Tensor:
        """Squared norm of tangents per sample: (B,) (dict for products)."""
        raise NotImplementedError

    # Generic tangent arithmetic, so samplers need not know the representation.
    @staticmethod
    def scale(v: Point, c: float | Tensor) -> Point:
        """v * c, where c is a number, a per-sample (B,) tensor, or (for products) a dict of either."""
        if isinstance(v, dict):
            return {k: Space.scale(vk, c[k] if isinstance(c, Mapping) else c) for k, vk in v.items()}
        if torch.is_tensor(c):
            c = _expand(c, v).to(v.dtype)
        return v * c

    @staticmethod
    def check_tangent(v: Point, like: Point, name: str = "", what: str = "tangent") -> None:
        """Raise ValueError unless `v` (a network's output: score, velocity, noise or clean point) has the shape
        (and, for products, the keys) of `like` (the `what` it stands for): broadcasting a wrong shape would silently
        mix samples. Every loss and sampler of the core checks its model's output with it."""
        if isinstance(like, dict):
            if not isinstance(v, dict) or set(v) != set(like):
                raise ValueError(f"the model must return a dict with keys {sorted(like)}, got "
                                 f"{sorted(v) if isinstance(v, dict) else type(v).__name__}")
            for k in like:
                Space.check_tangent(v[k], like[k], k, what)
        elif not torch.is_tensor(v) or v.shape != like.shape:
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"the model returned {got}{f' for {name!r}' if name else ''}; the {what} shape is "
                             f"{tuple(like.shape)}")

    @staticmethod
    def check_floating(x: Point, what: str) -> None:
        """Raise TypeError unless every tensor of the point x is floating point: an integer state would round each step's
        update (an integer start lost its first step silently)."""
        for v in x.values() if isinstance(x, dict) else [x]:
            if not (torch.is_tensor(v) and v.is_floating_point()):
                raise TypeError(f"{what}: points must be floating-point tensors, got "
                                f"{v.dtype if torch.is_tensor(v) else type(v).__name__}")

    @staticmethod
    def in_dtype_of(v: Point, x: Point) -> Point:
        """A network's tangent v in the dtype of the state x (per component): the samplers keep the caller's dtype
        whatever precision the network computes in."""
        if isinstance(v, dict):
            return {k: Space.in_dtype_of(vk, x[k]) for k, vk in v.items()}
        return v.to(x.dtype)

    @staticmethod
    def add(u: Point, v: Point) -> Point:
        if isinstance(u, dict):
            return {k: Space.add(u[k], v[k]) for k in u}
        return u + v


class Euclidean(Space):
    def __init__(self, shape: tuple[int, ...] | int):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.dim = math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Euclidean({self.shape})"

    def prior_sample(self, batch: int, sigma_max: Tensor | float, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        if sigma_max is None:  # SO3 and Torus take None (their priors are uniform); a Gaussian needs its scale
            raise ValueError("Euclidean.prior_sample needs sigma_max, the prior's standard deviation")
        noise = torch.randn((batch, *self.shape), generator=generator, device=device, dtype=dtype)
        return noise * _expand(torch.as_tensor(sigma_max, dtype=dtype, device=device), noise)

    def perturb(self, x0: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = _expand(sigma, x0).to(x0.dtype)
        return x0 + s * eps, -eps / s

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return x + v

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return y - x

    def randn_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def score_norm_sq(self, sigma: Tensor | float) -> Tensor:
        sigma = _fit_rank(torch.as_tensor(sigma, dtype=torch.float64), 1 + len(self.shape))
        return _per_sample(1 / sigma**2, sigma, self.shape)

    def sq_norm(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], -1).pow(2).sum(-1)


SO3_UNIFORM_SIGMA = 2.5  # IGSO(3) here is uniform to ~1e-4: the DSM weight is held at its value from there on


class SO3(Space):
    def __init__(self, shape: tuple[int, ...] | int = ()):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.count = math.prod(self.shape)

    def __repr__(self) -> str:
        return f"SO3({self.shape})"

    def prior_sample(self, batch: int, sigma_max: None = None, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Haar-uniform rotations (IGSO(3) at sigma >= 4 is uniform to 1e-12)."""
        return so3.uniform_so3(batch * self.count, generator, device, dtype).reshape(batch, *self.shape, 3, 3)

    def perturb(self, x0: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        s = _expand(sigma, x0[..., 0, 0]).expand(x0.shape[:-2])
        v = so3.sample_igso3(s.reshape(-1), generator=generator, device=x0.device, dtype=x0.dtype).reshape(*x0.shape[:-2], 3)
        omega = v.norm(dim=-1, keepdim=True)
        score = so3.igso3_score(omega, s[..., None]).to(x0.dtype) * v / omega.clamp_min(1e-12)
        return x0 @ so3.exp_map(v), score

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return x @ so3.exp_map(v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return so3.log_map(x.transpose(-1, -2) @ y)

    def randn_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x.shape[:-1], generator=generator, device=x.device, dtype=x.dtype)

    def score_norm_sq(self, sigma: Tensor | float) -> Tensor:
        # as the torus's at pi: above 2.5 IGSO(3) is uniform to ~1e-4 (E|score|^2 6.7e-5, 2.3e-13 at 4) and the
        # weight stays at its value there (a score off by 0.01 at sigma 4 was a loss of 1e9)
        sigma = _fit_rank(torch.as_tensor(sigma, dtype=torch.float64), 1 + len(self.shape))
        return _per_sample(so3.igso3_score_norm(sigma.clamp(max=SO3_UNIFORM_SIGMA)), sigma, self.shape)

    def sq_norm(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], -1).pow(2).sum(-1)


class Torus(Space):
    def __init__(self, n: int):
        try:
            self.n = operator.index(n)  # any integer type (numpy, a 0-d tensor), not a float
        except TypeError:
            self.n = -1
        if self.n < 0:
            raise ValueError(f"Torus(n): n is a number of angles (an integer >= 0), got {n!r}")

    def __repr__(self) -> str:
        return f"Torus({self.n})"

    def prior_sample(self, batch: int, sigma_max: None = None, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform angles (the wrapped normal at sigma >= pi is uniform to 1e-8)."""
        return (torch.rand((batch, self.n), generator=generator, device=device, dtype=dtype) * 2 - 1) * math.pi

    def perturb(self, x0: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        s = _expand(sigma, x0).to(x0.dtype)
        delta = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * s
        return torus.wrap(x0 + delta), torus.wrapped_normal_score(delta, s)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return torus.wrap(x + v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return torus.wrap(y - x)

    def randn_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def score_norm_sq(self, sigma: Tensor | float) -> Tensor:
        # above pi the kernel is uniform to ~1e-4 and its score round-off around zero: the weight stays at its value
        # at pi (further out the table's tiny values would turn that round-off into a huge loss)
        sigma = _fit_rank(torch.as_tensor(sigma, dtype=torch.float64), 2)
        return _per_sample(torus.wrapped_normal_score_norm(sigma.clamp(max=math.pi)), sigma, (self.n,))

    def sq_norm(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], -1).pow(2).sum(-1)


class Product(Space):
    """Cartesian product of named spaces, e.g. ``Product(tr=Euclidean(3), rot=SO3(), tor=Torus(m))``."""

    def __init__(self, **components: Space):
        self.components = components

    def __repr__(self) -> str:
        return "Product(" + ", ".join(f"{k}={v!r}" for k, v in self.components.items()) + ")"

    def _sigma(self, sigma: Sigma, name: str) -> Tensor:
        if not isinstance(sigma, Mapping):
            return sigma
        if set(sigma) != set(self.components):  # a typo or a missing component was a bare KeyError
            raise ValueError(f"a per-component sigma names the components {sorted(self.components)}, got {sorted(sigma)}")
        return sigma[name]

    def prior_sample(self, batch: int, sigma_max: Sigma, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> dict:
        return {k: s.prior_sample(batch, self._sigma(sigma_max, k), generator, device, dtype) for k, s in self.components.items()}

    def perturb(self, x0: dict, sigma: Sigma, generator: torch.Generator | None = None) -> tuple[dict, dict]:
        pairs = {k: s.perturb(x0[k], self._sigma(sigma, k), generator) for k, s in self.components.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}

    def exp(self, x: dict, v: dict) -> dict:
        return {k: s.exp(x[k], v[k]) for k, s in self.components.items()}

    def log(self, x: dict, y: dict) -> dict:
        return {k: s.log(x[k], y[k]) for k, s in self.components.items()}

    def randn_tangent(self, x: dict, generator: torch.Generator | None = None) -> dict:
        return {k: s.randn_tangent(x[k], generator) for k, s in self.components.items()}

    def score_norm_sq(self, sigma: Sigma) -> Tensor:
        return {k: s.score_norm_sq(self._sigma(sigma, k)) for k, s in self.components.items()}

    def sq_norm(self, v: dict) -> Tensor:
        return {k: s.sq_norm(v[k]) for k, s in self.components.items()}
