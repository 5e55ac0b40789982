"""Evaluate a folder of backbones against natural chains: per-chain metrics, goal summary, MMD with baselines, plots.

The reference set is either a folder of PDB files or, by default, the held-out natural chains (the `test` split of
data/protein/split.tsv, read from the shared data folder) whose lengths lie within 0.75-1.25x the samples' length range
(at least 10 chains: the window widens around its centre if needed), since compactness and distance profiles scale
with length. Two trivial baselines of the same lengths as the samples are
scored side by side: an ideal alpha helix and a random phi/psi walk. MMD^2 is computed on per-chain CA distance profiles
(see `metrics.distance_profile`) with a Gaussian kernel whose bandwidth is the reference set's median pairwise distance,
so the numbers of all candidate sets share one scale; with the default reference the natural val split is scored too
(the natural-vs-natural floor).
"""
from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from sciddiff.cli import print_note
from sciddiff.protein import metrics, ramachandran
from sciddiff.protein.data import read_manifest, read_split
from sciddiff.protein.geometry import backbone_from_frames, frames_from_backbone
from sciddiff.protein.pdbio import Chain, read_chain

PDB_SUFFIXES = (".pdb", ".pdb.gz", ".ent", ".ent.gz", ".cif", ".cif.gz")
LENGTH_MATCH = (0.75, 1.25)  # natural reference chains within these factors of the samples' length range
PLOT_FILES = ("phi_psi.png", "distances.png")  # what `make_plots` writes into its folder


def pdb_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(PDB_SUFFIXES))


def structure_stem(path: Path) -> str:
    """The file name without its structure suffix (`x.cif.gz` -> `x`)."""
    return next(path.name[: -len(s)] for s in sorted(PDB_SUFFIXES, key=len, reverse=True) if path.name.endswith(s))


def complete_backbone(chain: Chain) -> np.ndarray:
    """(L, 4, 3) with missing O atoms (NaN) placed ideally from the frames, so every metric is defined."""
    coords = chain.coords.astype(np.float64)
    if np.isnan(coords[:, 3]).any():
        x = torch.from_numpy(coords)
        rot, trans = frames_from_backbone(x[:, 0], x[:, 1], x[:, 2])
        ideal = backbone_from_frames(rot, trans).numpy()
        missing = np.isnan(coords[:, 3]).any(-1)
        coords[missing, 3] = ideal[missing, 3]
    return coords


def unbonded(bb: np.ndarray) -> np.ndarray:
    """(L - 1,) bool: C(i) and N(i + 1) of a backbone (L, 4, 3) over 2 A apart, no peptide bond."""
    return np.linalg.norm(bb[1:, 0] - bb[:-1, 2], axis=-1) > 2.0


def read_folder(folder: str | os.PathLike, only: Collection[str] | None = None
                ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """File names, backbones (L, 4, 3) and chain gaps (L - 1,) bool: a residue number that skips ahead or back
    (missing residues, a non-standard one that is not read) where C(i) and N(i + 1) are not bonded (over 2 A apart: a
    numbering that skips over a bonded peptide, chymotrypsin's, is no gap); an insertion code (52, 52A) is no gap.
    Consecutive numbers are always a peptide, however far apart: a generated chain that breaks is judged broken.
    `only`: the file names to read (a sample run's, from its samples.json). A file's first protein chain is read (a
    note names files with more). Files of one name in two formats (x.pdb and x.cif.gz) count once, the first in
    `PDB_SUFFIXES` order (a note names the others)."""
    names, backbones, gaps, several, twice = [], [], [], [], []
    stems: set[str] = set()
    suffix_rank = {suffix: k for k, suffix in enumerate(PDB_SUFFIXES)}

    def stem_then_format(path: Path) -> tuple[str, int]:
        return structure_stem(path), suffix_rank[path.name[len(structure_stem(path)):]]

    for path in sorted(pdb_files(folder), key=stem_then_format):
        if only is not None and path.name not in only:
            continue
        if structure_stem(path) in stems:
            twice.append(path.name)
            continue
        stems.add(structure_stem(path))
        chain = read_chain(path)
        if chain.protein_chains_in_file > 1:
            several.append(f"{path.name} ({chain.protein_chains_in_file})")
        names.append(path.name)
        backbones.append(complete_backbone(chain))
        gaps.append(~np.isin(np.diff(chain.resnums), (0, 1)) & unbonded(backbones[-1]))
    if twice:
        print_note(f"{folder}: {', '.join(twice[:5])}{' ...' if len(twice) > 5 else ''} left out: the same name in "
                   "another format was read")
    if several:
        print_note(f"{folder}: only the first protein chain of {', '.join(several[:5])}"
                   f"{' ...' if len(several) > 5 else ''} is read (split the chains into files of their own to use "
                   "them)")
    return names, backbones, gaps


def natural_split(split: str, root: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Backbones of one split of the natural chains (unbroken ones listed in data/protein/split.tsv)."""
    wanted = {i for i, s in read_split().items() if s == split}
    rows = [r for r in read_manifest(root) if r["id"] in wanted]
    return [complete_backbone(read_chain(r["path"], r["chain"] or None)) for r in rows]


def length_matched(chains: list[np.ndarray], lo: float, hi: float, minimum: int = 10) -> list[np.ndarray]:
    """Chains with lo <= length <= hi (compactness and distance profiles depend on length); widened symmetrically
    until at least `minimum` chains qualify."""
    lengths = np.array([len(c) for c in chains])
    centre = 0.5 * (lo + hi)
    order = np.argsort(np.abs(lengths - centre))
    inside = [i for i in order if lo <= lengths[i] <= hi]
    keep = inside if len(inside) >= minimum else order[:minimum]
    return [chains[i] for i in sorted(keep)]


def baselines(lengths: list[int], seed: int = 0) -> dict[str, list[np.ndarray]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "ideal_helix": [metrics.ideal_helix(n) for n in lengths],
        "random_walk": [metrics.random_walk(n, gen) for n in lengths],
    }


def distribution_distances(candidates: dict[str, list[np.ndarray]], reference: list[np.ndarray]) -> dict[str, float]:
    ref = np.stack([metrics.distance_profile(b) for b in reference])
    bandwidth = metrics.median_bandwidth(ref)
    out = {"bandwidth": bandwidth}
    for name, backbones in candidates.items():
        prof = np.stack([metrics.distance_profile(b) for b in backbones])
        out[name] = metrics.mmd(prof, ref, bandwidth)
    return out


def evaluate(backbones: list[np.ndarray], names: list[str], reference: list[np.ndarray] | None = None,
             reference_name: str = "natural test split", data: str | os.PathLike | None = None,
             plots: str | os.PathLike | None = None, gaps: list[np.ndarray] | None = None,
             reference_gaps: list[np.ndarray] | None = None) -> dict:
    """Metrics of `backbones` (and of the reference and baselines) as one JSON-ready dict; PNG plots into `plots`.
    `gaps` / `reference_gaps`: each chain's unbonded neighbours (`read_folder`), left out of the bonded metrics."""
    per_chain = [metrics.chain_metrics(b, g) for b, g in zip(backbones, gaps or [None] * len(backbones))]
    lengths = [len(b) for b in backbones]
    candidates = {"samples": backbones, **baselines(lengths)}
    floor = None
    if reference is None:
        lo, hi = LENGTH_MATCH[0] * min(lengths), LENGTH_MATCH[1] * max(lengths)
        reference = length_matched(natural_split("test", data), lo, hi)
        floor = length_matched(natural_split("val", data), lo, hi)
        reference_name = f"{reference_name}, lengths {min(map(len, reference))}-{max(map(len, reference))}"
        if not all(lo <= len(c) <= hi for c in reference):  # too few chains that long: the nearest ones stand in
            reference_name += (f" (NOT length-matched: too few natural chains of {lo:.0f}-{hi:.0f} residues; size-"
                               "dependent metrics such as Rg and the distance MMD do not compare)")
    result = {
        "summary": metrics.summarize(per_chain),
        "reference": {"name": reference_name, "num_chains": len(reference),
                      "summary": metrics.summarize([metrics.chain_metrics(b, g) for b, g in
                                                    zip(reference, reference_gaps or [None] * len(reference))])},
        "baselines": {k: metrics.summarize([metrics.chain_metrics(b) for b in v]) for k, v in candidates.items()
                      if k != "samples"},
    }
    if floor is not None:
        candidates["natural_val"] = floor
    result["mmd_distance_profile"] = distribution_distances(candidates, reference)
    result["chains"] = [{"name": n, **m} for n, m in zip(names, per_chain)]
    if plots is not None:
        result["plots"] = make_plots(backbones, reference, candidates, Path(plots))
    return result


def target_agreement(chains: list[dict], targets: dict[str, str]) -> dict | None:
    """How well DSSP of the samples matches the secondary structure they were asked for (`sample --ss`, whose targets
    samples.json lists): per-residue agreement and the fraction of target helix / strand residues built as such."""
    pairs = [(c["dssp"].replace("-", "L"), targets[c["name"]]) for c in chains
             if c["name"] in targets and len(targets[c["name"]]) == len(c["dssp"])]
    if not pairs:
        return None
    got, want = "".join(g for g, _ in pairs), "".join(w for _, w in pairs)

    def recall(state: str) -> float | None:  # None (JSON null): no residue asked for that state
        hits = [g == w for g, w in zip(got, want) if w == state]
        return float(np.mean(hits)) if hits else None

    return {"chains": len(pairs), "agreement": float(np.mean([g == w for g, w in zip(got, want)])),
            "helix_recall": recall("H"), "strand_recall": recall("E")}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def make_plots(backbones: list[np.ndarray], reference: list[np.ndarray], candidates: dict[str, list[np.ndarray]],
               folder: Path) -> list[str]:
    from sciddiff.plots import pyplot, save_png

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    table = ramachandran.general_table()
    grid = np.arange(-179.0, 180.0, 2.0)

    def angles(bbs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [metrics.phi_psi(b) for b in bbs]
        phi = np.degrees(np.concatenate([p[0] for p in pairs]))
        psi = np.degrees(np.concatenate([p[1] for p in pairs]))
        ok = np.isfinite(phi) & np.isfinite(psi)
        return phi[ok], psi[ok]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    for ax, (title, bbs) in zip(axes, (("samples", backbones), ("reference", reference))):
        phi, psi = angles(bbs)
        ax.contourf(grid, grid, table.T, levels=[ramachandran.ALLOWED, ramachandran.FAVOURED, 1.0],
                    colors=["#d6ecfa", "#8fcbf2"])
        ax.scatter(phi, psi, s=2, c="k", alpha=0.4, linewidths=0)
        fav = ramachandran.classify(np.radians(phi), np.radians(psi))["favoured"]
        ax.set(title=f"{title}: {len(bbs)} chains, {fav:.0%} favoured", xlabel="phi (deg)", xlim=(-180, 180),
               ylim=(-180, 180), aspect="equal")
    axes[0].set_ylabel("psi (deg)")
    phi_psi_png = folder / PLOT_FILES[0]
    save_png(fig, phi_psi_png)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    centres = 0.5 * (metrics.PROFILE_BINS[1:] + metrics.PROFILE_BINS[:-1])
    for name, bbs in {"reference": reference, **candidates}.items():
        prof = np.mean([metrics.distance_profile(b) for b in bbs], axis=0)
        axes[0].plot(centres, prof, label=name, lw=2.5 if name in ("samples", "reference") else 1.2)
    axes[0].set(xlabel="CA-CA distance (A), |i-j| >= 2", ylabel="neighbours per residue per 1 A shell",
                title="CA distance profile (mean over chains)")
    axes[0].legend()
    bins = np.linspace(2.5, 5.0, 51)
    for name, bbs in (("samples", backbones), ("reference", reference)):
        d = np.concatenate([metrics.ca_ca_distances(b) for b in bbs])
        axes[1].hist(d, bins=bins, density=True, histtype="step", lw=2, label=name)
    axes[1].axvspan(metrics.CA_CA_IDEAL - metrics.CA_CA_TOL, metrics.CA_CA_IDEAL + metrics.CA_CA_TOL, color="0.9")
    axes[1].set(xlabel="CA(i)-CA(i+1) (A)", ylabel="density", title="consecutive CA distance")
    axes[1].legend()
    dist_png = folder / PLOT_FILES[1]
    save_png(fig, dist_png)
    return [str(phi_psi_png), str(dist_png)]


def format_report(result: dict) -> str:
    """Human-readable table of the goal metrics: samples vs reference vs baselines."""
    cols = [("samples", result["summary"]), ("reference", result["reference"]["summary"]),
            *result["baselines"].items()]
    rows = [
        ("chains", "num_chains", "{:.0f}"),
        ("CA(i)-CA(i+1) ok & no clash", "ca_valid_fraction", "{:.1%}"),
        ("CA-CA within 3.8+/-0.2 (pairs)", "ca_ca_within_tol", "{:.1%}"),
        ("clash-free chains", "ca_clash_free_fraction", "{:.1%}"),
        ("C-N bond (A)", "C-N_mean", "{:.3f}"),
        ("CA-C-N angle (deg)", "CA-C-N_mean", "{:.1f}"),
        ("C-N-CA angle (deg)", "C-N-CA_mean", "{:.1f}"),
        ("omega from planar (deg)", "omega_deviation_mean", "{:.1f}"),
        ("twisted peptides (> 30 deg)", "omega_twisted", "{:.1%}"),
        ("Rama favoured", "rama_favoured", "{:.1%}"),
        ("Rama allowed", "rama_allowed", "{:.1%}"),
        ("helix", "helix", "{:.2f}"),
        ("strand", "strand", "{:.2f}"),
        ("helix + strand", "helix_plus_strand", "{:.2f}"),
        ("Rg / 1.59 N^0.465", "rg_ratio_mean", "{:.2f}"),
        ("Rg within 15%", "rg_within_15pct", "{:.1%}"),
    ]
    width = 32
    lines = [f"reference: {result['reference']['name']}",
             "".ljust(width) + "".join(name[:14].rjust(15) for name, _ in cols)]
    for label, key, fmt in rows:
        vals = [s.get(key) for _, s in cols]  # None: undefined for every chain (e.g. angles of 1-residue chains)
        lines.append(label.ljust(width) + "".join(("-" if v is None else fmt.format(v)).rjust(15) for v in vals))
    if result.get("ss_targets"):
        t = result["ss_targets"]
        lines.append(f"secondary structure asked for (samples.json, {t['chains']} chains): DSSP agrees on "
                     f"{t['agreement']:.1%} of residues; helix built {_percent(t['helix_recall'])}, strand "
                     f"{_percent(t['strand_recall'])}")
    mmd = result["mmd_distance_profile"]
    lines.append("MMD^2 to reference (distance profiles, lower is closer; bandwidth {:.3f}):".format(mmd["bandwidth"]))
    lines.append("  " + "  ".join(f"{k} {v:.4f}" for k, v in mmd.items() if k != "bandwidth"))
    return "\n".join(lines)
