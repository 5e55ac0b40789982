"""Training chains: manifest reading, sequence-cluster split, and the one-file tensor set the trainer reads.

Natural chains come from `<data>/proteins/manifest.tsv` (columns id, path, chain, length, n_breaks, ...). Only unbroken chains
(no consecutive CA farther than 4.2 A apart) are used, so every training example is one continuous backbone. Optionally the
whole unbroken 50-300-residue chains of the docking proteins (`<data>/docking/`) are added to the training split (see
`prepare_chains`).

Split: chains are clustered by shared sequence 5-mers (single linkage; two chains join when they share at least 30% of the
shorter one's 5-mers, which merges bound/unbound copies of one protein, point mutants and antibody frameworks) and whole
clusters go to train / val / test, so no test chain has a close homologue in training. The split is deterministic (seeded)
and shipped as `data/protein/split.tsv` (id, cluster, split).

`chains.pt` (written by `prepare_chains`, read on the GPU machine without biopython) holds:
coords float32 (total_residues, 3, 3) N/CA/C in Angstrom; lengths int64 (n,); split int64 (n,) 0/1/2 = train/val/test;
ids list[str]; sequences list[str]; cluster int64 (n,); ss int64 (total_residues,) DSSP labels 0/1/2 = loop/helix/strand
(`sciddiff.protein.ss`) for secondary-structure conditioning.
"""
from __future__ import annotations

import csv
import gzip
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sciddiff.protein.ss import SS_UNKNOWN, labels_to_string, secondary_structure_labels
from sciddiff.train.checkpoint import atomic_file, save_checkpoint

SPLITS = ("train", "val", "test")
KMER = 5
LINK_FRACTION = 0.3
REPO_ROOT = Path(__file__).resolve().parents[2]
SPLIT_FILE = REPO_ROOT / "data" / "protein" / "split.tsv"
MANIFEST_COLUMNS = ("id", "path", "chain", "n_breaks")  # the ones read here; more may follow


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The shared data folder: an explicit path, else $SCIDDIFF_DATA, else <repo>/../shared/data."""
    return Path(path or os.environ.get("SCIDDIFF_DATA") or REPO_ROOT.parent / "shared" / "data")


def read_manifest(root: str | os.PathLike | None = None, unbroken_only: bool = True) -> list[dict[str, str]]:
    """Rows of proteins/manifest.tsv (paths made absolute), unbroken chains only by default (a row whose n_breaks is
    not a number counts as broken). A manifest lacking one of MANIFEST_COLUMNS raises ValueError."""
    folder = data_root(root) / "proteins"
    manifest = folder / "manifest.tsv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no protein manifest at {manifest} (set --data or SCIDDIFF_DATA)")
    try:
        with open(manifest) as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{manifest} is not a protein manifest ({err})") from None
    if missing:
        raise ValueError(f"{manifest} is not a protein manifest: no column {', '.join(missing)} "
                         f"(needs the tab-separated columns {', '.join(MANIFEST_COLUMNS)})")
    for row in rows:
        if row["path"] is not None:  # None: a short row, reported by `row_problem`
            row["path"] = str(folder / row["path"])
    return [r for r in rows if not unbroken_only or row_problem(r) is None and int(r["n_breaks"]) == 0]


def row_problem(row: dict[str, str]) -> str | None:
    """Why a manifest row cannot be used (fields missing, n_breaks not a number), or None."""
    if any(row.get(c) is None for c in MANIFEST_COLUMNS):
        return "the row has fewer fields than the manifest header"
    try:
        int(row["n_breaks"])
    except ValueError:
        return f"n_breaks {row['n_breaks']!r} is not a number"
    return None


def cluster_sequences(sequences: list[str], k: int = KMER, link_fraction: float = LINK_FRACTION) -> np.ndarray:
    """Single-linkage clusters of sequences sharing >= link_fraction of the shorter one's k-mers; ids 0.. by first member."""
    kmer_sets = [{s[i : i + k] for i in range(len(s) - k + 1)} for s in sequences]
    index: dict[str, list[int]] = defaultdict(list)
    for i, kmers in enumerate(kmer_sets):
        for kmer in kmers:
            index[kmer].append(i)
    parent = list(range(len(sequences)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, kmers in enumerate(kmer_sets):
        shared: dict[int, int] = defaultdict(int)
        for kmer in kmers:
            for j in index[kmer]:
                if j > i:
                    shared[j] += 1
        for j, count in shared.items():
            if count >= link_fraction * max(1, min(len(kmers), len(kmer_sets[j]))):
                parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(sequences))]
    relabel: dict[int, int] = {}
    return np.array([relabel.setdefault(r, len(relabel)) for r in roots])


def split_clusters(cluster: np.ndarray, fractions: tuple[float, float] = (0.05, 0.10), seed: int = 0) -> np.ndarray:
    """Assign whole clusters to val / test (target chain fractions) and the rest to train; returns 0/1/2 per chain.

    Clusters are visited in a seeded random order and taken only while they fit under the target, so one big family
    (antibodies) can never swamp the held-out sets.
    """
    rng = np.random.default_rng(seed)
    sizes = np.bincount(cluster)
    order = rng.permutation(len(sizes))
    split_of_cluster = np.zeros(len(sizes), dtype=np.int64)
    for split, fraction in ((1, fractions[0]), (2, fractions[1])):
        target, taken = fraction * len(cluster), 0
        for c in order:
            if split_of_cluster[c] == 0 and taken + sizes[c] <= target:
                split_of_cluster[c] = split
                taken += sizes[c]
    return split_of_cluster[cluster]


def write_split(path: str | os.PathLike, ids: list[str], cluster: np.ndarray, split: np.ndarray) -> None:
    lines = ["id\tcluster\tsplit"] + [f"{i}\t{c}\t{SPLITS[s]}" for i, c, s in zip(ids, cluster, split)]
    with atomic_file(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def read_split(path: str | os.PathLike = SPLIT_FILE) -> dict[str, str]:
    """id -> 'train' | 'val' | 'test' from a split.tsv; ValueError for a file that is not one."""
    try:
        with open(path) as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            has_columns = {"id", "split"} <= set(reader.fieldnames or [])
            split = {row["id"]: row["split"] for row in reader} if has_columns else None
    except (UnicodeDecodeError, csv.Error):
        split = None
    if split is None or not set(split.values()) <= set(SPLITS):
        raise ValueError(f"{path} is not a split file (tab-separated columns id, cluster, split; split one of "
                         f"{', '.join(SPLITS)})")
    return split


def docking_chains(root: str | os.PathLike | None = None, min_length: int = 50, max_length: int = 300
                   ) -> list[tuple[str, str, np.ndarray]]:
    """(id, sequence, N/CA/C coords) of every whole, unbroken protein chain of min-max residues in the docking complexes
    (`<data>/docking/<set>/<complex>/<complex>_protein.pdb.gz`), one per distinct sequence."""
    from Bio.PDB import PDBParser
    from tqdm import tqdm

    from sciddiff.protein.pdbio import read_chain

    files = sorted((data_root(root) / "docking").glob("*/*/*_protein.pdb.gz"))
    seen: set[str] = set()
    out = []
    for path in tqdm(files, desc="reading docking proteins", unit="file"):
        try:
            with gzip.open(path, "rt") as handle:
                chain_ids = [c.id for c in next(iter(PDBParser(QUIET=True).get_structure("p", handle)))]
        except (ValueError, EOFError, UnicodeDecodeError, OSError, StopIteration) as err:  # as pdbio.read_chain
            _warn(f"skipped docking protein {path}: not a readable PDB file ({str(err) or type(err).__name__})")
            continue
        for cid in chain_ids:
            try:
                chain = read_chain(path, cid)
            except ValueError:  # a chain of ligands / waters only
                continue
            if min_length <= len(chain) <= max_length and not chain.ca_breaks() and chain.sequence not in seen:
                seen.add(chain.sequence)
                out.append((f"docking:{path.parent.parent.name}/{path.parent.name}:{cid.strip()}", chain.sequence,
                            chain.coords[:, :3]))
    return out


def _warn(message: str) -> None:
    """One `warning:` line on stderr, between the lines of a running progress bar."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def prepare_chains(root: str | os.PathLike | None, out: str | os.PathLike, split_path: str | os.PathLike | None = None,
                   seed: int = 0, docking: bool = True, new_split: bool = False) -> dict:
    """Read every unbroken natural chain, cluster and split them, and save the one-file tensor set `out` (module doc).

    With split_path pointing at an existing split.tsv (and not `new_split`), that split is reused (ids missing from it
    go to train); otherwise a new split is computed and, if split_path is given, written there, atomically and only
    once every chain has been read. A manifest row that cannot be read (missing or non-PDB file, no such chain,
    malformed fields) is skipped with one `warning:` line; a malformed manifest or split file, or no usable chain at
    all, raises ValueError before anything is written. With `docking`, whole unbroken chains of the docking proteins
    are added to train, except those whose sequence cluster (clustered jointly with the natural chains) holds a val or
    test chain, and those identical in sequence to a natural chain; the split file lists natural chains only.
    """
    from tqdm import tqdm

    from sciddiff.protein.pdbio import read_chain

    known = read_split(split_path) if split_path is not None and Path(split_path).is_file() and not new_split else None
    rows = read_manifest(root, unbroken_only=False)
    ids, seqs, coords = [], [], []
    skipped = short = marked = 0
    for row in tqdm(rows, desc="reading chains", unit="chain"):
        problem = row_problem(row)
        if problem is None and int(row["n_breaks"]) != 0:
            marked += 1
            continue
        if problem is None and not Path(row["path"]).is_file():
            problem = f"no file {row['path']}"
        if problem is None:
            try:
                chain = read_chain(row["path"], row["chain"] or None)
            except ValueError as err:  # an empty or non-PDB file, no such chain (the message names the file)
                problem = str(err)
        if problem is not None:
            _warn(f"skipped chain {row['id']}: {problem}")
            skipped += 1
            continue
        if chain.ca_breaks() or len(chain) < 20:
            short += 1
            continue
        ids.append(row["id"])
        seqs.append(chain.sequence)
        coords.append(chain.coords[:, :3])
    if ids and (marked or short):
        tqdm.write(f"note: left out {marked} chain(s) with n_breaks > 0 in the manifest and {short} with a chain "
                   "break (a C-alpha gap over 4.2 A; non-standard residues other than MSE are not read) or under 20 "
                   "residues", file=sys.stderr)
    if not ids:
        raise ValueError(f"no usable chain in {data_root(root) / 'proteins' / 'manifest.tsv'} ({len(rows)} row(s): "
                         f"{skipped} unreadable, {marked} with n_breaks > 0, {short} broken or shorter than 20 residues)")
    # a split file names chains by id: two chains of one id would share one entry
    if dup := next((i for i, n in Counter(ids).items() if n > 1), None):
        raise ValueError(f"the manifest lists the chain id {dup!r} more than once: ids must be unique")
    cluster = cluster_sequences(seqs)
    if known is not None:
        split = np.array([SPLITS.index(known.get(i, "train")) for i in ids])
        # a reused split with a cluster spanning train and held-out chains: the held-out side wins (no leak)
        for k in np.unique(cluster):
            members = cluster == k
            if len(np.unique(split[members])) > 1:
                split[members] = split[members].max()
        # a chain the split file does not list (read by a newer reader, e.g. one with MSE) joins its cluster's
        # held-out split: never a training copy of a val/test chain
        listed = np.array([i in known for i in ids])
        for k in np.unique(cluster[~listed]):
            split[(cluster == k) & ~listed] = split[(cluster == k) & listed].max(initial=0)
    else:
        split = split_clusters(cluster, seed=seed)
    natural_ids, natural_cluster, natural_split = list(ids), cluster, split
    if docking:
        natural = set(seqs)
        extra = [c for c in docking_chains(root) if c[1] not in natural]
        joint = cluster_sequences(seqs + [c[1] for c in extra])
        held_out = set(joint[: len(ids)][split > 0].tolist())
        keep = [c for c, k in zip(extra, joint[len(ids):]) if k not in held_out]
        ids += [c[0] for c in keep]
        seqs += [c[1] for c in keep]
        coords += [c[2] for c in keep]
        split = np.concatenate([split, np.zeros(len(keep), dtype=split.dtype)])
        cluster = cluster_sequences(seqs)
    data = {
        "coords": torch.from_numpy(np.concatenate(coords)).float(),
        "lengths": torch.tensor([len(s) for s in seqs]),
        "split": torch.from_numpy(split),
        "cluster": torch.from_numpy(cluster),
        "ids": ids,
        "sequences": seqs,
    }
    data["ss"] = secondary_structure_labels(data["coords"], data["lengths"])
    if known is None and split_path is not None:  # only now: a failed run leaves the old split file as it was
        write_split(split_path, natural_ids, natural_cluster, natural_split)
    save_checkpoint(out, data)
    return data


class ChainSet:
    """Chains of one split held as frames, batched PyG-style (residues of all chains concatenated, `batch` vector).

    Frames are computed once (float32); translations are centred per chain and divided by `scale` (A per model unit).
    """

    def __init__(self, data: dict, split: str = "train", scale: float = 10.0, device: str | torch.device = "cpu"):
        from sciddiff.protein.geometry import frames_from_backbone

        keep = data["split"] == SPLITS.index(split)
        starts = torch.cumsum(data["lengths"], 0) - data["lengths"]
        pieces = [data["coords"][s : s + n] for s, n, k in zip(starts.tolist(), data["lengths"].tolist(), keep.tolist()) if k]
        if not pieces:
            raise ValueError(f"no chains in split {split!r}")
        self.lengths = torch.tensor([len(p) for p in pieces], device=device)
        self.ids = [i for i, k in zip(data["ids"], keep.tolist()) if k]
        xyz = torch.cat(pieces).to(device)
        rot, ca = frames_from_backbone(xyz[:, 0], xyz[:, 1], xyz[:, 2])
        chain = torch.repeat_interleave(torch.arange(len(pieces), device=device), self.lengths)
        mean = torch.zeros(len(pieces), 3, device=device).index_add_(0, chain, ca) / self.lengths[:, None]
        self.rot, self.trans = rot, (ca - mean[chain]) / scale
        # Chain files prepared before secondary-structure labels existed: every residue "not given".
        ss = data["ss"] if "ss" in data else torch.full((len(data["coords"]),), SS_UNKNOWN)
        self.ss = ss[keep.repeat_interleave(data["lengths"])].to(device)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def ss_strings(self) -> list[str]:
        """Each chain's secondary-structure labels as an L/H/E string."""
        return [labels_to_string(self.ss[s : s + n]) for s, n in zip(self.starts.tolist(), self.lengths.tolist())]

    def batch(self, chains: Tensor) -> dict[str, Tensor]:
        """Frames of the given chain indices: rot (N,3,3), trans (N,3), batch (N,), residue index (N,)."""
        lengths = self.lengths[chains]
        batch = torch.repeat_interleave(torch.arange(len(chains), device=lengths.device), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(int(lengths.sum()), device=lengths.device) - offsets[batch]
        idx = self.starts[chains][batch] + pos
        return {"rot": self.rot[idx], "trans": self.trans[idx], "batch": batch, "residue_index": pos, "ss": self.ss[idx]}

    def sample_chains(self, max_residues: int, generator: torch.Generator | None = None,
                      length_balance: float = 0.0) -> Tensor:
        """Random chain indices whose total length stays within max_residues (at least one chain).

        Chains are drawn without replacement with probability proportional to length^-length_balance: 0 draws chains
        uniformly, so a chain weighs in the per-residue loss by its length; 1 gives every chain the same expected weight
        (as FrameDiff's one-length batches do), so short chains are not drowned by long ones.
        """
        if length_balance:
            # Weighted sampling without replacement: sort exponential clocks of rate w (Efraimidis & Spirakis).
            rate = self.lengths.cpu().double().pow(-length_balance)
            clocks = torch.empty(len(self), dtype=torch.float64).exponential_(generator=generator) / rate
            order = clocks.argsort().to(self.lengths.device)
        else:
            order = torch.randperm(len(self), generator=generator, device="cpu").to(self.lengths.device)
        total = torch.cumsum(self.lengths[order], 0)
        return order[: max(1, int((total <= max_residues).sum()))]
