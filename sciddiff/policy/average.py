"""Uniform weight averaging of policies fine-tuned from one checkpoint (a "model soup": Wortsman et al., ICML 2022).

    python -m sciddiff.policy.average A.pt B.pt [C.pt ...] --out SOUP.pt

The network weights of the output are the mean of the inputs'. The inputs must be the same network with the same
normalizers (runs of `sciddiff.policy.train --init` from one checkpoint are); the first input's config (inference
settings included) and meta are kept, and the recipe is added to the meta (`average_of`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sciddiff.cli import UserError, check_output_path, run_command


def average_policies(paths: list[Path]):
    """The first policy of `paths` with the mean network weights of all of them."""
    from sciddiff.policy.cli import load_checkpoint_or_fail
    from sciddiff.policy.io import NETWORK_PREFIXES

    policies = [load_checkpoint_or_fail(p) for p in paths]
    first = policies[0]
    states = [p.state_dict() for p in policies]
    for path, policy, state in zip(paths[1:], policies[1:], states[1:]):
        if policy.config.to_dict() | {"extra": {}} != first.config.to_dict() | {"extra": {}}:
            raise UserError(f"{path} is not the same network as {paths[0]} (configs differ)")
        for key, value in state.items():  # normalizers and schedules must agree: only the networks are averaged
            if not key.startswith(NETWORK_PREFIXES) and not torch.equal(value, states[0][key]):
                raise UserError(f"{path} and {paths[0]} differ in {key}: not fine-tunes of one checkpoint")
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0) if k.startswith(NETWORK_PREFIXES)
            and v.is_floating_point() else v for k, v in states[0].items()}
    first.load_state_dict(mean)
    return first


def run_average(args: argparse.Namespace) -> dict:
    from sciddiff.policy.io import save_policy

    if len(args.policies) < 2:
        raise UserError("give at least two policy checkpoints to average")
    check_output_path(args.out, option="--out")
    policy = average_policies([Path(p) for p in args.policies])
    meta = dict(policy.meta, average_of=[str(p) for p in args.policies],
                average_command=f"python -m sciddiff.policy.average {' '.join(args.policies)} --out {args.out}")
    save_policy(args.out, policy, meta)
    print(f"wrote {args.out}: the mean of {len(args.policies)} policies' network weights")
    return {"out": str(args.out)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sciddiff.policy.average", description=__doc__.split("\n\n")[0])
    p.add_argument("policies", nargs="+", help="policy checkpoints (.pt) fine-tuned from one checkpoint")
    p.add_argument("--out", required=True, help="output policy checkpoint (.pt; a .json sidecar is written beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(run_average, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
