"""Backbone PDB input/output with biopython.

A backbone is a float array (L, 4, 3) of N, CA, C, O in Angstrom, in residue order. Readers accept `.pdb` and `.pdb.gz`
(gzipped PDB as the PDB distributes it) and keep only amino-acid residues (the standard ones and selenomethionine, read
as methionine) with all of N, CA, C (O may be absent: it is then NaN). Writers emit one chain of poly-glycine (the complete residue for a 4-atom backbone, as RFdiffusion does),
atomically (temporary file + rename) so a crashed run never leaves half a PDB behind.
"""
from __future__ import annotations

import gzip
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from Bio.PDB import PDBIO, MMCIFParser, PDBParser, StructureBuilder
from Bio.PDB.PDBExceptions import PDBConstructionException
from Bio.PDB.Polypeptide import index_to_one, is_aa, three_to_index

from sciddiff.protein.geometry import ATOMS
from sciddiff.train.checkpoint import atomic_file


@dataclass
class Chain:
    """One protein chain's backbone: coords (L, 4, 3) N/CA/C/O (NaN where absent), one-letter sequence, residue numbers."""

    coords: np.ndarray
    sequence: str
    resnums: np.ndarray
    chain_id: str
    protein_chains_in_file: int = 1  # chains of the file's first model with amino-acid residues (one is read)

    def __len__(self) -> int:
        return len(self.sequence)

    def ca_breaks(self, max_ca_ca: float = 4.2) -> int:
        """Number of chain breaks (consecutive CA farther apart than max_ca_ca A, the manifest's n_breaks rule)."""
        d = np.linalg.norm(np.diff(self.coords[:, 1], axis=0), axis=-1)
        return int((d > max_ca_ca).sum())


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _amino_acid(res) -> str | None:
    """A residue's amino-acid name if it is one: a standard residue, or selenomethionine (MSE: a HETATM in the PDB's
    files, an ATOM in PDBFixer's and MD tools') as methionine, as FrameDiff and AlphaFold read it."""
    if res.get_resname() == "MSE" and res.id[0] in (" ", "H_MSE"):
        return "MET"
    return res.get_resname() if res.id[0] == " " and is_aa(res, standard=True) else None


def read_chain(path: str | os.PathLike, chain_id: str | None = None) -> Chain:
    """Read the backbone of one chain (the first protein chain unless chain_id is given) from a PDB or mmCIF file
    (plain or .gz; mmCIF by its .cif suffix, chains by their author ids), first model only."""
    path = Path(path)
    try:
        with _open_text(path) as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # biopython warns on every discontinuous chain; breaks are measured
            parser = MMCIFParser(QUIET=True) if path.name.endswith((".cif", ".cif.gz")) else PDBParser(QUIET=True)
            structure = parser.get_structure(path.stem, handle)
    except (ValueError, EOFError, UnicodeDecodeError, OSError, KeyError, IndexError, PDBConstructionException) as err:
        # empty, corrupt (a bad coordinate, an mmCIF cut short), binary, unreadable
        raise ValueError(f"{path}: not a readable PDB or mmCIF file ({str(err) or type(err).__name__})") from None
    models = list(structure)
    if not models:
        raise ValueError(f"{path}: no model in file")
    chains = {c.id.strip(): c for c in models[0]}  # a blank chain id reads as ""
    protein = [c for c in chains.values() if any(_amino_acid(r) and all(a in r for a in ATOMS[:3]) for r in c)]
    if chain_id is None:
        if not chains:
            raise ValueError(f"{path}: no chain in file")
        chain = protein[0] if protein else next(iter(chains.values()))  # a DNA or ligand chain may come first
    elif chain_id.strip() in chains:
        chain = chains[chain_id.strip()]
    else:
        has = ", ".join(repr(c) if c else "one without an id" for c in chains) or "none"
        raise ValueError(f"{path}: no chain {chain_id!r} (has {has})")
    coords, seq, nums = [], [], []
    for res in chain:
        name = _amino_acid(res)
        if name is None or not all(a in res for a in ATOMS[:3]):
            continue
        if not all(np.isfinite(res[a].coord).all() for a in ATOMS if a in res):  # NaN here means "absent O" only
            raise ValueError(f"{path}: residue {res.id[1]} of chain {chain.id!r} has a non-finite coordinate")
        coords.append([res[a].coord if a in res else np.full(3, np.nan, np.float32) for a in ATOMS])
        seq.append(index_to_one(three_to_index(name)))
        nums.append(res.id[1])
    if not coords:
        raise ValueError(f"{path}: chain {chain.id!r} has no residue with N, CA and C")
    return Chain(np.asarray(coords, dtype=np.float32), "".join(seq), np.asarray(nums), chain.id, len(protein))


def backbone_to_pdb_string(coords: np.ndarray, chain_id: str = "A", resname: str = "GLY") -> str:
    """PDB text of a 4-atom backbone (L, 4, 3); residues numbered from 1."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[1:] != (4, 3):
        raise ValueError(f"expected a backbone of shape (L, 4, 3), got {coords.shape}")
    if not np.isfinite(coords).all():
        raise ValueError("backbone has non-finite coordinates")
    builder = StructureBuilder.StructureBuilder()
    builder.init_structure("backbone")
    builder.init_model(0)
    builder.init_chain(chain_id)
    builder.init_seg("    ")
    for i, residue in enumerate(coords, start=1):
        builder.init_residue(resname, " ", i, " ")
        for name, xyz in zip(ATOMS, residue):
            builder.init_atom(name, xyz, 0.0, 1.0, " ", f" {name:<3}", element=name[0])
    pdbio = PDBIO()
    pdbio.set_structure(builder.get_structure())
    out = io.StringIO()
    pdbio.save(out)
    # Biopython pads its TER record to 81 columns; the format's lines hold 80
    return "".join(line[:80] + "\n" if len(line) > 81 and not line[80:].strip() else line
                   for line in out.getvalue().splitlines(keepends=True))


def write_backbone(path: str | os.PathLike, coords: np.ndarray, chain_id: str = "A") -> None:
    """Write a backbone (L, 4, 3) as a poly-glycine PDB file, atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(backbone_to_pdb_string(coords, chain_id))
