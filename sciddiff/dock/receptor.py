"""Reading a receptor (PDB, mmCIF or PDBQT, optionally .gz) and writing it with a docked ligand.

Conventions: coordinates in Angstrom, float32 numpy arrays. The receptor keeps heavy atoms only (hydrogens are
dropped: inputs disagree on whether they carry them; the count bonded to each heavy atom is kept for H-bond typing);
metals, cofactors and crystal waters (HETATM) stay as receptor atoms because ligands clash with them otherwise
(`keep_waters=False` drops the waters, as Vina-style receptor preparation does). Every problem the user can fix is
raised as `sciddiff.cli.UserError` with one line of text.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rdkit import Chem

from sciddiff.cli import UserError, print_note
from sciddiff.dock.files import format_suffix, pdbqt_to_pdb, rdkit_quiet, read_text

if TYPE_CHECKING:
    from sciddiff.dock.box import Box


PROTEIN_FORMATS = (".pdb", ".cif", ".pdbqt", ".ent", ".mmcif")  # each also .gz
WATERS = {"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"}
AMINO_ACIDS = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
               "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
NUCLEOTIDES = {"A", "C", "G", "U", "I", "DA", "DC", "DG", "DT", "DI"}
STANDARD_ELEMENTS = {"C", "N", "O", "S", "P", "H", "D", "Se"}
# Modified residues that are amino acids for the residue graph.
AA_ALIASES = {"MSE": "MET", "HID": "HIS", "HIE": "HIS", "HIP": "HIS", "CYX": "CYS", "SEP": "SER", "TPO": "THR",
              "PTR": "TYR", "KCX": "LYS", "LLP": "LYS", "CSO": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS",
              "CYM": "CYS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS"}  # Amber / CHARMM protonation states


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
        print_note(f"protein {path}: chain ids longer than PDB's one letter renamed: {', '.join(renamed)}")
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


def load_receptor(path: str | os.PathLike, keep_waters: bool = True) -> Receptor:
    """Parse a PDB, mmCIF or PDBQT file (optionally .gz) with biopython. Raises UserError for unreadable files or a
    protein without residues.

    Waters in the file are receptor atoms unless `keep_waters` is False: a crystal structure's waters sit where its
    ligand does not, and PoseBusters counts a pose on one as a clash (measured in docs/dock.md, "Crystal waters")."""
    from Bio.PDB import PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionWarning

    suffix = format_suffix(path)
    if suffix not in PROTEIN_FORMATS:
        raise UserError(f"protein must be a {', '.join(PROTEIN_FORMATS)} file (optionally .gz), got {Path(path).name}")
    text = read_text(path)
    if suffix in (".cif", ".mmcif"):
        text = _mmcif_to_pdb(text, path)
    elif suffix == ".pdbqt":
        text = pdbqt_to_pdb(text)
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
        print_note(f"protein {path}: {lost} atom records repeat an atom already read (the same chain, residue number, "
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
    print_note(f"protein {path} has {n} models: the first is the receptor (an NMR ensemble's first model; an assembly "
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
    print_note(f"protein {path}: no chain ids; segment ids read as chains: "
          f"{', '.join(f'{k or chr(39) * 2} -> {v}' for k, v in letters.items())}")
    return [ln[:21] + letters[ln[72:76].strip()] + ln[22:] if ln.startswith(("ATOM", "HETATM")) else ln
            for ln in records]


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


def waters_on(receptor: Receptor, xyz: np.ndarray, distance: float = 1.5) -> int:
    """How many of the receptor's waters sit within `distance` A of any of the points xyz (N, 3): waters that the
    crystal ligand displaces, or alternates of it, which a pose would have to clash with."""
    water = receptor.coords[receptor.res_names == "HOH"]
    if not len(water) or not len(xyz):
        return 0
    return int((np.linalg.norm(water[:, None] - np.asarray(xyz)[None], axis=-1).min(1) < distance).sum())


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
