"""Generate a few protein backbones with the shipped model, write them as PDB files and plot their geometry.

    python examples/backbone_generation.py --out backbone_demo --length 100 --num 4

Writes OUT/*.pdb (poly-glycine N, CA, C, O), OUT/phi_psi.png, OUT/distances.png and OUT/eval.json, and prints the metric
table against the held-out natural chains (or, without the shared data folder, against the ideal-helix and random-walk
baselines only). The same as `sciddiff backbone sample` + `sciddiff backbone eval`, through the Python API.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sciddiff.cli import UserError, check_output_path, idle_threads, load_or_fail, run_command
from sciddiff.protein.cli import MAX_LENGTH
from sciddiff.protein.evaluate import baselines, evaluate, format_report
from sciddiff.protein.frameflow import sample
from sciddiff.protein.pdbio import write_backbone
from sciddiff.protein.pretrained import DEFAULT_CHECKPOINT, load_model
from sciddiff.train import atomic_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="backbone_demo", help="output folder (default backbone_demo)")
    parser.add_argument("--length", type=int, default=100, help=f"residues per backbone, 5..{MAX_LENGTH} (default 100)")
    parser.add_argument("--num", type=int, default=4,
                        help="backbones, at least 2: the metrics compare distributions (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same backbones (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's)")
    parser.add_argument("--checkpoint", default=None, help="default: data/protein/backbone_flow.pt")
    return run_command(generate, parser.parse_args(argv))


def generate(args: argparse.Namespace) -> None:
    if (not 5 <= args.length <= MAX_LENGTH or args.num < 2 or (args.steps is not None and args.steps < 1)
            or args.seed < 0):
        raise UserError(f"need 5 <= --length <= {MAX_LENGTH}, --num >= 2, --steps >= 1 and --seed >= 0")
    out = check_output_path(args.out, folder=True)
    net, flow_cfg, meta = load_or_fail(load_model, args.checkpoint or DEFAULT_CHECKPOINT, "backbone checkpoint")
    print(f"model: {net.num_parameters()} parameters, trained {meta.get('total_steps', meta['step'])} steps")

    start = time.time()
    backbones = sample(net, [args.length] * args.num, flow_cfg, steps=args.steps,
                       seeds=[(args.seed, i) for i in range(args.num)], workers=idle_threads())
    print(f"sampled {args.num} x {args.length} residues in {time.time() - start:.1f} s")
    names = [f"backbone_{i:02d}.pdb" for i in range(args.num)]
    out.mkdir(parents=True, exist_ok=True)
    if earlier := sorted(out.glob("backbone_*.pdb")):  # this example's own files: the folder holds one run
        for path in earlier:
            path.unlink()
        print(f"replaced the {len(earlier)} backbones of an earlier run in {out}/")
    for name, bb in zip(names, backbones):
        write_backbone(out / name, bb)

    try:  # against the held-out natural chains (needs the shared data folder)
        result = evaluate(backbones, names, plots=out)
    except FileNotFoundError as err:
        print(f"natural chains unavailable ({err}); comparing with the ideal-helix baseline instead")
        result = evaluate(backbones, names, reference=baselines([args.length] * 8)["ideal_helix"],
                          reference_name="ideal helix", plots=out)
    with atomic_file(out / "eval.json", "w") as handle:
        json.dump(result, handle, indent=2)
    print(format_report(result))
    print(f"PDBs and plots in {out}/ ({', '.join(Path(p).name for p in result['plots'])})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # small per-step tensors: one thread is as fast, and robust on a busy machine
    sys.exit(main())
