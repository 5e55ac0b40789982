"""Reading the text files users name, shared by the receptor and ligand readers: plain or gzipped text, format
suffixes (looking through `.gz`), PDBQT records as PDB records, RDKit kept quiet. Every
problem the user can fix is raised as `sciddiff.cli.UserError` with one line of text.
"""
from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rdkit import RDLogger

from sciddiff.cli import UserError

# AutoDock types that are not an element symbol (PDBQT files)
AUTODOCK_TYPES = {"A": "C", "NA": "N", "NS": "N", "OA": "O", "OS": "O", "SA": "S", "HD": "H", "HS": "H"}


def read_text(path: str | os.PathLike) -> str:
    """A text file the user named, plain or gzipped, undecodable bytes replaced and a byte-order mark dropped (what
    spreadsheet programs start CSV files with); a missing file or a folder is a UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                return fh.read().removeprefix("\ufeff")
        return path.read_text(encoding="utf-8", errors="replace").removeprefix("\ufeff")
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def format_suffix(path: str | os.PathLike) -> str:
    """The format suffix of a file, looking through a trailing .gz (`x.sdf.gz` -> `.sdf`)."""
    path = Path(path)
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def _pdbqt_element(autodock_type: str) -> str:
    """AutoDock 4 / Vina atom type -> element: A aromatic carbon, NA/NS/OA/OS/SA acceptors, HD/HS polar H, G0-G9 and
    CG0-CG9 macrocycle carbons; metals and halogens are their elements (Zn, CL, Br). Case matters where AutoDock's
    does: NA is an acceptor nitrogen, Na sodium."""
    t = autodock_type
    return AUTODOCK_TYPES.get(t) or ("C" if re.fullmatch(r"C?G\d", t.upper()) else t.capitalize())


def pdbqt_to_pdb(text: str) -> str:
    """The ATOM/HETATM records of a PDBQT file as PDB records: the AutoDock type (last field) becomes the element
    (columns 77-78); partial charges and the torsion tree (ROOT, BRANCH, TORSDOF) are dropped."""
    lines = []
    for ln in text.splitlines():
        if ln.startswith(("ATOM", "HETATM")):  # no type field: the element is guessed from the atom name
            fields = ln[66:].split()
            lines.append(f"{ln[:66]:<66}          {_pdbqt_element(fields[-1]) if fields else '':>2}")
        elif ln.startswith(("MODEL", "ENDMDL", "TER")):
            lines.append(ln)
    return "\n".join(lines) + "\n"


@contextmanager
def rdkit_quiet() -> Iterator[None]:
    """RDKit logs parse errors and warnings over several lines (ours are one UserError line), and its embedder logs
    UFF typing warnings for hypervalent atoms that change nothing."""
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")
