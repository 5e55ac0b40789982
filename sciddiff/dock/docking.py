"""The docking pipeline: fresh conformers (their distinct shapes) -> pose proposals (reverse diffusion and/or random)
-> physics search with the scoring function -> exact polishing -> clustering and ranking.

Blind docking (no box) docks into the `pockets` best ligand-sized geometric pockets (`sciddiff.dock.pockets`), each
with the search a box gets (from random starts by default: `pocket_samples`), all pockets' chains in one batch (the
better half of the pockets get the second half of the Monte Carlo rounds; their grid maps share nodes), then
(`refine_sites`, default 2) once more in a box around the best pose of each of the best pockets, with diffusion
starts, and ranks all poses together by the same energy. Scores are the Vina-like intermolecular energy / (1 + 0.0585
N_rot, Vina's rotor count) in kcal/mol-like units (lower is better). The
candidates (the 2 x `poses` best distinct polished minima) are ranked by the search objective (intermolecular +
intra-ligand energy) or (settings.ranking "learned") by a learned rescorer's ranking score
(`sciddiff.dock.rescore`). With a rescorer its calibrated P(RMSD < 2 A) is the confidence; without one the confidence is the
consensus of the search: the fraction of all search chains whose final pose lies within 2 A (RMSD) of the pose.
Both rankings of the same candidates are kept in the result so that evaluations compare them on identical poses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from rdkit import Chem
from tqdm.auto import tqdm

from sciddiff.cli import UserError
from sciddiff.dock.box import Box, box_around
from sciddiff.dock.ligand import (
    automorphisms,
    canonical_atom_order,
    distinct_shapes,
    generate_conformers,
    rmsd_matrix,
    rotatable_torsions,
)
from sciddiff.dock.pockets import find_pockets
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.receptor import Receptor
from sciddiff.dock.scoring import LatticeNodes, ScoringFunction, StackedGrids
from sciddiff.dock.search import POLISH_STEP_SIZES, Poses, basin_hopping, fit_pose, local_opt
from sciddiff.dock.settings import DockSettings

RECEPTOR_CROP = 22.0  # residues the score model sees around the box centre (as in training, data.TRAIN_CROP)


@dataclass
class DockResult:
    coords: np.ndarray        # (K, N, 3) ranked poses, heavy atoms in the ligand's atom order
    score: np.ndarray         # (K,) Vina-like score
    energy: np.ndarray        # (K,) search objective (inter + intra)
    confidence: np.ndarray    # (K,) learned P(RMSD < 2 A) with a rescorer, else the consensus, in [0, 1]
    region: np.ndarray        # (K,) index of the box/pocket the pose was found in
    boxes: list[Box]
    timings: dict[str, float] = field(default_factory=dict)
    n_torsions: int = 0
    n_shapes: int = 1                        # distinct conformer shapes searched
    candidates: np.ndarray | None = None     # (C, N, 3) polished distinct minima the ranked poses come from
    order_energy: list[int] = field(default_factory=list)   # candidate indices ranked by energy (distinct)
    order_learned: list[int] | None = None   # candidate indices ranked by the rescorer, when one was used
    search: np.ndarray | None = None         # (P, N, 3) every Monte Carlo chain's best minimum (before polishing)
    consensus: np.ndarray | None = None      # (K,) fraction of the search chains ending within 2 A of each pose

    def summary(self) -> dict:
        return {"n_torsions": self.n_torsions, "n_shapes": self.n_shapes,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "boxes": [{"center": b.center.round(3).tolist(), "size": b.size.round(3).tolist()} for b in self.boxes]}


def _distinct(x: torch.Tensor, energy: torch.Tensor, n: int, perms: torch.Tensor, threshold: float = 1.0) -> list[int]:
    """Indices of up to n lowest-energy poses (N, 3) that are pairwise more than `threshold` A apart in RMSD minimised
    over the ligand's automorphisms `perms` (K, N), so a pose and its copy with a phenyl ring flipped count as one (with
    plain RMSD they are ~2 A apart and both were ranked). Greedy: each pose is compared with the kept ones only."""
    keep: list[int] = []
    kept = x[:0]
    for j in energy.argsort().tolist():
        swapped = x[j][perms]  # (K, N, 3): the pose under every automorphism
        if len(kept) and not bool((((swapped[None] - kept[:, None]) ** 2).sum(-1).mean(-1).amin(1).sqrt()
                                   > threshold).all()):
            continue
        keep.append(j)
        kept = x[keep]
        if len(keep) == n:
            break
    return keep


def dock(receptor: Receptor, mol: Chem.Mol, box: Box | None = None, model=None, settings: DockSettings | None = None,
         device: str = "cpu", show_progress: bool = True, rescorer=None) -> DockResult:
    s = settings or DockSettings()
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    gen = torch.Generator().manual_seed(s.seed)
    mol, atom_order = canonical_atom_order(mol)  # the same molecule docks alike in any atom order
    try:
        confs = generate_conformers(mol, max(1, s.conformers), seed=s.seed)
    except ValueError as err:
        raise UserError(f"cannot generate a 3D conformer for the ligand: {err}") from None
    tors = rotatable_torsions(mol)
    # torsions are searched, ring puckers and bond angles are not: a single conformer cannot reach the crystal pose
    # of about a third of ligands (< 1 A for 25 of 36 training ligands with one conformer, 34 of 36 with the best of
    # 8), so every distinct shape is searched, the starts and chains shared among them
    shapes = [confs[k] for k in distinct_shapes(confs, tors)]
    space = PoseSpace(torch.as_tensor(np.stack(shapes)), tors)
    extent = float(np.ptp(confs[0], 0).max())
    if box is not None:
        regions = [box]
    else:
        regions = find_pockets(receptor, n=s.pockets, ligand_extent=extent, workers=torch.get_num_threads())
        if not regions:
            raise UserError("no pocket found on the protein: give a box (--autobox-ligand or --center/--size)")
    timings["prepare"] = time.perf_counter() - tick

    pool, pool_region, grids = [], [], []
    nodes = LatticeNodes() if box is None else None  # blind: the pockets and refined sites overlap
    refine = s.refine_sites if box is None else 0
    n_starts = s.samples + s.random_starts  # per box or pocket; those not from reverse diffusion are random
    samples = s.samples if model is not None else 0  # a box, and blind the refined sites: around a ligand-like pose
    pocket_samples = (samples if box is not None or s.pocket_samples is None or model is None
                      else min(s.pocket_samples, n_starts))
    bar = tqdm(total=(len(regions) * (pocket_samples > 0) + refine * (samples > 0)) * s.steps
               + (2 if refine else 1) * s.mc_rounds, disable=not show_progress, desc="docking", leave=False)

    def search(boxes: list[Box], n_samples: int, halve: bool = False) -> None:
        """The full search in each box, `n_samples` of its starts from reverse diffusion, all boxes' chains in one
        batch; their minima join the pool. halve: after half the Monte Carlo rounds, only the chains of the better
        half of the boxes (by their best energy so far) go on."""
        n_random = n_starts - n_samples
        first_box = len(grids)  # region index of boxes[0]: grids[i] is region i's scoring function
        tick = time.perf_counter()
        for region in boxes:
            grids.append(ScoringFunction(receptor, mol, tors.n, region=region, function=s.scoring, nodes=nodes))
        stack = StackedGrids(grids[-len(boxes):])
        timings["grid"] = timings.get("grid", 0.0) + time.perf_counter() - tick
        starts, start_box = [], []
        for k, region in enumerate(boxes):
            n_before = len(starts)
            if n_samples > 0:
                tick = time.perf_counter()
                starts.append(diffusion_starts(model, receptor, mol, tors, space, region,
                                               replace(s, samples=n_samples), gen, device,
                                               lambda it: _counting(it, bar)))
                timings["diffusion"] = timings.get("diffusion", 0.0) + time.perf_counter() - tick
            if n_random > 0:
                half = torch.as_tensor(np.maximum(region.size / 2 - extent / 4, 1.0))
                starts.append(space.random(n_random, torch.as_tensor(region.center), half, generator=gen)
                              + (torch.arange(n_random) % space.n_conformers,))
            start_box += [k] * sum(len(p[0]) for p in starts[n_before:])
        tr, rot, theta, conf = (torch.cat([p[i] for p in starts]) for i in range(4))
        box = torch.tensor(start_box)
        tick = time.perf_counter()
        poses = local_opt(stack.rows(box), space, tr, rot, theta, steps=s.opt_steps, conf=conf)
        # many cheap starts, then Monte Carlo only from each box's best minima (per-step cost is mostly overhead,
        # so a wide first pass is nearly free; the chains are where the time goes)
        keep = torch.cat([idx[poses.energy[idx].argsort()[: s.mc_chains]]
                          for idx in (torch.nonzero(box == k)[:, 0] for k in range(len(boxes)))])
        poses, box = poses.take(keep), box[keep]
        rounds = s.mc_rounds // 2 if halve and len(boxes) > 1 else s.mc_rounds
        poses = basin_hopping(stack.rows(box), space, poses, rounds, s.mc_steps, gen,
                              progress=lambda it: _counting(it, bar))
        if rounds < s.mc_rounds:  # the rest of the rounds in the better boxes, from each chain's best minimum
            best = torch.full((len(boxes),), torch.inf).scatter_reduce(0, box, poses.energy, "amin")
            go_on = torch.isin(box, best.argsort()[: (len(boxes) + 1) // 2])
            more = basin_hopping(stack.rows(box[go_on]), space, poses.take(go_on), s.mc_rounds - rounds, s.mc_steps,
                                 gen, progress=lambda it: _counting(it, bar))
            poses, box = Poses.cat([poses.take(~go_on), more]), torch.cat([box[~go_on], box[go_on]])
        timings["search"] = timings.get("search", 0.0) + time.perf_counter() - tick
        pool_region.append(box + first_box)
        pool.append(poses)

    # blind: a pocket whose chains trail after half the rounds seldom holds the best pose at the end (and the
    # refined sites are the best pockets'): the better half of the pockets get the second half of the rounds
    search(regions, pocket_samples, halve=True)
    # blind: the pockets' boxes are placed by geometry, not around a ligand; search again in a box around the best
    # pose of each of the `refine` best pockets, as --autobox-ligand would around that pose
    if refine:
        found, site = Poses.cat(pool), torch.cat(pool_region)
        members = (torch.nonzero(site == k)[:, 0] for k in range(len(regions)))
        best_of_site = [int(i[found.energy[i].argmin()]) for i in members]
        refined = []
        for j in sorted(best_of_site, key=lambda j: float(found.energy[j]))[:refine]:
            p = found.take(torch.tensor([j]))
            x = space.coords(p.tr, p.rot, p.theta, realign=False, conf=p.conf)[0]
            refined.append(box_around(x.detach().numpy()))
        regions.extend(refined)
        search(refined, samples)
    bar.close()

    tick = time.perf_counter()
    allp = Poses.cat(pool)
    regs = torch.cat(pool_region)
    all_x = space.coords(allp.tr, allp.rot, allp.theta, realign=False, conf=allp.conf).detach()
    # chains often end in the same minimum: polish the 2 x poses best DISTINCT ones
    perms = automorphisms(mol)
    order = torch.as_tensor(_distinct(all_x, allp.energy, 2 * s.poses, perms))
    polished, polished_reg = [], []
    for i in range(len(regions)):  # exact polish with each pose's own region's receptor atoms
        idx = order[regs[order] == i]
        if len(idx) == 0:
            continue
        p = allp.take(idx)
        polished.append(local_opt(grids[i], space, p.tr, p.rot, p.theta, steps=30, lr=POLISH_STEP_SIZES, exact=True,
                                  conf=p.conf))
        polished_reg.append(regs[idx])
    best = Poses.cat(polished)
    best_reg = torch.cat(polished_reg)
    x = space.coords(best.tr, best.rot, best.theta, realign=False, conf=best.conf).detach()
    order_energy = _distinct(x, best.energy, s.poses, perms)
    order_learned, keep = None, order_energy
    if rescorer is not None:
        from sciddiff.dock.rescore import Featurizer

        with torch.no_grad():
            feats = Featurizer(receptor, mol, tors.n)(x, all_x)
            logit = rescorer(feats)
            prob = rescorer.probability(feats, logit)
        order_learned = _distinct(x, -logit, s.poses, perms)
        keep = order_learned if s.ranking == "learned" else order_energy
    keep_t = torch.as_tensor(keep)
    consensus = (rmsd_matrix(x[keep_t], all_x) < 2.0).float().mean(1)
    confidence = prob[keep_t] if rescorer is not None else consensus
    with torch.no_grad():
        scores = torch.stack([grids[int(best_reg[j])].score(x[j:j + 1])[0] for j in keep])
    timings["rank"] = time.perf_counter() - tick
    atoms = torch.as_tensor(np.argsort(atom_order))  # back to the input's atom order
    x, all_x = x[:, atoms], all_x[:, atoms]
    return DockResult(coords=x[keep_t].numpy(), score=scores.numpy(), energy=best.energy[keep_t].numpy(),
                      confidence=confidence.numpy(), region=best_reg[keep_t].numpy(), boxes=regions, timings=timings,
                      n_torsions=tors.n, n_shapes=space.n_conformers, candidates=x.numpy(), order_energy=order_energy,
                      order_learned=order_learned, search=all_x.numpy(), consensus=consensus.numpy())


def _counting(iterable, bar):
    for item in iterable:
        yield item
        bar.update(1)


def diffusion_starts(model, receptor: Receptor, mol: Chem.Mol, tors, space: PoseSpace, region: Box, s: DockSettings,
                     gen: torch.Generator, device: str, progress) -> tuple[torch.Tensor, ...]:
    """`s.samples` reverse-diffusion samples in `region` (the receptor cropped around its centre), as search starts
    (tr, rot, theta, conformer index) of `space`'s conformer 0; the sampler's seed is drawn from `gen`."""
    from sciddiff.dock import featurize  # e3nn: only when a score model is used
    from sciddiff.dock.sampler import ComplexScore, sample_poses

    rec = featurize.receptor_graph(receptor, center=region.center, radius=RECEPTOR_CROP)
    if rec["pos"].shape[0] == 0:
        rec = featurize.receptor_graph(receptor)
    lig = featurize.ligand_graph(mol, tors)
    dev = torch.device(device)
    rec = {k: v.to(dev) for k, v in rec.items()}
    lig = {k: v.to(dev) for k, v in lig.items()}
    dspace = PoseSpace(space.local.to(dev), tors)
    score = ComplexScore(model, rec, lig, dspace)
    dgen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    tr, rot, theta = sample_poses(score, torch.as_tensor(region.center, device=dev), s.samples, s.steps, dgen, progress,
                                  sampler=s.sampler)
    x = dspace.coords(tr, rot, theta).cpu()
    if not bool(torch.isfinite(x).all()):  # Kabsch would fail deep inside with a LinAlgError
        raise UserError(f"the score model {getattr(model, 'version', '')} gives non-finite poses (weights of a "
                        "diverged training run?): another --model, or --model none")
    return fit_pose(space, x) + (torch.zeros(len(x), dtype=torch.long),)  # the diffusion samples conformer 0


