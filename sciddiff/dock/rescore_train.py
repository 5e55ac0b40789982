"""Decoys and training for the learned rescorer (`sciddiff.dock.rescore`).

decoys: dock training complexes with the project's own physics search (`--model none`: the score network saw
these complexes, so its samples would be unrealistically good) from a fresh ETKDG conformer, box = crystal ligand
+ 4 A, and keep every pose the ranker has to choose among: each Monte Carlo chain's best minimum (kind 0), the
polished distinct candidates the ranking sees (kind 1), and the crystal pose relaxed under the same energy (kind 2:
the conformer with the crystal's torsions, aligned onto it, then polished). Each is labelled with its
symmetry-corrected RMSD (A) to the crystal ligand. Complexes are taken in a seeded random order and the output file
is rewritten after every complex, so a run can be stopped at any time.

train: a per-complex split of the decoy complexes (model selection), then a fit on all of them. Loss per complex:
listwise softmax cross-entropy whose target puts the mass on the poses within 2 A (or, with none, on the lowest
RMSD pose), plus binary cross-entropy on RMSD < 2 A so that sigmoid(logit) is a calibrated confidence.

    python -m sciddiff.dock.rescore_train decoys --split ../shared/data/docking/splits/train.txt --shard 0 --shards 2 \\
        --out runs/rescore/decoys_0.pt
    python -m sciddiff.dock.rescore_train train --decoys runs/rescore/decoys_*.pt --out data/dock/rescore.pt
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

POLISH_LR = (0.05, 0.02, 0.05)  # the pipeline's final exact polish (docking.dock)


def relaxed_crystal(receptor, mol, seed: int = 0) -> torch.Tensor:
    """The crystal pose as the search could express it (fresh conformer with the crystal's torsions, aligned onto
    the crystal ligand) polished with the exact energy: (1, N, 3)."""
    from sciddiff.dock.io import ligand_coords
    from sciddiff.dock.ligand import (
        generate_conformers,
        match_torsions,
        rotatable_torsions,
    )
    from sciddiff.dock.pose import PoseSpace
    from sciddiff.dock.scoring import ScoringFunction
    from sciddiff.dock.search import fit_pose, local_opt

    conformer = generate_conformers(mol, 1, seed=seed)[0]  # the conformer dock() starts from (same seed)
    tors = rotatable_torsions(mol)
    space = PoseSpace(torch.as_tensor(conformer), tors)
    matched = torch.as_tensor(match_torsions(conformer, ligand_coords(mol), tors))[None]
    tr, rot, theta = fit_pose(space, matched)
    sf = ScoringFunction(receptor, mol, tors.n)
    p = local_opt(sf, space, tr, rot, theta, steps=30, lr=POLISH_LR, exact=True)
    return space.coords(p.tr, p.rot, p.theta, realign=False).detach()


def complex_decoys(cid: str, root: Path, settings) -> dict:
    from sciddiff.dock import io
    from sciddiff.dock.docking import dock
    from sciddiff.dock.ligand import rotatable_torsions, symmetric_rmsd
    from sciddiff.dock.rescore import Featurizer

    name = cid.split("/")[-1]
    ligand = str(root / cid / f"{name}_ligand.sdf.gz")
    receptor = io.load_receptor(root / cid / f"{name}_protein.pdb.gz")
    mol = io.load_ligand(ligand)
    result = dock(receptor, mol, io.box_from_ligand(ligand, 4.0), None, settings, show_progress=False)
    search, cand = torch.as_tensor(result.search), torch.as_tensor(result.candidates)
    poses = torch.cat([search, cand, relaxed_crystal(receptor, mol, settings.seed)])
    kind = torch.cat([torch.zeros(len(search)), torch.ones(len(cand)), torch.full((1,), 2.0)]).long()
    feats = Featurizer(receptor, mol, rotatable_torsions(mol).n)(poses, search)
    xtal = io.ligand_coords(mol)
    rmsd = torch.tensor([symmetric_rmsd(mol, p, xtal) for p in poses.numpy()], dtype=torch.float32)
    return {"complex": cid, "features": feats, "rmsd": rmsd, "kind": kind,
            "order_energy": torch.as_tensor(result.order_energy)}


def run_decoys(args) -> None:
    from sciddiff.cli import UserError
    from sciddiff.dock.data import default_data_root
    from sciddiff.dock.docking import DockSettings, settings_dict
    from sciddiff.train.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    root = Path(args.data) if args.data else default_data_root()
    ids = [ln.strip() for ln in Path(args.split).read_text().splitlines() if ln.strip()]
    ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))][args.shard:: args.shards][: args.limit]
    settings = DockSettings(samples=0, random_starts=args.random_starts, mc_chains=args.mc_chains,
                            mc_rounds=args.mc_rounds, seed=0)
    out, items = Path(args.out), []
    for k, cid in enumerate(ids):
        t0 = time.perf_counter()
        try:
            items.append(complex_decoys(cid, root, settings))
        except (UserError, ValueError, RuntimeError) as err:  # unreadable input or an embedding failure: skip it
            print(f"{cid}: skipped ({err})", flush=True)
            continue
        it = items[-1]
        cand = it["kind"] == 1
        print(f"[{k + 1}/{len(ids)}] {cid}: {len(it['rmsd'])} poses, best candidate {it['rmsd'][cand].min():.2f} A, "
              f"energy top-1 {it['rmsd'][cand][it['order_energy'][0]]:.2f} A, crystal {it['rmsd'][-1]:.2f} A, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        save_checkpoint(out, {"items": items, "settings": settings_dict(settings), "split": args.split})


# ------------------------------------------------------------------------------------------------------------ train
def _loss(model, items: list[dict], pos_weight: float) -> torch.Tensor:
    total = 0.0
    for it in items:
        logit = model(it["features"])
        good = (it["rmsd"] < 2.0).float()
        target = good if good.any() else (it["rmsd"] == it["rmsd"].min()).float()
        listwise = -(target / target.sum() * torch.log_softmax(logit, 0)).sum()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logit, good, pos_weight=torch.tensor(pos_weight))
        total = total + listwise + bce
    return total / len(items)


def ranking_metrics(model, items: list[dict]) -> dict:
    """On the candidates the pipeline ranks (kind 1): top-1 < 2 A by energy vs by the model, and the oracle."""
    e1, m1, oracle, conf, hit = [], [], [], [], []
    with torch.no_grad():
        for it in items:
            cand = it["kind"] == 1
            rmsd, logit = it["rmsd"][cand], model(it["features"][cand])
            e1.append(float(rmsd[it["order_energy"][0]]) < 2)
            best = int(logit.argmax())
            m1.append(float(rmsd[best]) < 2)
            oracle.append(float(rmsd.min()) < 2)
            conf.append(float(torch.sigmoid(logit[best])))
            hit.append(m1[-1])
    conf_a, hit_a = np.array(conf), np.array(hit, float)
    return {"n": len(items), "top1_energy": float(np.mean(e1)), "top1_model": float(np.mean(m1)),
            "oracle": float(np.mean(oracle)), "mean_confidence_top1": float(conf_a.mean()),
            "brier_top1": float(((conf_a - hit_a) ** 2).mean())}


def fit(items: list[dict], hidden: int, epochs: int, weight_decay: float, seed: int = 0, lr: float = 3e-3):
    from sciddiff.dock.rescore import Rescorer

    torch.manual_seed(seed)
    feats = torch.cat([it["features"] for it in items])
    model = Rescorer(feats.shape[1], hidden=hidden, dropout=0.1 if hidden else 0.0)
    model.mean.copy_(feats.mean(0))
    model.std.copy_(feats.std(0).clamp_min(1e-3))
    rate = float(torch.cat([it["rmsd"] for it in items]).lt(2).float().mean())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(items)).split(16):
            opt.zero_grad()
            _loss(model, [items[i] for i in batch], pos_weight=1.0).backward()
            opt.step()
    model.eval()
    return model, rate


def run_train(args) -> None:
    from sciddiff.dock.rescore import save_rescorer

    torch.set_num_threads(1)
    items = [it for path in args.decoys for it in torch.load(path, weights_only=True)["items"]]
    order = np.random.default_rng(1).permutation(len(items))
    n_val = len(items) // 4
    val, train = [items[i] for i in order[:n_val]], [items[i] for i in order[n_val:]]
    report = {}
    for hidden in args.hidden:
        for wd in args.weight_decay:
            model, _ = fit(train, hidden, args.epochs, wd)
            report[f"hidden={hidden} wd={wd}"] = {"train": ranking_metrics(model, train), "val": ranking_metrics(model, val)}
            print(json.dumps({f"hidden={hidden} wd={wd}": report[f"hidden={hidden} wd={wd}"]}), flush=True)
    best = max(report, key=lambda k: (report[k]["val"]["top1_model"], -report[k]["val"]["brier_top1"]))
    hidden, wd = int(best.split()[0].split("=")[1]), float(best.split()[1].split("=")[1])
    model, _ = fit(items, hidden, args.epochs, wd)  # the chosen setting, refit on every decoy complex
    meta = {"version": time.strftime("%Y-%m-%d"), "hidden": hidden, "weight_decay": wd, "epochs": args.epochs,
            "complexes": len(items), "poses": int(sum(len(it["rmsd"]) for it in items)),
            "decoys": [str(p) for p in args.decoys], "selection": report, "chosen": best,
            "all_complexes": ranking_metrics(model, items)}
    save_rescorer(model, args.out, meta)
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"chose {best}; wrote {args.out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decoys", help="dock training complexes and save labelled pose features")
    d.add_argument("--split", required=True)
    d.add_argument("--data", default=None, help="docking data root (default ../shared/data/docking)")
    d.add_argument("--shard", type=int, default=0)
    d.add_argument("--shards", type=int, default=1)
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--random-starts", type=int, default=88)
    d.add_argument("--mc-chains", type=int, default=96)
    d.add_argument("--mc-rounds", type=int, default=20)
    d.add_argument("--out", required=True)
    d.set_defaults(func=run_decoys)
    t = sub.add_parser("train", help="train the rescorer on decoy files")
    t.add_argument("--decoys", nargs="+", required=True)
    t.add_argument("--hidden", type=int, nargs="+", default=[0, 32], help="hidden widths tried (0 = linear)")
    t.add_argument("--weight-decay", type=float, nargs="+", default=[1e-3, 1e-1])
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--out", required=True)
    t.set_defaults(func=run_train)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
