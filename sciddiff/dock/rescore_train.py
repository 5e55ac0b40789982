"""Decoys and training for the learned rescorer (`sciddiff.dock.rescore`).

decoys: dock training complexes with the project's own physics search (`--model none`: the score network saw these
complexes, so its samples would be unrealistically good) from a fresh ETKDG conformer, box = crystal ligand + 4 A
(or, `--blind`, no box: the blind pipeline's geometric pockets, so that a list spans pockets), and keep every pose
the ranker has to choose among: each Monte Carlo chain's best minimum (kind 0), the polished distinct candidates the
ranking sees (kind 1), and the crystal pose relaxed under the same energy (kind 2: the conformer with the crystal's
torsions, aligned onto it, then polished). Each is labelled with its symmetry-corrected RMSD (A) to the crystal
ligand and kept with its heavy-atom coordinates (`coords`, A), so new features can be computed without docking
again. Complexes are taken in a seeded random order and the output file is rewritten after every complex, so a run
can be stopped at any time.

train: loss per candidate list = listwise softmax cross-entropy whose target puts the mass on the poses within 2 A
(or, with none, on the lowest-RMSD pose) + binary cross-entropy on RMSD < 2 A. k-fold cross-validation by complex (a
complex's box and `--blind` lists share a fold) over a small grid (linear or one hidden layer, L2 penalty; the
penalty spares the energy and consensus weights, see `rescore.Rescorer`) selects by cross-validated top-1 among the
candidates; the chosen setting is refit on every decoy complex. The confidence head (a logistic regression on the
ranking logit, consensus, energy above the best pose and ligand size) is fit on the chosen setting's out-of-fold
logits of the top-1 candidates.

calibrate: the head is fit on physics-only training decoys, whose top-1 poses are right less often than the full
pipeline's, so its confidences run low; `calibrate` rescales its logit (Platt scaling, 2 parameters) to the top-1
outcomes of `dock-eval` runs made with the same rescorer and folds the map into the head (rankings unchanged).

    python -m sciddiff.dock.rescore_train decoys --split ../shared/data/docking/splits/train.txt --shard 0 --shards 2 \\
        --out runs/rescore/decoys_0.pt
    # the tuning subset of val, with dock-eval's default settings (its candidates, re-ranked offline):
    python -m sciddiff.dock.rescore_train decoys --split ../shared/data/docking/splits/val.txt --offset 0 --every 14 \\
        --limit 20 --score-model data/dock/score_model.pt --random-starts 80 --mc-rounds 40 --out runs/rescore/tune.pt
    python -m sciddiff.dock.rescore_train train --decoys runs/rescore/decoys_*.pt --hidden 0 32 --weight-decay 1 10 \\
        --out data/dock/rescore.pt
    python -m sciddiff.dock.rescore_train calibrate --rescorer data/dock/rescore.pt \\
        --results runs/dock/val_box_h0/results.csv runs/dock/val_box_h1/results.csv --out data/dock/rescore.pt
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

POLISH_LR = (0.05, 0.02, 0.05)  # the pipeline's final exact polish (docking.dock)


def relaxed_crystal(receptor, mol, seed: int = 0) -> torch.Tensor:
    """The crystal pose as the search could express it (fresh conformer with the crystal's torsions, aligned onto
    the crystal ligand) polished with the exact energy: (1, N, 3)."""
    from sciddiff.dock.ligand import (
        canonical_atom_order,
        generate_conformers,
        match_torsions,
        rotatable_torsions,
    )
    from sciddiff.dock.ligand_io import ligand_coords
    from sciddiff.dock.pose import PoseSpace
    from sciddiff.dock.scoring import ScoringFunction
    from sciddiff.dock.search import fit_pose, local_opt

    mol, order = canonical_atom_order(mol)  # as dock() docks it
    conformer = generate_conformers(mol, 1, seed=seed)[0]  # the conformer dock() starts from (same seed)
    tors = rotatable_torsions(mol)
    space = PoseSpace(torch.as_tensor(conformer), tors)
    matched = torch.as_tensor(match_torsions(conformer, ligand_coords(mol), tors))[None]
    tr, rot, theta = fit_pose(space, matched)
    sf = ScoringFunction(receptor, mol, tors.n)
    p = local_opt(sf, space, tr, rot, theta, steps=30, lr=POLISH_LR, exact=True)
    return space.coords(p.tr, p.rot, p.theta, realign=False).detach()[:, torch.as_tensor(np.argsort(order))]


def complex_decoys(cid: str, root: Path, settings, model=None, blind: bool = False) -> dict:
    from sciddiff.dock.box import box_around, box_from_ligand
    from sciddiff.dock.data import complex_files, complex_ligand
    from sciddiff.dock.docking import dock
    from sciddiff.dock.ligand import rotatable_torsions, symmetric_rmsd
    from sciddiff.dock.ligand_io import ligand_coords
    from sciddiff.dock.receptor import load_receptor, without_ligand_itself
    from sciddiff.dock.rescore import Featurizer

    mol, ligand = complex_ligand(root, cid)  # its SDF, or its MOL2 where the SDF does not sanitize (as dock-eval)
    receptor = load_receptor(complex_files(root, cid)[0])
    # as dock, dock-eval and dock-score: a copy of the ligand left in the protein file is not receptor (the relaxed
    # crystal pose scored +285 against it, and every label and feature was off)
    receptor, _ = without_ligand_itself(receptor, mol, box_around(ligand_coords(mol)))
    box = None if blind else box_from_ligand(ligand, 4.0)
    result = dock(receptor, mol, box, model, settings, show_progress=False)
    search, cand = torch.as_tensor(result.search), torch.as_tensor(result.candidates)
    poses = torch.cat([search, cand, relaxed_crystal(receptor, mol, settings.seed)])
    kind = torch.cat([torch.zeros(len(search)), torch.ones(len(cand)), torch.full((1,), 2.0)]).long()
    feats = Featurizer(receptor, mol, rotatable_torsions(mol).n)(poses, search)
    xtal = ligand_coords(mol)
    rmsd = torch.tensor([symmetric_rmsd(mol, p, xtal) for p in poses.numpy()], dtype=torch.float32)
    return {"complex": cid, "blind": blind, "features": feats, "rmsd": rmsd, "kind": kind, "coords": poses.float(),
            "order_energy": torch.as_tensor(result.order_energy)}


def run_decoys(args) -> int:
    from sciddiff.cli import UserError, check_output_path
    from sciddiff.dock.data import default_data_root, read_split
    from sciddiff.dock.rescore import FEATURE_NAMES
    from sciddiff.dock.settings import DockSettings, settings_dict
    from sciddiff.train.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    root = Path(args.data) if args.data else default_data_root()
    if not root.is_dir() or not Path(args.split).is_file():
        raise UserError(f"need the docking data folder ({root}) and the split file ({args.split})")
    if args.shards < 1 or not 0 <= args.shard < args.shards or args.every < 0 or args.offset < 0 or args.skip < 0 \
            or (args.limit is not None and args.limit < 1) or min(args.mc_chains, args.mc_rounds) < 1 \
            or min(args.samples, args.random_starts) < 0:
        raise UserError("need 0 <= --shard < --shards, --every/--offset/--skip/--samples/--random-starts >= 0, "
                        "--limit/--mc-chains/--mc-rounds >= 1")
    if args.every and (args.skip or args.shards > 1):
        raise UserError("--every takes dock-eval's selection (--offset, --limit); --skip and --shard/--shards "
                        "select from the seeded order instead: give one or the other")
    check_output_path(args.out)
    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} exists: pass --overwrite to replace its decoys (or choose another --out; "
                        "`train --decoys` takes several files)")
    ids = read_split(args.split)
    if args.every:  # dock-eval's selection (so that its candidates are reproduced exactly)
        ids = ids[args.offset:: args.every][: args.limit]
    else:
        ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))][args.shard:: args.shards][args.skip:]
        ids = ids[: args.limit]
    if not ids:
        raise UserError(f"no complexes of {args.split} selected (check --skip, --offset, --shard)")
    model = None
    if args.score_model:
        from sciddiff.cli import load_or_fail
        from sciddiff.dock.sampler import load_score_model

        model = load_or_fail(lambda f: load_score_model(f, "cpu"), args.score_model, "docking score model")
    settings = DockSettings(samples=args.samples if model is not None else 0, random_starts=args.random_starts,
                            sampler=args.sampler, mc_chains=args.mc_chains, mc_rounds=args.mc_rounds, seed=0)
    out, items, skipped = Path(args.out), [], 0
    for k, cid in enumerate(ids):
        t0 = time.perf_counter()
        try:
            items.append(complex_decoys(cid, root, settings, model, blind=args.blind))
        except (UserError, ValueError, RuntimeError) as err:  # unreadable input or an embedding failure: skip it
            print(f"{cid}: skipped ({err})", flush=True)
            skipped += 1
            continue
        it = items[-1]
        cand = it["kind"] == 1
        print(f"[{k + 1}/{len(ids)}] {cid}: {len(it['rmsd'])} poses, best candidate {it['rmsd'][cand].min():.2f} A, "
              f"energy top-1 {it['rmsd'][cand][it['order_energy'][0]]:.2f} A, crystal {it['rmsd'][-1]:.2f} A, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        save_checkpoint(out, {"items": items, "settings": settings_dict(settings), "command": _command(),
                              "features": list(FEATURE_NAMES)})
    if not items:  # saved after each complex above, so an interrupted run keeps what it docked
        raise UserError(f"none of the {len(ids)} complexes could be docked; nothing written to {out}")
    if skipped:  # as dock.data, dock --batch and dock-eval: the file is written, the run reports its failures
        print(f"{skipped} of {len(ids)} complexes skipped; {len(items)} in {out}", file=sys.stderr)
    return 1 if skipped else 0


# ------------------------------------------------------------------------------------------------------------ train
def _loss(model, items: list[dict]) -> torch.Tensor:
    total = 0.0
    for it in items:
        logit = model(it["features"])
        good = (it["rmsd"] < 2.0).float()
        target = good if good.any() else (it["rmsd"] == it["rmsd"].min()).float()
        listwise = -(target / target.sum() * torch.log_softmax(logit, 0)).sum()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, good)
        total = total + listwise + bce
    return total / len(items)


def ranking_metrics(model, items: list, confidence: bool = True) -> dict:
    """On the candidates the pipeline ranks (kind 1): top-1 < 2 A by energy vs by the model, the oracle (some
    candidate within 2 A), and how well the model's probability and the search consensus of the energy top-1 pose
    separate hits from misses (ROC AUC) and the Brier score of the model's probability there. `items` are decoy
    dicts scored by `model`, or (model, dict) pairs when model is None; `confidence` False leaves out the
    probability's metrics (before the confidence head is fit they would score its placeholder)."""
    from sciddiff.dock.evaluate import roc_auc
    from sciddiff.dock.rescore import FEATURE_NAMES

    col = FEATURE_NAMES.index("consensus")
    e1, m1, oracle, prob, cons = [], [], [], [], []
    with torch.no_grad():
        for pair in items:
            m, it = pair if model is None else (model, pair)
            cand = it["kind"] == 1
            rmsd, logit = it["rmsd"][cand], m(it["features"][cand])
            top = int(it["order_energy"][0])
            e1.append(float(rmsd[top]) < 2)
            m1.append(float(rmsd[int(logit.argmax())]) < 2)
            oracle.append(float(rmsd.min()) < 2)
            prob.append(float(m.probability(it["features"][cand][top:top + 1])[0]))
            cons.append(float(it["features"][cand][top, col]))
    hit, prob_a = np.array(e1), np.array(prob)
    metrics = {"n": len(items), "top1_energy": float(hit.mean()), "top1_model": float(np.mean(m1)),
               "oracle": float(np.mean(oracle)), "auc_consensus_energy_top1": roc_auc(np.array(cons), hit)}
    if confidence:
        metrics.update(auc_prob_energy_top1=roc_auc(prob_a, hit), brier_energy_top1=float(((prob_a - hit) ** 2).mean()),
                       mean_prob_energy_top1=float(prob_a.mean()))
    return metrics


def fit(items: list[dict], hidden: int, epochs: int, weight_decay: float, seed: int = 0, lr: float = 3e-3):
    """A Rescorer with feature standardisation from `items`, trained by Adam on batches of 16 complexes with an L2
    penalty (`weight_decay`) on all weights but the prior features' linear ones."""
    from sciddiff.dock.rescore import Rescorer

    torch.manual_seed(seed)
    feats = torch.cat([it["features"] for it in items])
    model = Rescorer(feats.shape[1], hidden=hidden)
    model.mean.copy_(feats.mean(0))
    model.std.copy_(feats.std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(items)).split(16):
            opt.zero_grad()
            (_loss(model, [items[i] for i in batch]) + weight_decay * model.penalty()).backward()
            opt.step()
    return model.eval()


def fit_confidence(scored: list) -> torch.Tensor:
    """Logistic regression of RMSD < 2 A on the confidence inputs of the top-1 candidates (by energy and by the
    model: the poses whose confidence users read first; all candidates would calibrate it to the lower base rate of
    the whole list), from (model, decoys) pairs whose model did not see those decoys; returns the head's weights."""
    inputs, labels = [], []
    with torch.no_grad():
        for m, it in scored:
            cand = it["kind"] == 1
            logit = m(it["features"][cand])
            top = torch.unique(torch.stack([it["order_energy"][0], logit.argmax()]))
            inputs.append(m.confidence_inputs(it["features"][cand][top], logit[top]))
            labels.append((it["rmsd"][cand][top] < 2).float())
    return logistic_fit(torch.cat(inputs), torch.cat(labels)).float()


def logistic_fit(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    """Weights w of P(y = 1) = sigmoid(x @ w) by maximum likelihood, an L2 penalty on all but the last weight (x's
    last column is the constant 1). L-BFGS with a strong-Wolfe line search: it converges on this convex loss also
    where hits and misses nearly separate, where plain Newton steps diverged (a calibration to a = -2e8)."""
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def run_train(args) -> None:
    from sciddiff.cli import UserError, check_output_path, load_or_fail
    from sciddiff.dock.rescore import FEATURE_NAMES, save_rescorer
    from sciddiff.train.checkpoint import load_checkpoint

    if args.folds < 2 or args.epochs < 1:
        raise UserError("--folds must be at least 2 (cross-validation) and --epochs at least 1")
    if min(args.hidden) < 0 or not all(math.isfinite(w) and w >= 0 for w in args.weight_decay):
        raise UserError("--hidden widths must be >= 0 and --weight-decay values finite and >= 0")
    if Path(args.out).suffix == ".json":  # the model's metadata goes to --out with a .json suffix
        raise UserError(f"--out {args.out}: name the model file (.pt); its metadata is written beside it as .json")
    check_output_path(args.out, inputs={"--decoys": args.decoys, "--extra-decoys": args.extra_decoys})
    torch.set_num_threads(1)

    commands = {}  # each decoy file's command, recorded with the rescorer

    def decoy_items(path: Path) -> list[dict]:
        blob = load_checkpoint(path)
        items, commands[str(path)] = blob["items"], blob.get("command")
        # files made before the record: the width tells a featuriser's output apart
        if blob.get("features", list(FEATURE_NAMES)) != list(FEATURE_NAMES) or any(
                it["features"].shape[1] != len(FEATURE_NAMES) for it in items):
            raise UserError(f"{path} holds pose features of another featuriser than this code's "
                            f"({len(FEATURE_NAMES)} features): make its decoys again with this version")
        return items

    def load(paths: list[str]) -> dict[tuple[str, bool], dict]:  # by complex and mode: shards may overlap
        files = [load_or_fail(decoy_items, path, "decoy file") for path in paths]
        return {(it["complex"], bool(it.get("blind", False))): it for items in files for it in items}

    by_key = load(args.decoys)
    extra = [it for key, it in load(args.extra_decoys).items() if key not in by_key]
    items = list(by_key.values())
    if not any(bool((it["rmsd"] < 2.0).any()) for it in [*items, *extra]):  # the confidence head learns "never"
        print(f"warning: none of the {len(items) + len(extra)} decoy lists holds a pose within 2 A: the ranking has "
              "nothing to prefer and the confidence head will call every pose wrong (confidence ~0); add complexes",
              file=sys.stderr)
    # folds by complex, so that a complex's box and blind lists are never on both sides of a split
    lists: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        lists.setdefault(it["complex"], []).append(i)
    complexes = list(lists.values())
    if len(complexes) < args.folds:
        raise UserError(f"{len(complexes)} complexes in the decoy files: fewer than --folds {args.folds}")
    folds = [[i for c in part for i in complexes[c]]
             for part in np.array_split(np.random.default_rng(1).permutation(len(complexes)), args.folds)]
    # an extra list of a cross-validated complex (its other mode, say) is held out with that complex's fold: in the
    # training side it leaked the complex into the fold that scores it
    held_complexes = [{items[i]["complex"] for i in fold} for fold in folds]
    report, out_of_fold = {}, {}
    for hidden in args.hidden:
        for wd in args.weight_decay:
            held_out = []  # every complex scored by the fold model that did not see it
            for k, fold in enumerate(folds):
                rest = ([items[i] for f in folds[:k] + folds[k + 1:] for i in f]
                        + [e for e in extra if e["complex"] not in held_complexes[k]])
                model = fit(rest, hidden, args.epochs, wd)
                held_out += [(model, items[i]) for i in fold]
            key = f"hidden={hidden} wd={wd}"
            report[key], out_of_fold[key] = ranking_metrics(None, held_out, confidence=False), held_out
            print(json.dumps({key: report[key]}), flush=True)
    best = max(report, key=lambda k: report[k]["top1_model"])
    hidden, wd = int(best.split()[0].split("=")[1]), float(best.split()[1].split("=")[1])
    # the confidence head cross-fitted too: each fold's head is fit on the other folds' out-of-fold logits (held_out
    # lists the folds in order, one model per fold), so these metrics score no pose the head was fit on
    start = 0
    for fold in folds:
        part, rest = (out_of_fold[best][start: start + len(fold)],
                      out_of_fold[best][:start] + out_of_fold[best][start + len(fold):])
        weight = fit_confidence(rest)
        for m, _ in part:
            m.conf_weight.copy_(weight)
        start += len(fold)
    chosen_cv = ranking_metrics(None, out_of_fold[best])
    conf_weight = fit_confidence(out_of_fold[best])  # the shipped head: fit on every complex's out-of-fold logits
    by_mode = {}
    for mode in ("box", "blind"):
        pairs = [p for p in out_of_fold[best] if p[1].get("blind", False) == (mode == "blind")]
        if pairs:
            by_mode[mode] = ranking_metrics(None, pairs)
    print(json.dumps({"chosen (with confidence head)": chosen_cv, "by mode": by_mode}), flush=True)
    model = fit(items + extra, hidden, args.epochs, wd)  # the chosen setting, refit on every decoy complex
    model.conf_weight.copy_(conf_weight)
    meta = {"version": time.strftime("%Y-%m-%d"), "hidden": hidden, "weight_decay": wd, "epochs": args.epochs,
            "complexes": len(complexes), "candidate_lists": len(items), "extra_complexes": len(extra),
            "poses": int(sum(len(it["rmsd"]) for it in items + extra)), "command": _command(),
            "decoy_commands": [commands[str(Path(p))] for p in args.decoys + args.extra_decoys],
            "folds": args.folds, "cross_validation": report, "chosen": best, "chosen_cross_validation": chosen_cv,
            "chosen_cross_validation_by_mode": by_mode,
            "confidence_weight": conf_weight.tolist(),
            "all_complexes": ranking_metrics(model, items)}
    save_rescorer(model, args.out, meta)
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"chose {best}; wrote {args.out}", flush=True)


def platt_fit(logit: np.ndarray, hit: np.ndarray) -> tuple[float, float]:
    """(a, c) maximising the likelihood of P(hit) = sigmoid(a * logit + c) with Platt's targets (N+ + 1) / (N+ + 2)
    for hits and 1 / (N- + 2) for misses (Platt 1999, as sklearn's sigmoid calibration): where the logits separate
    hits from misses the plain maximum lies at an infinite slope, confidences of exactly 0 and 1."""
    n_pos, n_neg = float(hit.sum()), float(len(hit) - hit.sum())
    target = np.where(hit > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = torch.as_tensor(np.stack([logit, np.ones_like(logit)], 1))
    a, c = logistic_fit(x, torch.as_tensor(target, dtype=torch.float64), l2=0.0).double().tolist()
    return a, c


def run_calibrate(args: argparse.Namespace) -> dict:
    """Recalibrate the confidence head on `dock-eval` runs made with this rescorer: Platt scaling of the head's logit
    against "top-1 within 2 A", folded into the head's weights, so rankings (and every logit) stay as they are."""
    import csv

    from scipy.special import expit

    from sciddiff.cli import UserError, check_output_path, load_or_fail, same_version
    from sciddiff.dock.rescore import load_rescorer, save_rescorer
    from sciddiff.train.checkpoint import write_json

    model = load_or_fail(load_rescorer, args.rescorer, "rescoring model")
    if Path(args.out).resolve() != Path(args.rescorer).resolve():
        check_output_path(args.out)
    logit, hit = [], []
    for path in map(Path, args.results):
        if not path.is_file():
            raise UserError(f"{path}: no such dock-eval results file")
        used = None  # the rescorer the run recorded: summary.json once it finished, run.json from its start
        for record in (path.parent / "summary.json", path.parent / "run.json"):
            if used is None and record.is_file():
                used = json.loads(record.read_text()).get("rescorer")
        if not same_version(used, model.version):
            raise UserError(f"{path} was not made with {args.rescorer} (its run used {used or 'no recorded rescorer'})")
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"confidence_top1", "rmsd_top1"} <= set(reader.fieldnames or ()):
                raise UserError(f"{path} is not a dock-eval results.csv (no confidence_top1 and rmsd_top1 columns)")
            for row in reader:
                if row.get("error") or not row.get("confidence_top1"):
                    continue
                conf = min(max(float(row["confidence_top1"]), 1e-3), 1 - 1e-3)  # the CSV keeps 3 decimals
                logit.append(math.log(conf / (1 - conf)))
                hit.append(float(float(row["rmsd_top1"]) < 2.0))
    if len(set(hit)) < 2:
        raise UserError("calibration needs both hits and misses among the top-1 poses")
    z, y = np.array(logit), np.array(hit)
    a, c = platt_fit(z, y)
    with torch.no_grad():
        model.conf_weight.mul_(a)
        model.conf_weight[-1] += c  # the head's last input is the constant 1
    before, after = expit(z), expit(a * z + c)
    if ((after - y) ** 2).mean() > ((before - y) ** 2).mean():
        print(f"warning: on these {len(y)} top-1 poses the recalibrated confidence scores a worse Brier score than "
              "before: too few results to calibrate on?", file=sys.stderr)
    meta = dict(model.meta)
    meta["calibration"] = {"a": a, "c": c, "results": [str(r) for r in args.results], "n": len(y),
                           "hit_rate": float(y.mean()), "mean_confidence_before": float(before.mean()),
                           "mean_confidence_after": float(after.mean()),
                           "brier_before": float(((before - y) ** 2).mean()),
                           "brier_after": float(((after - y) ** 2).mean()),
                           "command": " ".join(["python -m sciddiff.dock.rescore_train calibrate --rescorer",
                                                str(args.rescorer), "--results", *map(str, args.results),
                                                "--out", str(args.out)])}
    meta["version"] = f"{meta.get('version', '?')}, calibrated {time.strftime('%Y-%m-%d')}"
    save_rescorer(model, args.out, meta)
    write_json(Path(args.out).with_suffix(".json"), meta, indent=1)
    print(json.dumps(meta["calibration"]), flush=True)
    return meta["calibration"]


def _command() -> str:
    return " ".join(["python -m sciddiff.dock.rescore_train", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    from sciddiff.dock.settings import SAMPLERS, DockSettings

    p = argparse.ArgumentParser(prog="python -m sciddiff.dock.rescore_train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decoys", help="dock training complexes and save labelled pose features")
    d.add_argument("--split", required=True, help="file listing <folder>/<complex_id> per line")
    d.add_argument("--data", default=None, help="docking data root (default $SCIDDIFF_DATA/docking or ../shared/data/docking)")
    d.add_argument("--shard", type=int, default=0,
                   help="this process's share of the complexes, 0..SHARDS-1 (default 0)")
    d.add_argument("--shards", type=int, default=1, help="number of shards run side by side (default 1)")
    d.add_argument("--limit", type=int, default=None, help="at most this many complexes (after --skip)")
    d.add_argument("--skip", type=int, default=0, help="leave out the first SKIP complexes of the (seeded) order: "
                   "decoys for more complexes without redoing earlier ones")
    d.add_argument("--every", type=int, default=0,
                   help="take every k-th complex from --offset, in split order, instead of a seeded random order")
    d.add_argument("--offset", type=int, default=0, help="with --every: the first complex taken (default 0)")
    d.add_argument("--score-model", default=None,
                   help="score-network checkpoint for diffusion starts (default: physics only, as for training)")
    d.add_argument("--samples", type=int, default=8, help="diffusion starts with --score-model (default 8)")
    d.add_argument("--sampler", choices=SAMPLERS, default=DockSettings.sampler,
                   help=f"reverse-diffusion sampler of the diffusion starts, with --score-model (default "
                        f"{DockSettings.sampler}; before 2026-12-07 afternoon reverse_sde)")
    d.add_argument("--random-starts", type=int, default=88, help="search starts at random poses (default 88)")
    d.add_argument("--mc-chains", type=int, default=96, help="Monte Carlo chains (default 96)")
    d.add_argument("--mc-rounds", type=int, default=20, help="Monte Carlo rounds per chain (default 20)")
    d.add_argument("--blind", action="store_true",
                   help="dock without a box, into the pipeline's geometric pockets (candidate lists span pockets)")
    d.add_argument("--out", required=True, help="decoy file (.pt), rewritten after every complex")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    d.set_defaults(func=run_decoys)
    t = sub.add_parser("train", help="train the rescorer on decoy files")
    t.add_argument("--decoys", nargs="+", required=True, help="decoy files (`decoys`): cross-validated and trained on")
    t.add_argument("--extra-decoys", nargs="+", default=[],
                   help="decoy files for training only: in every cross-validation fold and the final fit, never "
                        "scored (synthetic complexes from `python -m sciddiff.dock.synthetic`)")
    t.add_argument("--hidden", type=int, nargs="+", default=[0, 32],
                   help="hidden widths tried (0 = linear; default 0 32)")
    t.add_argument("--weight-decay", type=float, nargs="+", default=[1e-2, 1e-1, 1.0],
                   help="L2 penalties tried on the non-prior weights (default 0.01 0.1 1)")
    t.add_argument("--epochs", type=int, default=40, help="passes over the complexes per fit (default 40)")
    t.add_argument("--folds", type=int, default=4, help="cross-validation folds, by complex (default 4)")
    t.add_argument("--out", required=True, help="the rescorer (.pt); its metadata is written beside it as .json")
    t.set_defaults(func=run_train)
    c = sub.add_parser("calibrate", help="recalibrate the confidence on dock-eval results made with this rescorer")
    c.add_argument("--rescorer", required=True, help="the rescorer (.pt) the dock-eval runs used")
    c.add_argument("--results", nargs="+", required=True,
                   help="dock-eval results.csv files (their summary.json beside them names the rescorer)")
    c.add_argument("--out", required=True, help="the recalibrated rescorer (.pt); its metadata beside it as .json")
    c.set_defaults(func=run_calibrate)
    from sciddiff.cli import run_command

    args = p.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
