"""Generate a few protein backbones with the shipped model, write them as PDB files and plot their geometry.

    python examples/backbone_generation.py --out backbone_demo --length 100 --num 4

Writes OUT/*.pdb (poly-glycine N, CA, C, O), OUT/phi_psi.png, OUT/distances.png and OUT/eval.json, and prints the metric
table against the held-out natural chains (or, without the shared data folder, against the ideal-helix and random-walk
baselines only). The same as `sciddiff backbone sample` + `sciddiff backbone eval`, through the Python API.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sciddiff.protein.evaluate import baselines, evaluate, format_report
from sciddiff.protein.frameflow import sample
from sciddiff.protein.pdbio import write_backbone
from sciddiff.protein.pretrained import load_model
from sciddiff.train import atomic_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="backbone_demo", help="output folder")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's)")
    parser.add_argument("--checkpoint", default=None, help="default: data/protein/backbone_flow.pt")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net, flow_cfg, meta = load_model(args.checkpoint)
    print(f"model: {net.num_parameters()} parameters, trained {meta['step']} steps")

    start = time.time()
    backbones = sample(net, [args.length] * args.num, flow_cfg, steps=args.steps,
                       seeds=[(args.seed, i) for i in range(args.num)])
    print(f"sampled {args.num} x {args.length} residues in {time.time() - start:.1f} s")
    names = [f"backbone_{i:02d}.pdb" for i in range(args.num)]
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
    main()
