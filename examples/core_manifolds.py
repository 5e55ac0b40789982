"""Diffusion on curved spaces with sciddiff.core: learn a mixture of rotations on SO(3) and a wrapped mixture on the torus T^2,
sample with the reverse SDE (geodesic random walk), and save a PNG of samples against fresh target samples.

    python examples/core_manifolds.py [--out core_manifolds.png] [--steps 800] [--seed 0]

Runs in about a minute on a 2-core CPU (1-2 min on the dev machines). Prints an MMD (geodesic kernel) of samples vs
target, next to the MMD of the uniform prior vs target, so you can see what training bought.
"""
from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from sciddiff import toy
from sciddiff.cli import UserError, check_output_path
from sciddiff.core import SO3, Torus, sample_reverse_sde
from sciddiff.core.schedules import geometric_sigma
from sciddiff.plots import pyplot, save_png


def run(space, kind, target, sigma_range, args, g):
    model = toy.ScoreMLP(kind, 3 if kind == "so3" else 2)
    toy.train_score_model(model, space, target, *sigma_range, steps=args.steps, generator=g,
                          progress=lambda it: tqdm(it, desc=f"train {kind}", leave=False))
    sigmas = geometric_sigma(torch.linspace(1, 0, args.sample_steps + 1, dtype=torch.float64), *sigma_range)
    prior = space.prior_sample(args.n, None, g)
    samples = sample_reverse_sde(model, space, prior, sigmas, generator=g)
    fresh = target(args.n, g)
    dist = toy.geodesic_so3 if kind == "so3" else toy.geodesic_torus
    print(f"{kind:>5}: MMD(samples, target) = {toy.mmd(samples, fresh, dist, 0.5):.4f}   "
          f"MMD(uniform prior, target) = {toy.mmd(prior, fresh, dist, 0.5):.4f}")
    return samples, fresh


def sphere_coords(rotations):
    """Where each rotation sends the unit vector (1, 1, 1)/sqrt(3), as (longitude, latitude) in radians: a 2-D view of SO(3)
    samples (a generic axis, so that no two of the target's modes land on the same point)."""
    z = rotations @ torch.full((3,), 3**-0.5)
    return torch.atan2(z[:, 1], z[:, 0]), torch.asin(z[:, 2].clamp(-1, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="core_manifolds.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=800, help="training steps per model (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=60, help="reverse-SDE steps (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="samples to draw (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.n < 1 or args.sample_steps < 1:
        parser.error("--steps, --sample-steps and --n must be positive")
    try:
        check_output_path(args.out)
    except UserError as err:  # before the two models train, not after
        parser.error(str(err))
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    so3_samples, so3_target = run(SO3(), "so3", toy.so3_mixture, (0.05, 1.5), args, g)
    tor_samples, tor_target = run(Torus(2), "torus", toy.torus_mixture, (0.05, 3.0), args, g)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for data, label, color in ((so3_target, "target", "tab:gray"), (so3_samples, "sciddiff samples", "tab:blue")):
        lon, lat = sphere_coords(data)
        axes[0].scatter(lon, lat, s=3, alpha=0.4, label=label, color=color)
    axes[0].set(title="SO(3): image of the axis (1,1,1)/sqrt(3)", xlabel="longitude (rad)", ylabel="latitude (rad)")
    for data, label, color in ((tor_target, "target", "tab:gray"), (tor_samples, "sciddiff samples", "tab:orange")):
        axes[1].scatter(data[:, 0], data[:, 1], s=3, alpha=0.4, label=label, color=color)
    axes[1].set(title="torus T^2", xlabel="angle 1 (rad)", ylabel="angle 2 (rad)", xlim=(-3.15, 3.15), ylim=(-3.15, 3.15))
    for ax in axes:
        ax.legend(loc="lower left", markerscale=4)
    save_png(fig, args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
