"""Reading and checking docking inputs; writing poses.

Conventions: coordinates in Angstrom, float32 numpy arrays. The receptor keeps heavy atoms only (hydrogens are
dropped: inputs disagree on whether they carry them); metals, cofactors and crystal waters (HETATM) stay as receptor
atoms because ligands clash with them otherwise (`keep_waters=False` drops the waters, as Vina-style receptor
preparation does). Every reader accepts `.gz`. Every problem the user can
fix is raised as `sciddiff.cli.UserError` with one line of text.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import combinations, count
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from sciddiff.cli import UserError

MAX_HEAVY_ATOMS = 150
PROTEIN_FORMATS = (".pdb", ".cif", ".pdbqt", ".ent", ".mmcif")  # each also .gz
AUTOBOX_ADD = 4.0  # A around a ligand on every side: gnina's --autobox_add default
MAX_BOX_SIDE = 60.0  # A: a search box beyond this is a blind search; blind docking finds pockets instead
# AutoDock types that are not an element symbol (PDBQT files)
AUTODOCK_TYPES = {"A": "C", "NA": "N", "NS": "N", "OA": "O", "OS": "O", "SA": "S", "HD": "H", "HS": "H"}
REPAIRS_PROP = "sciddiff_repairs"  # what `load_ligand` changed to read the file, if anything
INPUT_H_PROP = "_sciddiff_input_hydrogens"  # how many H atoms the input molecule carried (they are docked without)
H_ISOTOPES_PROP = "_sciddiff_h_isotopes"  # atom property: mass numbers of its labelled H (D, T), e.g. "2,2,2"
INPUT_ORDER_PROP = "_sciddiff_input_order"  # the input's atoms in file order: heavy-atom index, or h<parent>:<mass>
FILE_INDEX_PROP = "_sciddiff_file_index"  # atom property: its index in the input file (0-based)
# SD tags that describe one pose (ours, gnina's, smina's): a new pose of the molecule must not inherit the input's
POSE_TAGS = ("rank", "confidence", "consensus", "score", "energy", "pocket", "inter", "intra", "gauss1", "gauss2",
             "repulsion", "hydrophobic", "hbond", "n_torsions", "moved", "minimizedAffinity", "minimizedRMSD",
             "CNNscore", "CNNaffinity", "CNN_VS", "CNNaffinity_variance")
WATERS = {"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"}
AMINO_ACIDS = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
               "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
NUCLEOTIDES = {"A", "C", "G", "U", "I", "DA", "DC", "DG", "DT", "DI"}
STANDARD_ELEMENTS = {"C", "N", "O", "S", "P", "H", "D", "Se"}
# Modified residues that are amino acids for the residue graph.
AA_ALIASES = {"MSE": "MET", "HID": "HIS", "HIE": "HIS", "HIP": "HIS", "CYX": "CYS", "SEP": "SER", "TPO": "THR",
              "PTR": "TYR", "KCX": "LYS", "LLP": "LYS", "CSO": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS",
              "CYM": "CYS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS"}  # Amber / CHARMM protonation states


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


def _stem_suffix(path: str | os.PathLike) -> str:
    """The format suffix of a file, looking through a trailing .gz (`x.sdf.gz` -> `.sdf`)."""
    path = Path(path)
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


# ----------------------------------------------------------------------------------------------------- receptor
@dataclass
class Receptor:
    """Heavy atoms of a protein (with cofactors and metals) plus a one-node-per-residue view for the network."""

    coords: np.ndarray            # (A, 3) heavy atoms
    elements: np.ndarray          # (A,) element symbols, capitalised ("C", "Zn")
    atom_names: np.ndarray        # (A,) PDB atom names
    res_names: np.ndarray         # (A,) residue names
    atom_res: np.ndarray          # (A,) index into the residue arrays, -1 for hetero atoms
    is_hetero: np.ndarray         # (A,) bool: cofactor / metal / non-standard
    res_type: np.ndarray          # (R,) int in [0, 21): 20 amino acids + unknown
    res_ca: np.ndarray            # (R, 3) C-alpha
    res_n: np.ndarray             # (R, 3) backbone N (C-alpha when missing)
    res_c: np.ndarray             # (R, 3) backbone C
    res_sc: np.ndarray            # (R, 3) side-chain centroid (C-alpha for glycine)
    res_chain: np.ndarray         # (R,) chain id
    pdb_text: str = field(repr=False, default="")   # the input's ATOM/HETATM records, for complex output
    hydrogens: np.ndarray | None = None  # (A,) H bonded to each heavy atom in the file; -1 where its residue has none
    het_group: np.ndarray | None = None  # (A,) index into het_ids of each hetero atom's residue, -1 for amino acids
    het_ids: list[tuple[str, str, int, str]] = field(default_factory=list)  # (resname, chain, resseq, icode)

    @property
    def n_residues(self) -> int:
        return len(self.res_ca)


def _mmcif_to_pdb(text: str, path: str | os.PathLike) -> str:
    """The first model of an mmCIF file as PDB records (biopython), so that one reader and one complex writer serve
    both formats. Multi-letter chain ids (large assemblies) are renamed to unused single characters."""
    from Bio.PDB import PDBIO, MMCIFParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = MMCIFParser(QUIET=True).get_structure("rec", io.StringIO(text))
        except Exception as err:  # biopython raises many kinds on malformed files
            raise UserError(f"cannot parse protein {path} as mmCIF: {err}") from None
    models = list(structure)
    if not models:
        raise UserError(f"no atoms in {path}: not an mmCIF coordinate file?")
    model = models[0]
    if len(models) > 1:
        _note_models(path, len(models))
    for extra in models[1:]:
        structure.detach_child(extra.id)
    chains = list(model)
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" if c not in {ch.id for ch in chains}]
    long_ids = [ch for ch in chains if len(ch.id) != 1]
    if len(long_ids) > len(free):
        raise UserError(f"protein {path} has {len(chains)} chains: too many for one PDB-style receptor; keep the "
                        f"chains around the site")
    renamed = []
    for chain, new_id in zip(long_ids, free):
        renamed.append(f"{chain.id} -> {new_id}")
        chain.id = new_id
    if renamed:
        _note(f"protein {path}: chain ids longer than PDB's one letter renamed: {', '.join(renamed)}")
    # serial numbers wrap past PDB's five digits (as large PDB-format files do): the reader goes by names, not serials
    serial = count()
    for residue in model.get_residues():
        for atom in residue.get_unpacked_list():  # every altloc
            atom.serial_number = next(serial) % 99_999 + 1
    out = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    try:
        writer.save(out, preserve_atom_numbering=True)
    except Exception as err:  # e.g. a residue number beyond PDB's four digits
        raise UserError(f"cannot convert protein {path} to PDB records: {err}") from None
    return out.getvalue()


def _pdbqt_element(autodock_type: str) -> str:
    """AutoDock 4 / Vina atom type -> element: A aromatic carbon, NA/NS/OA/OS/SA acceptors, HD/HS polar H, G0-G9 and
    CG0-CG9 macrocycle carbons; metals and halogens are their elements (Zn, CL, Br). Case matters where AutoDock's
    does: NA is an acceptor nitrogen, Na sodium."""
    t = autodock_type
    return AUTODOCK_TYPES.get(t) or ("C" if re.fullmatch(r"C?G\d", t.upper()) else t.capitalize())


def _pdbqt_to_pdb(text: str) -> str:
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


def load_receptor(path: str | os.PathLike, keep_waters: bool = True) -> Receptor:
    """Parse a PDB, mmCIF or PDBQT file (optionally .gz) with biopython. Raises UserError for unreadable files or a
    protein without residues.

    Waters in the file are receptor atoms unless `keep_waters` is False: a crystal structure's waters sit where its
    ligand does not, and PoseBusters counts a pose on one as a clash (measured in docs/dock.md, "Crystal waters")."""
    from Bio.PDB import PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionWarning

    suffix = _stem_suffix(path)
    if suffix not in PROTEIN_FORMATS:
        raise UserError(f"protein must be a {', '.join(PROTEIN_FORMATS)} file (optionally .gz), got {Path(path).name}")
    text = read_text(path)
    if suffix in (".cif", ".mmcif"):
        text = _mmcif_to_pdb(text, path)
    elif suffix == ".pdbqt":
        text = _pdbqt_to_pdb(text)
    # NMR-style files: the first MODEL with atoms only (the parser below never sees MODEL records, and the complex
    # output reuses these records, so later models would come out as copies of the protein on top of it)
    lines = text.splitlines()
    models = [k for k, ln in enumerate(lines) if ln.startswith("ENDMDL")]
    bounds = zip([0] + [k + 1 for k in models], models + [len(lines)])
    with_atoms = [(a, b) for a, b in bounds if any(ln.startswith(("ATOM", "HETATM")) for ln in lines[a:b])]
    if len(with_atoms) > 1:
        _note_models(path, len(with_atoms))
    first, last = with_atoms[0] if with_atoms else (0, len(lines))
    numbered = [(k + 1, ln) for k, ln in enumerate(lines[first:last], first)
                if ln.startswith(("ATOM", "HETATM", "TER"))]
    if not any(ln.startswith(("ATOM", "HETATM")) for _, ln in numbered):
        raise UserError(f"no ATOM/HETATM records in {path}: not a PDB file?")
    records = _chains_from_segids([ln for _, ln in numbered], path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PDBConstructionWarning)
        try:
            structure = PDBParser(QUIET=True).get_structure("rec", io.StringIO("\n".join(records) + "\nEND\n"))
        except Exception as err:  # biopython raises many kinds on malformed files; its line numbers count records
            message = re.sub(r"line (\d+)", lambda m: f"line {numbered[min(int(m[1]), len(numbered)) - 1][0]}",
                             str(err))
            raise UserError(f"cannot parse protein {path}: {message}") from None
    models = list(structure)
    if not models:
        raise UserError(f"no model in {path}")

    coords, elements, names, resnames, atom_res, hetero, hydrogens = [], [], [], [], [], [], []
    het_group, het_ids = [], []
    res_type, res_ca, res_n, res_c, res_sc, res_chain = [], [], [], [], [], []
    # by record type (biopython's hetero flag), name, altloc, residue, chain, number: the parser keeps the first of each
    first_of_each, seen = [], set()
    for ln in records:
        key = (ln[:6], ln[12:16], ln[16:17], ln[17:20], ln[21:27]) if ln.startswith(("ATOM", "HETATM")) else None
        if key is None or key not in seen:
            first_of_each.append(ln)
            seen.add(key)
    if lost := len(records) - len(first_of_each):
        _note(f"protein {path}: {lost} atom records repeat an atom already read (the same chain, residue number, "
              "atom name and altloc) and were left out, the first of each kept (chains without their own chain id?)")
        records = first_of_each  # the complex written with the poses shows the atoms scored, no others
    atom_records = [ln for ln in records if ln.startswith(("ATOM", "HETATM"))]
    # single-atom residues named as their atom and written without an element column ("HETATM ... FE  FE"; MD
    # files write ions as ATOM records, CHARMM's as SOD, CLA ...)
    unlisted_ions = {ln[17:20].strip() for ln in atom_records
                     if not ln[76:78].strip() and ln[12:16].strip() == ln[17:20].strip()}
    guessed = {(ln[21], ln[22:27], ln[12:16]) for ln in atom_records if not ln[76:78].strip()}  # biopython's guess
    read_altlocs = set()  # (chain, number, insertion code, atom name, altloc) of each alternate location read
    for chain in models[0]:
        for res in chain:
            if res.is_disordered() == 2:  # a point mutation (altlocs with other residue names): the most occupied
                res = max((res.child_dict[name] for name in res.disordered_get_id_list()),
                          key=lambda r: max((a.get_occupancy() or 0.0) for a in r))
            hetflag = res.id[0]
            resname = res.get_resname().strip()
            if resname in WATERS or hetflag == "W":
                if not keep_waters:
                    continue
                resname = "HOH"  # one name for every water, for the atom typing (`scoring.receptor_types`)
            aa = AA_ALIASES.get(resname, resname)
            standard = _standard_residue(resname)
            atoms, res_h = [], []
            altloc = _residue_altloc(res)
            for atom in res:
                if atom.is_disordered():
                    atom = atom.child_dict.get(altloc, atom.selected_child)
                    read_altlocs.add((chain.id, res.id[1], res.id[2], atom.get_fullname(), atom.get_altloc()))
                el = (atom.element or "").strip().capitalize()
                if (not el or el == "X" or (len(res) == 1 and resname in unlisted_ions)
                        or (standard and el not in STANDARD_ELEMENTS
                            and (chain.id, f"{res.id[1]:>4}{res.id[2]}", atom.get_fullname()) in guessed)):
                    # no element column: biopython could not guess, or guessed an ion's first letter (" FE " in FE:
                    # F, " CA " in CA: C), or mercury for a left-justified "HG2 " of an amino acid; an ion's residue
                    # is its element
                    el = _element_from_name(atom.get_fullname(), resname)
                if el in ("H", "D"):
                    res_h.append(atom.coord)
                    continue
                atoms.append((atom, el))
            if not atoms:
                continue
            hydrogens += _bonded_hydrogens([a.coord for a, _ in atoms], res_h)
            is_aa = aa in AMINO_ACIDS and "CA" in res
            if is_aa:
                r = len(res_ca)
                ca = res["CA"].coord
                res_type.append(AMINO_ACIDS.index(aa))
                res_ca.append(ca)
                res_n.append(res["N"].coord if "N" in res else ca)
                res_c.append(res["C"].coord if "C" in res else ca)
                sc = [a.coord for a, _ in atoms if a.get_id() not in ("N", "CA", "C", "O", "OXT")]
                res_sc.append(np.mean(sc, axis=0) if sc else ca)
                res_chain.append(chain.id)
            else:
                het_ids.append((resname, chain.id, res.id[1], res.id[2].strip()))
            for atom, el in atoms:
                coords.append(atom.coord)
                elements.append(el)
                names.append(atom.get_id())
                resnames.append(resname)
                atom_res.append(r if is_aa else -1)
                hetero.append(not is_aa)
                het_group.append(-1 if is_aa else len(het_ids) - 1)
    if not res_ca:
        raise UserError(f"protein {path} has no amino-acid residues with a C-alpha atom")
    if not np.isfinite(np.asarray(coords, dtype=np.float64)).all():
        raise UserError(f"protein {path} has atoms with non-finite coordinates (nan or inf)")
    f32 = lambda x: np.asarray(x, dtype=np.float32).reshape(-1, 3)  # noqa: E731
    return Receptor(
        coords=f32(coords), elements=np.array(elements), atom_names=np.array(names), res_names=np.array(resnames),
        atom_res=np.array(atom_res, dtype=np.int64), is_hetero=np.array(hetero, dtype=bool),
        res_type=np.array(res_type, dtype=np.int64), res_ca=f32(res_ca), res_n=f32(res_n), res_c=f32(res_c),
        res_sc=f32(res_sc), res_chain=np.array(res_chain),
        pdb_text="\n".join(ln.ljust(6) if ln.startswith("TER") else ln for ln in records  # "TER" alone: unrecognised
                           if (keep_waters or not _water_record(ln)) and _read_altloc(ln, read_altlocs)) + "\n",
        hydrogens=np.array(hydrogens, dtype=np.int8), het_group=np.array(het_group, dtype=np.int64), het_ids=het_ids,
    )


def without_ligand_itself(receptor: Receptor, mol: Chem.Mol, site: Box | None = None) -> tuple[Receptor, list[str]]:
    """The receptor without its hetero residues that are the docked ligand itself (the same heavy atoms, element by
    element: a structure from the PDB with its ligand left in), and their names ("TQD A 501"). Such a copy fills the
    site the ligand is docked into; Vina and gnina expect a receptor prepared without it and score it as protein.
    With a `site` (the box docked in) only copies with an atom in it count: elsewhere a molecule of the same heavy
    atoms is another molecule (a glucose beside a galactose docked), and stays."""
    if receptor.het_group is None or not receptor.het_ids:
        return receptor, []
    formula = sorted(a.GetSymbol().capitalize() for a in mol.GetAtoms() if a.GetAtomicNum() > 1)
    het = receptor.het_group
    copies = [g for g in np.unique(het[het >= 0])
              if receptor.het_ids[g][0] != "HOH" and sorted(receptor.elements[het == g]) == formula
              and (site is None or site.contains(receptor.coords[het == g]).any())]
    if not copies:
        return receptor, []
    drop = {receptor.het_ids[g] for g in copies}
    keep = ~np.isin(het, copies)

    def kept(line: str) -> bool:
        if not line.startswith(("ATOM", "HETATM")):
            return True
        try:
            key = (line[17:20].strip(), line[21:22], int(line[22:26]), line[26:27].strip())
        except ValueError:
            return True
        return key not in drop

    per_atom = ("coords", "elements", "atom_names", "res_names", "atom_res", "is_hetero", "hydrogens", "het_group")
    trimmed = replace(receptor, **{k: getattr(receptor, k)[keep] for k in per_atom},
                      pdb_text="\n".join(ln for ln in receptor.pdb_text.splitlines() if kept(ln)) + "\n")
    names = [" ".join(f"{n} {c.strip()} {i}{code}".split()) for n, c, i, code in (receptor.het_ids[g] for g in copies)]
    return trimmed, names


def _read_altloc(line: str, read: set) -> bool:
    """Whether a record is one the receptor was read from: no alternate location, or the one read (`read`), so that
    the records written with the poses (complex_rank1.pdb) and judged by PoseBusters hold the conformer scored."""
    if not line.startswith(("ATOM", "HETATM")) or line[16] == " ":
        return True
    try:
        return (line[21], int(line[22:26]), line[26], line[12:16], line[16]) in read
    except ValueError:
        return True


def _residue_altloc(res) -> str | None:
    """The alternate location a residue is read in: one conformer for all its atoms (as gemmi and PDBFixer choose),
    the one of highest summed occupancy, the first listed on a tie (biopython picks per atom, which can build a ring
    from atoms of two conformers)."""
    occupancy: dict[str, float] = {}
    for atom in res:
        if atom.is_disordered():
            for key, child in atom.child_dict.items():
                occupancy[key] = occupancy.get(key, 0.0) + (child.get_occupancy() or 0.0)
    return max(occupancy, key=lambda k: (occupancy[k], -list(occupancy).index(k))) if occupancy else None


def _note_models(path: str | os.PathLike, n: int) -> None:
    _note(f"protein {path} has {n} models: the first is the receptor (an NMR ensemble's first model; an assembly "
          "file's other copies are left out)")


CHARMM_IONS = {"SOD": "Na", "POT": "K", "CLA": "Cl", "CAL": "Ca", "CES": "Cs", "LIT": "Li", "ZN2": "Zn", "RUB": "Rb"}


def _standard_residue(resname: str) -> bool:
    """An amino acid, nucleotide or water: its atoms are STANDARD_ELEMENTS, each name starting with its element."""
    res = resname.strip()
    return AA_ALIASES.get(res, res) in AMINO_ACIDS or res in WATERS or res in NUCLEOTIDES


def _element_from_name(fullname: str, resname: str) -> str:
    """The element of a PDB atom without an element column, from its 4-character name: two-letter elements start in
    column 13 ("CL1 ", "ZN  "), one-letter ones in column 14 (" CA ", "1HB "); an ion's residue is its element."""
    table = Chem.GetPeriodicTable()

    def element(symbol: str) -> str | None:
        try:
            with rdkit_quiet():  # RDKit logs a C++ stack trace for an unknown symbol before raising
                return symbol if symbol and table.GetAtomicNumber(symbol) > 0 else None
        except RuntimeError:
            return None

    name, res = fullname.rstrip(), resname.strip()
    if name.strip() == res and (el := CHARMM_IONS.get(res) or element(res.capitalize())):
        return el  # ZN in ZN, CL in CL, CHARMM's SOD in SOD: a single-atom ion
    first = name.strip().lstrip("0123456789")
    if _standard_residue(res):
        # their atoms are C, N, O, S, P, H (D) and MSE's SE, each name starting with its element wherever it is
        # justified: a left-justified "HG2 " is a hydrogen, not mercury
        return "Se" if first.upper() == "SE" else first[:1].upper()
    if name[:1].isalpha() and (el := element(name[:2].capitalize())):
        return el
    return first[:1].capitalize()


def _chains_from_segids(records: list[str], path) -> list[str]:
    """Records whose chain ids are all blank but that carry segment ids (columns 73-76, as MD and CHARMM files do):
    each segment becomes a chain (its own letter), so that residue numbers restarting per segment stay apart."""
    atoms = [ln for ln in records if ln.startswith(("ATOM", "HETATM"))]
    if any(ln[21:22].strip() for ln in atoms) or not any(ln[72:76].strip() for ln in atoms):
        return records
    segids = list(dict.fromkeys(ln[72:76].strip() for ln in atoms))
    letters = dict(zip(segids, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
    if len(letters) < len(segids):
        return records
    _note(f"protein {path}: no chain ids; segment ids read as chains: "
          f"{', '.join(f'{k or chr(39) * 2} -> {v}' for k, v in letters.items())}")
    return [ln[:21] + letters[ln[72:76].strip()] + ln[22:] if ln.startswith(("ATOM", "HETATM")) else ln
            for ln in records]


def _note(message: str) -> None:
    """One `note:` line on stderr: something about the input that was read in a way the user may not expect."""
    print(f"note: {message}", file=sys.stderr)


def _water_record(line: str) -> bool:
    return line.startswith(("ATOM", "HETATM")) and (line[17:20].strip() in WATERS or line[17:21].strip() in WATERS)


def _bonded_hydrogens(heavy: list[np.ndarray], hydrogens: list[np.ndarray]) -> list[int]:
    """Hydrogens of the same residue within covalent distance (< 1.3 A; X-H bonds are 0.96-1.10 A) of each heavy
    atom; all -1 for a residue that has no hydrogens in the file (unknown, not zero)."""
    if not hydrogens:
        return [-1] * len(heavy)
    heavy, hydrogens = np.asarray(heavy, dtype=np.float32), np.asarray(hydrogens, dtype=np.float32)
    return (np.linalg.norm(heavy[:, None] - hydrogens[None], axis=-1) < 1.3).sum(1).tolist()


def receptor_note(receptor: Receptor) -> str | None:
    """A warning for a receptor the energy cannot score properly: mostly C-alpha-only residues (a coarse-grained
    model or a trace), where contacts, H-bonds and clashes with the missing atoms go uncounted."""
    atoms = np.bincount(receptor.atom_res[receptor.atom_res >= 0], minlength=len(receptor.res_ca))
    ca_only = float(np.mean(atoms == 1))
    if ca_only > 0.5:
        return (f"{ca_only:.0%} of its residues have only a C-alpha atom; the energy needs every heavy atom, so "
                "scores and poses are not reliable (give an all-atom model)")
    return None


# ----------------------------------------------------------------------------------------------------- ligand
def _sd_records(text: str, sanitize: bool = False) -> Iterator[Chem.Mol | None]:
    """The molecules of an SD file's text, hydrogens kept (None for a record RDKit cannot parse)."""
    return iter(Chem.ForwardSDMolSupplier(io.BytesIO(text.encode()), sanitize=sanitize, removeHs=False))


LIGAND_SUFFIXES = (".sdf", ".sd", ".mol", ".mol2", ".smi", ".smiles", ".txt", ".pdb", ".pdbqt")
COORDINATE_SUFFIXES = tuple(s for s in LIGAND_SUFFIXES if s not in (".smi", ".smiles", ".txt"))  # boxes, poses


def is_ligand_file_name(text: str) -> bool:
    """Whether `text` names a ligand file by its suffix (else it may be a SMILES string such as "CC.Cl")."""
    return _stem_suffix(text) in LIGAND_SUFFIXES


def _raw_records(path: Path, limit: int | None = None) -> Iterator[tuple[str, Chem.Mol | None]]:
    """(name, unsanitized molecule or None where RDKit cannot parse it) for each molecule of a ligand file: SD
    records, MOL2 molecules, SMILES lines ("SMILES name"; a title line is skipped), the one molecule of a PDB or
    PDBQT file. Names come from the file (SD/MOL2 title, SMILES name column), '' where it has none."""
    suffix = _stem_suffix(path)
    if suffix not in LIGAND_SUFFIXES:
        raise UserError(f"ligand must be {', '.join(LIGAND_SUFFIXES)} (optionally .gz), or a SMILES string; got "
                        f"{path.name}")
    text = read_text(path)
    if suffix in (".sdf", ".mol", ".sd"):
        records = ((m.GetProp("_Name") if m is not None else "", m) for m in _sd_records(text))
    elif suffix == ".mol2":
        blocks = ["@<TRIPOS>MOLECULE" + b for b in text.split("@<TRIPOS>MOLECULE")[1:]] or [text]
        records = ((b.splitlines()[1].strip() if len(b.splitlines()) > 1 else "",
                    Chem.MolFromMol2Block(b, sanitize=False, removeHs=False)) for b in blocks)
    elif suffix in (".smi", ".smiles", ".txt"):
        # no SMILES contains the letters "smiles" (m is no element symbol): that line is a title; nor a comma, so
        # a comma-separated file (a spreadsheet's export) reads like a whitespace-separated one
        lines = [re.split(r"[\s,]+", ln.strip()) for ln in text.splitlines() if ln.strip(" \t,\r")]
        if lines and "smiles" in lines[0][0].lower():
            lines = lines[1:]
        records = ((" ".join(f[1:]), Chem.MolFromSmiles(f[0], sanitize=False)) for f in lines)
    else:
        pdb = text if suffix == ".pdb" else _pdbqt_to_pdb(text)
        records = iter([("", Chem.MolFromPDBBlock(pdb, sanitize=False, removeHs=False))])
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            return
        yield record


def _pdbqt_smiles(path: Path) -> str | None:
    """The SMILES that meeko writes into a ligand PDBQT (`REMARK SMILES ...`), if any."""
    for ln in read_text(path).splitlines():
        fields = ln.split()
        if fields[:2] == ["REMARK", "SMILES"] and len(fields) >= 3 and fields[2] != "IDX":
            return fields[2]
    return None


@contextmanager
def rdkit_quiet() -> Iterator[None]:
    """RDKit logs parse errors and warnings over several lines (ours are one UserError line), and its embedder logs
    UFF typing warnings for hypervalent atoms that change nothing."""
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")


def _stereo_from_3d(mol: Chem.Mol) -> None:
    """Chirality and E/Z from the 3D coordinates. SD files often flag double bonds as "either" (bond stereo 3; 45
    of the 878 readable reference ligands in shared/data/docking, macrocycle ring bonds among them); RDKit then ignores
    their geometry, and ETKDG would embed the unflagged isomer at random."""
    for bond in mol.GetBonds():
        if bond.GetStereo() == Chem.BondStereo.STEREOANY or bond.GetBondDir() == Chem.BondDir.EITHERDOUBLE:
            bond.SetStereo(Chem.BondStereo.STEREONONE)
            bond.SetBondDir(Chem.BondDir.NONE)
    Chem.AssignStereochemistryFrom3D(mol)


def _stereo_as_written(mol: Chem.Mol) -> None:
    """E/Z and chirality of a SMILES string or a 2D drawing, perceived as RDKit's sanitizing readers do (the raw,
    unsanitized parse leaves the bond directions of `/C=C\\` and a drawing's double-bond geometry unread, and the
    molecule would be docked as whichever isomer came first)."""
    if mol.GetNumConformers():  # a 2D drawing: E/Z from its coordinates, chirality from its wedges
        Chem.DetectBondStereochemistry(mol)
        Chem.AssignChiralTypesFromBondDirs(mol)
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    for bond in mol.GetBonds():  # drawn "either" (crossed or wavy): unspecified, so that one isomer is docked, named
        if bond.GetStereo() == Chem.BondStereo.STEREOANY or bond.GetBondDir() == Chem.BondDir.EITHERDOUBLE:
            bond.SetStereo(Chem.BondStereo.STEREONONE)
            bond.SetBondDir(Chem.BondDir.NONE)


def _aromatic_n_without_h(mol: Chem.Mol, atoms: Iterable[int]) -> list[int]:
    """Neutral two-bonded N in an aromatic bond with no hydrogen (before sanitization only bonds carry aromaticity)."""
    return [i for i in sorted(atoms) if (a := mol.GetAtomWithIdx(i)).GetSymbol() == "N" and a.GetFormalCharge() == 0
            and a.GetDegree() == 2 and a.GetNumExplicitHs() == 0
            and any(b.GetBondType() == Chem.BondType.AROMATIC for b in a.GetBonds())]


def sanitize_with_repairs(mol: Chem.Mol, max_added_h: int = 3) -> tuple[Chem.Mol, list[str]]:
    """Sanitize, repairing the two defects that make valid ligand files fail RDKit (`SanitizeMol` raises otherwise).

    - A neutral nitrogen with four bonds gets charge +1 (quaternary N written without its charge).
    - Aromatic rings that cannot be kekulized because a pyrrole-type nitrogen lacks its hydrogen (files that store
      aromatic bond orders but no hydrogens, or none on that N) get one H on the fewest such nitrogens, in the
      file's atom order first, one ring system at a time: the crystal does not say which tautomer it is. This
      reads 28 of the 29 PDBbind SD files in shared/data that RDKit refuses (6j3p's ring system is only partly
      aromatic). The same repair as the RDKit cookbook's for aromatic nitrogens; OpenBabel guesses likewise.
    Returns the sanitized molecule and the repairs as text, with atom numbers counted from 1 as in the file.
    """
    mol, repairs = Chem.RWMol(mol), []
    for problem in Chem.DetectChemistryProblems(mol):
        if problem.GetType() == "AtomValenceException":
            atom = mol.GetAtomWithIdx(problem.GetAtomIdx())
            valence = sum(b.GetBondTypeAsDouble() for b in atom.GetBonds()) + atom.GetNumExplicitHs()
            if atom.GetSymbol() == "N" and atom.GetFormalCharge() == 0 and valence == 4:
                atom.SetFormalCharge(1)
                repairs.append(f"charge +1 on four-bonded N {atom.GetIdx() + 1}")
    added: list[int] = []
    while unkekulized := _unkekulized_atoms(mol):  # one ring system per problem RDKit reports
        for subset in (s for k in range(1, max_added_h + 1)
                       for s in combinations(_aromatic_n_without_h(mol, unkekulized), k)):
            trial = Chem.RWMol(mol)
            for i in subset:
                trial.GetAtomWithIdx(i).SetNumExplicitHs(1)
                trial.GetAtomWithIdx(i).SetNoImplicit(True)
            if not _unkekulized_atoms(trial) & unkekulized:
                mol, added = trial, added + list(subset)
                break
        else:
            break  # SanitizeMol below raises RDKit's message
    if added:
        repairs.append(f"H added to aromatic N {', '.join(str(i + 1) for i in sorted(added))} to kekulize")
    Chem.SanitizeMol(mol)
    return mol.GetMol(), repairs


def _unkekulized_atoms(mol: Chem.Mol) -> set[int]:
    return {i for problem in Chem.DetectChemistryProblems(mol) if problem.GetType() == "KekulizeException"
            for i in problem.GetAtomIndices()}


@dataclass
class LigandRecord:
    """One molecule of a ligand input: its name and the checked molecule, or the one line that says why not."""
    name: str
    mol: Chem.Mol | None
    error: str | None = None


def load_ligands(spec: str | os.PathLike, max_heavy_atoms: int = MAX_HEAVY_ATOMS, largest_fragment: bool = True,
                 limit: int | None = None) -> list[LigandRecord]:
    """Every molecule of a ligand file (a library: SD records, MOL2 molecules, SMILES lines) or the one of a SMILES
    string, each checked and cleaned as `load_ligand` describes. A molecule that cannot be docked carries its error
    instead, so that a screen skips it; a missing or unreadable file raises `UserError`. Unnamed molecules are
    called `<file stem>_<index from 1>`."""
    with rdkit_quiet():
        path = Path(spec)
        looks_like_file = path.suffix != "" or os.sep in str(spec) or path.exists()
        if looks_like_file and not path.is_file() and Chem.MolFromSmiles(str(spec)) is None:
            raise UserError(f"ligand file not found: {spec}")
        if not path.is_file():
            raws = [("", Chem.MolFromSmiles(str(spec), sanitize=False))]
            whats = [f"SMILES {spec!r}"]
        else:
            smiles = _pdbqt_smiles(path) if _stem_suffix(path) == ".pdbqt" else None
            if _stem_suffix(path) in (".pdb", ".pdbqt") and smiles is None:
                # RDKit reads a PDB ligand with single bonds only (no bond orders): a different molecule would be docked
                raise UserError(f"ligand {path}: {_stem_suffix(path)[1:].upper()} files carry no bond orders (a "
                                "PDBQT file does when meeko wrote its SMILES); give the ligand as SDF, MOL2 or SMILES "
                                "(a PDB or PDBQT file is fine for --autobox-ligand)")
            if smiles is not None:  # docking starts from fresh conformers: the SMILES is the whole ligand
                raws, whats = [("", Chem.MolFromSmiles(smiles, sanitize=False))], [f"{path} (its SMILES remark)"]
            else:
                raws = list(_raw_records(path, limit))
                whats = [f"{path} (molecule {i + 1})" if len(raws) > 1 else str(path) for i in range(len(raws))]
        if not raws:
            raise UserError(f"no molecule in {spec}")
        stem = path.name.split(".")[0] if path.is_file() else "ligand"
        records = []
        for i, ((name, raw), what) in enumerate(zip(raws, whats)):
            name = name.strip() or (stem if len(raws) == 1 else f"{stem}_{i + 1}")
            try:
                records.append(LigandRecord(name, _heavy_atom_ligand(raw, what, max_heavy_atoms, largest_fragment)))
            except UserError as err:
                records.append(LigandRecord(name, None, str(err)))
        return records


def load_ligand(spec: str | os.PathLike, max_heavy_atoms: int = MAX_HEAVY_ATOMS, largest_fragment: bool = True) -> Chem.Mol:
    """Read a ligand from a file or a SMILES string and return a sanitized heavy-atom molecule.

    The input coordinates are kept on the returned molecule (they are only used as a reference, e.g. for RMSD);
    docking always starts from fresh conformers, with the stereochemistry of the input (from 3D coordinates when it
    has them). Salts/solvents: the largest fragment is kept. Files with several molecules: the first
    (`load_ligands` reads them all).
    """
    record = load_ligands(spec, max_heavy_atoms, largest_fragment, limit=1)[0]
    if record.mol is None:
        raise UserError(record.error)
    return record.mol


NON_METALS = {"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "Ge", "As", "Se", "Br", "Kr",
              "Sb", "Te", "I", "Xe", "At", "Rn"}  # metalloids included; every other element is a metal
COUNTER_ION_ELEMENTS = {"Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba"}  # salts' cations, dropped with a note


def _heavy_atom_ligand(raw: Chem.Mol | None, what: str, max_heavy_atoms: int = MAX_HEAVY_ATOMS,
                       largest_fragment: bool = True, one_isomer: bool = True) -> Chem.Mol:
    """`load_ligand`'s checks and clean-up of one unsanitized molecule; `what` names it in errors. `one_isomer`: fix
    stereo that neither the file nor its 3D coordinates define (docking); poses to score keep theirs."""
    if raw is None:
        raise UserError(f"cannot parse ligand {what}")
    try:
        mol, repairs = sanitize_with_repairs(raw)
    except Exception as err:  # rdkit raises several sanitization exception types
        raise UserError(f"ligand {what} fails RDKit sanitization: {str(err).splitlines()[0]} "
                        "(a MOL2 file or a SMILES string of the ligand may read)") from None
    if mol.GetNumConformers() and mol.GetConformer().Is3D():
        _stereo_from_3d(mol)
    else:
        _stereo_as_written(mol)
    n_input_h = sum(atom.GetAtomicNum() == 1 for atom in mol.GetAtoms())
    for atom in mol.GetAtoms():  # labelled H (D, T) are docked as H and given back on output (`pose_mol`)
        if labels := [str(h.GetIsotope()) for h in atom.GetNeighbors() if h.GetAtomicNum() == 1 and h.GetIsotope()]:
            atom.SetProp(H_ISOTOPES_PROP, ",".join(labels))
    order = _input_order(mol) if n_input_h else None
    for atom in mol.GetAtoms():  # notes number atoms as the file does (H among them; kept through fragments)
        atom.SetIntProp(FILE_INDEX_PROP, atom.GetIdx())
    mol = Chem.RemoveAllHs(mol, sanitize=False)  # also the H that RemoveHs keeps (stereo-defining, isotopes)
    if largest_fragment and len(Chem.GetMolFrags(mol)) > 1:
        order = None  # atoms were dropped: the output cannot list the input's
        frags = sorted(Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False), key=lambda m: -m.GetNumAtoms())
        metals = sorted({a.GetSymbol() for f in frags[1:] for a in f.GetAtoms()
                         if a.GetAtomicNum() > 0 and a.GetSymbol() not in NON_METALS | COUNTER_ION_ELEMENTS})
        smiles = [Chem.MolToSmiles(f) for f in frags]
        ambiguous = any(f.GetNumAtoms() == frags[0].GetNumAtoms() and smi != smiles[0]
                        for f, smi in zip(frags[1:], smiles[1:]))
        if metals and (frags[0].GetNumAtoms() < 6 or ambiguous):
            # cisplatin as [NH3].[NH3].[Cl-].[Cl-].[Pt+2] kept an ammonia, ferrocene as ions a cyclopentadienyl; a
            # transition-metal salt of a drug (silver sulfadiazine, ferrous fumarate) docks its organic ion
            raise UserError(f"ligand {what} looks like a metal complex written as separate ions ({', '.join(metals)} "
                            "apart from the rest): give it with its metal bonds (an SDF, or dative bonds in the "
                            "SMILES), or the organic part alone")
        mol = frags[0]
        dropped = ".".join(smiles[1:])
        repairs = repairs + [f"kept the largest of {len(frags)} fragments, dropped {dropped}"]
    if dummies := sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetAtomicNum() == 0}):  # a lone one is dropped
        raise UserError(f"ligand {what} has dummy or attachment atoms ({', '.join(dummies)}): give the whole molecule, "
                        "with hydrogens or a group in their place")
    n_heavy = mol.GetNumAtoms()
    if n_heavy == 0:
        raise UserError(f"ligand {what} has no heavy atoms")
    if n_heavy > max_heavy_atoms:
        raise UserError(f"ligand {what} has {n_heavy} heavy atoms; the limit is {max_heavy_atoms}")
    Chem.SanitizeMol(mol)
    if one_isomer:
        mol, repairs = _one_stereoisomer(mol, repairs)
    if repairs:
        mol.SetProp(REPAIRS_PROP, "; ".join(repairs))
    if n_input_h:
        mol.SetIntProp(INPUT_H_PROP, n_input_h)
    if order:
        mol.SetProp(INPUT_ORDER_PROP, order)
    return mol


def _input_order(mol: Chem.Mol) -> str | None:
    """The file's atom order as INPUT_ORDER_PROP tokens (None where an H has no one heavy neighbour)."""
    heavy = {a.GetIdx(): k for k, a in enumerate(a for a in mol.GetAtoms() if a.GetAtomicNum() != 1)}
    tokens = []
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() != 1:
            tokens.append(str(heavy[atom.GetIdx()]))
            continue
        parents = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() != 1]
        if len(parents) != 1:
            return None
        tokens.append(f"h{heavy[parents[0]]}:{atom.GetIsotope()}")
    return ",".join(tokens)


def _in_input_order(mol: Chem.Mol, order: str) -> Chem.Mol:
    """`mol` (heavy atoms, then their hydrogens) renumbered as the input file listed its atoms (gnina and Vina keep
    the input's order: a pose then pairs with its input atom by atom), hydrogens the input did not list (a file with
    polar H only) after them; unchanged where an input H has no match."""
    free: dict[tuple[int, int], list[int]] = {}
    for h in mol.GetAtoms():
        if h.GetAtomicNum() == 1:
            free.setdefault((h.GetNeighbors()[0].GetIdx(), h.GetIsotope()), []).append(h.GetIdx())
    new = []
    for token in order.split(","):
        if not token.startswith("h"):
            new.append(int(token))
            continue
        parent, mass = map(int, token[1:].split(":"))
        if not free.get((parent, mass)):
            return mol
        new.append(free[(parent, mass)].pop(0))
    new += sorted(i for bucket in free.values() for i in bucket)
    out = Chem.RenumberAtoms(mol, new)
    for key in mol.GetPropNames(includePrivate=True):  # RenumberAtoms keeps no molecule properties (title, tags)
        out.SetProp(key, mol.GetProp(key))
    return out


def _places_heavy_atoms(mol: Chem.Mol, stereo) -> bool:
    """Whether a stereo element of a heavy-atom molecule tells apart heavy-atom arrangements. Not so: a double bond
    with a terminal end (an amidine's or guanidine's C=NH: E/Z places its H) and a centre whose swappable neighbours
    are terminal atoms of one element (a phosphate's O= and OH, or O- and OH: they differ in bond order, charge or
    hydrogens, which ionisation and resonance exchange). RDKit counts both as stereo; chemists give neither."""
    if stereo.type == Chem.StereoType.Bond_Double:
        bond = mol.GetBondWithIdx(stereo.centeredOn)
        return bond.GetBeginAtom().GetDegree() > 1 and bond.GetEndAtom().GetDegree() > 1
    if stereo.type == Chem.StereoType.Atom_Tetrahedral:
        centre = mol.GetAtomWithIdx(stereo.centeredOn)
        terminal = [n.GetAtomicNum() for n in centre.GetNeighbors() if n.GetDegree() == 1]
        return len(terminal) == len(set(terminal))
    return True


def _one_stereoisomer(mol: Chem.Mol, repairs: list[str]) -> tuple[Chem.Mol, list[str]]:
    """A molecule whose stereocentres or double bonds are not specified (a 2D input without the stereo, or 3D
    coordinates too flat at a centre to define it: 1nen's ligand) would be embedded as a different isomer in every
    conformer (a mix of stereoisomers across the ranked poses): fix the first isomer RDKit enumerates and say so."""
    from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

    open_ = [s for s in Chem.FindPotentialStereo(mol) if s.specified == Chem.StereoSpecified.Unspecified]
    if not open_:
        return mol, repairs
    isomer = next(iter(EnumerateStereoisomers(mol, options=StereoEnumerationOptions(onlyUnassigned=True, unique=True))))
    if Chem.MolToSmiles(isomer) == Chem.MolToSmiles(mol):  # nothing to choose (an azide's N=N): no note
        return mol, repairs
    if not (open_ := [s for s in open_ if _places_heavy_atoms(mol, s)]):  # one isomer in every conformer, no note
        return isomer, repairs

    def file_number(s) -> int:  # centeredOn is a bond's index for a double bond: name its first atom
        atom = (mol.GetAtomWithIdx(s.centeredOn) if s.type == Chem.StereoType.Atom_Tetrahedral
                else mol.GetBondWithIdx(s.centeredOn).GetBeginAtom())
        return (atom.GetIntProp(FILE_INDEX_PROP) if atom.HasProp(FILE_INDEX_PROP) else atom.GetIdx()) + 1

    where = ", ".join(f"{'atom' if s.type == Chem.StereoType.Atom_Tetrahedral else 'double bond at atom'} "
                      f"{file_number(s)}" for s in open_)
    return isomer, repairs + [f"stereo not specified ({where}): docked one isomer, {Chem.MolToSmiles(isomer)}; give "
                              "the stereo (an isomeric SMILES, or 3D coordinates that define it) to dock another"]


def load_poses(path: str | os.PathLike) -> list[Chem.Mol]:
    """Every molecule of an SDF or MOL2 file as a heavy-atom ligand with its 3D coordinates, each checked and cleaned
    as `load_ligand` does: poses to score, not ligands to dock."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ligand file not found: {path}")
    if _stem_suffix(path) not in (".sdf", ".sd", ".mol", ".mol2"):
        raise UserError(f"poses must be an SDF, MOL or MOL2 file with 3D coordinates (optionally .gz); got {path.name}")
    with rdkit_quiet():
        raws = [raw for _, raw in _raw_records(path)]
        mols = [_heavy_atom_ligand(raw, f"{path} (molecule {i + 1})", one_isomer=False) for i, raw in enumerate(raws)]
    if not mols:
        raise UserError(f"no molecule in {path}")
    for i, mol in enumerate(mols):
        if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
            raise UserError(f"{path} (molecule {i + 1}) has no 3D coordinates: nothing to score")
    return mols


def ligand_repairs(mol: Chem.Mol) -> str | None:
    """What `load_ligand` / `load_poses` changed to read this molecule (`sanitize_with_repairs`), if anything."""
    return mol.GetProp(REPAIRS_PROP) if mol.HasProp(REPAIRS_PROP) else None


def ligand_coords(mol: Chem.Mol, conf_id: int = -1) -> np.ndarray:
    return np.asarray(mol.GetConformer(conf_id).GetPositions(), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------- box
@dataclass(frozen=True)
class Box:
    center: np.ndarray  # (3,)
    size: np.ndarray    # (3,) full edge lengths

    def contains(self, xyz: np.ndarray, pad: float = 0.0) -> np.ndarray:
        return np.all(np.abs(xyz - self.center) <= self.size / 2 + pad, axis=-1)


def box_around(xyz: np.ndarray, add: float = AUTOBOX_ADD) -> Box:
    """The bounding box of the points xyz (N, 3) grown by `add` Angstrom on every side."""
    lo, hi = xyz.min(0), xyz.max(0)
    return Box(center=((lo + hi) / 2).astype(np.float32), size=(hi - lo + 2 * add).astype(np.float32))


def box_from_ligand(path: str | os.PathLike, add: float = AUTOBOX_ADD) -> Box:
    """gnina's --autobox_ligand: the reference's bounding box grown by `add` Angstrom on every side."""
    return box_around(reference_coords(path), add)


def waters_on(receptor: Receptor, xyz: np.ndarray, distance: float = 1.5) -> int:
    """How many of the receptor's waters sit within `distance` A of any of the points xyz (N, 3): waters that the
    crystal ligand displaces, or alternates of it, which a pose would have to clash with."""
    water = receptor.coords[receptor.res_names == "HOH"]
    if not len(water) or not len(xyz):
        return 0
    return int((np.linalg.norm(water[:, None] - np.asarray(xyz)[None], axis=-1).min(1) < distance).sum())


def reference_coords(path: str | os.PathLike, note: bool = True) -> np.ndarray:
    """The 3D coordinates (N, 3) of every molecule of a reference ligand file (for a box), as gnina's and smina's
    --autobox_ligand read it: a file of several poses or ligands gives the box around all of them (`note`: say so)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"autobox ligand not found: {path}")
    if (suffix := _stem_suffix(path)) not in COORDINATE_SUFFIXES:
        raise UserError(f"autobox ligand {path}: {suffix or 'no suffix'} is not read; give a file with 3D coordinates: "
                        f"{', '.join(COORDINATE_SUFFIXES)} (optionally .gz)")
    with rdkit_quiet():
        mols = [mol for _, mol in _raw_records(path) if mol is not None and mol.GetNumConformers()
                and mol.GetNumAtoms()]
    if not mols:
        raise UserError(f"cannot read coordinates from autobox ligand {path}")
    if not all(mol.GetConformer().Is3D() for mol in mols):  # a 2D depiction: a box around it would sit anywhere
        raise UserError(f"autobox ligand {path} has no 3D coordinates")
    if len(mols) > 1 and note:
        _note(f"{path}: the box is around all {len(mols)} molecules of the file (as gnina's --autobox_ligand)")
    return np.concatenate([mol.GetConformer().GetPositions() for mol in mols])


def resolve_box(receptor: Receptor, autobox_ligand: str | None = None, autobox_add: float | None = None,
                center: list[float] | None = None, size: list[float] | None = None) -> Box | None:
    """Turn the box options into a Box (None = blind docking), rejecting contradictions."""
    if autobox_ligand and (center is not None or size is not None):
        raise UserError("give either --autobox-ligand or --center/--size, not both")
    if autobox_add is not None and not autobox_ligand:
        raise UserError("--autobox-add needs --autobox-ligand")
    if (center is None) != (size is None):
        raise UserError("--center and --size go together")
    if autobox_ligand:
        box = box_from_ligand(autobox_ligand, checked_autobox_add(AUTOBOX_ADD if autobox_add is None else autobox_add))
    elif center is not None:
        size_arr = np.asarray(size, dtype=np.float32)
        if np.any(~np.isfinite(size_arr)) or np.any(size_arr <= 0):
            raise UserError("--size values must be finite and positive (A)")
        if not np.all(np.isfinite(center)):
            raise UserError("--center values must be finite numbers")
        box = Box(center=np.asarray(center, dtype=np.float32), size=size_arr)
    else:
        return None
    centre, size_a = (np.round(v.astype(float), 2).tolist() for v in (box.center, box.size))  # no float32 digits
    if not np.any(box.contains(receptor.coords, pad=4.0)):
        raise UserError(f"the box (centre {centre}, size {size_a}) "
                        "contains no protein atoms (within 4 A): wrong coordinates or wrong protein?")
    return checked_box_size(box)


def checked_autobox_add(add: float) -> float:
    """--autobox-add, refused (one line) unless finite, >= 0 and small enough for a box within MAX_BOX_SIDE."""
    add = float(add)
    if not (np.isfinite(add) and 0 <= add <= MAX_BOX_SIDE / 2):
        raise UserError(f"--autobox-add must be a number of Angstrom from 0 to {MAX_BOX_SIDE / 2:g}, got {add:g}")
    return add


def checked_box_size(box: Box) -> Box:
    if np.any(box.size > MAX_BOX_SIDE):
        raise UserError(f"box size {np.round(box.size.astype(float), 2).tolist()} exceeds {MAX_BOX_SIDE:g} A per "
                        "side; leave the box out for blind docking")
    return box


# ----------------------------------------------------------------------------------------------------- output
def pose_mol(mol: Chem.Mol, coords: np.ndarray, tags: dict[str, object] | None = None, name: str | None = None,
             hydrogens: bool = False, drop: Iterable[str] = ()) -> Chem.Mol:
    """A copy of `mol` with a single conformer at `coords`, without the SD properties `drop` and with `tags`. With
    `hydrogens`, a ligand whose input file carried hydrogens gets them back (all of them, as gnina writes poses,
    with the input's D/T labels): placed by RDKit's geometry on the docked heavy atoms, then relaxed with the heavy
    atoms fixed (MMFF94, else UFF) so that no two H collide; not against the protein (they play no part in the
    scoring)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(out.GetNumAtoms())
    for i, (x, y, z) in enumerate(np.asarray(coords, dtype=np.float64)):
        conf.SetAtomPosition(i, (x, y, z))
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    if name:
        out.SetProp("_Name", name)
    if hydrogens and mol.HasProp(INPUT_H_PROP):
        out = _with_hydrogens(out)
    for prop in out.GetPropNames(includePrivate=True):  # bookkeeping (ours, RDKit's MOL2 reader's): not SD tags
        if (prop.startswith("_") and prop != "_Name") or prop == REPAIRS_PROP or prop in drop:
            out.ClearProp(prop)
    for key, value in (tags or {}).items():
        out.SetProp(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return out


def _add_labelled_hydrogens(mol: Chem.Mol, coords: bool = False) -> Chem.Mol:
    """Chem.AddHs, with the D/T labels the input's hydrogens had (H_ISOTOPES_PROP) put back."""
    out = Chem.AddHs(mol, addCoords=coords)
    for atom in list(out.GetAtoms())[:mol.GetNumAtoms()]:  # AddHs appends the H: heavy atoms keep their indices
        if atom.HasProp(H_ISOTOPES_PROP):
            hs = [h for h in atom.GetNeighbors() if h.GetAtomicNum() == 1]
            for h, mass in zip(hs, atom.GetProp(H_ISOTOPES_PROP).split(",")):
                h.SetIsotope(int(mass))
    return out


def ligand_smiles(mol: Chem.Mol) -> str:
    """Canonical isomeric SMILES of a ligand as `load_ligand` read it, its labelled hydrogens ([2H]) included."""
    if not any(atom.HasProp(H_ISOTOPES_PROP) for atom in mol.GetAtoms()):
        return Chem.MolToSmiles(mol)
    return Chem.MolToSmiles(Chem.RemoveHs(_add_labelled_hydrogens(mol)))  # RemoveHs keeps the labelled ones


def _with_hydrogens(mol: Chem.Mol) -> Chem.Mol:
    """`mol` (heavy atoms, one conformer) with all its hydrogens, labelled as the input's were (H_ISOTOPES_PROP),
    at positions relaxed with every heavy atom held fixed, its atoms in the input file's order (INPUT_ORDER_PROP)."""
    from rdkit.Chem import rdForceFieldHelpers

    out = _add_labelled_hydrogens(mol, coords=True)
    with rdkit_quiet():
        ff = None
        if rdForceFieldHelpers.MMFFHasAllMoleculeParams(out):
            ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(out, rdForceFieldHelpers.MMFFGetMoleculeProperties(out))
        elif rdForceFieldHelpers.UFFHasAllMoleculeParams(out):
            ff = rdForceFieldHelpers.UFFGetMoleculeForceField(out)
        if ff is not None:
            for i in range(mol.GetNumAtoms()):
                ff.AddFixedPoint(i)
            ff.Minimize(maxIts=200)
    return _in_input_order(out, mol.GetProp(INPUT_ORDER_PROP)) if mol.HasProp(INPUT_ORDER_PROP) else out


def sdf_block(mol: Chem.Mol) -> str:
    buf = io.StringIO()
    with Chem.SDWriter(buf) as writer:
        writer.SetKekulize(True)
        writer.write(mol)
    return buf.getvalue()


def complex_pdb(receptor: Receptor, mol: Chem.Mol) -> str:
    """Receptor records (those docked against: without waters when they were dropped) followed by TER and the ligand
    as HETATM residue LIG in chain L, or the first chain id the receptor does not use."""
    lig = Chem.Mol(mol)
    info_mol = Chem.MolToPDBBlock(lig, flavor=4)  # flavor 4: no MASTER record
    receptor_lines = receptor.pdb_text.splitlines()
    used = {ln[21] for ln in receptor_lines if ln.startswith(("ATOM", "HETATM")) and len(ln) > 21}
    chain = next((c for c in "LZYXWVUTSRQPONMKJIHGFEDCBA0123456789abcdefghijklmnopqrstuvwxyz" if c not in used), "L")
    lig_lines, atoms = [], iter(lig.GetAtoms())  # one record per atom, in atom order
    for ln in info_mol.splitlines():
        if ln.startswith(("HETATM", "ATOM")):
            ln = "HETATM" + ln[6:17] + f"LIG {chain}" + ln[22:]
            atom = next(atoms)
            if atom.GetAtomicNum() == 1 and atom.GetIsotope() == 2:  # RDKit writes H; the PDB's element is D
                ln = ln[:76] + " D" + ln[78:]
            lig_lines.append(ln)
        elif ln.startswith("CONECT"):
            lig_lines.append(ln)
    # CONECT serials refer to the ligand's own numbering: renumber after the receptor's last serial and the TER
    serials = [int(ln[6:11]) for ln in receptor_lines
               if ln.startswith(("ATOM", "HETATM", "TER")) and ln[6:11].strip().isdigit()]
    offset = max(serials, default=sum(ln.startswith(("ATOM", "HETATM")) for ln in receptor_lines)) + 1
    out = []
    for ln in lig_lines:
        if ln.startswith("CONECT"):
            serials = [int(ln[i:i + 5]) for i in range(6, len(ln), 5) if ln[i:i + 5].strip()]
            out.append("CONECT" + "".join(f"{(s + offset) % 100000:5d}" for s in serials))
        else:  # serials wrap past 99999, as PDB writers do for large assemblies: five columns, never six
            out.append(ln[:6] + f"{(int(ln[6:11]) + offset) % 100000:5d}" + ln[11:])
    return receptor.pdb_text + f"TER   {offset % 100000:5d}\n" + "\n".join(out) + "\nEND\n"
