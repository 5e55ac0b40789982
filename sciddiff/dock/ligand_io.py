"""Reading ligands (SDF, MOL, MOL2, SMILES, PDBQT from meeko; optionally .gz) and writing poses as RDKit molecules
and SD records.

Conventions: coordinates in Angstrom, float32 numpy arrays. A ligand is docked as its largest fragment, sanitized,
heavy atoms only; the input's hydrogens (with their D/T labels) and its atoms' file order are kept as molecule
properties, so that written poses carry them again. Files RDKit refuses for a pyrrole-type aromatic N
written without its H, or a four-bonded N without its charge, are repaired and the repair is recorded
(`REPAIRS_PROP`). Every problem the user can fix is raised as `sciddiff.cli.UserError` with one line of text.
"""
from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from rdkit import Chem

from sciddiff.cli import UserError, print_note
from sciddiff.dock.files import format_suffix, pdbqt_to_pdb, rdkit_quiet, read_text

MAX_HEAVY_ATOMS = 150
REPAIRS_PROP = "sciddiff_repairs"  # what `load_ligand` changed to read the file, if anything
INPUT_H_PROP = "_sciddiff_input_hydrogens"  # how many H atoms the input molecule carried (they are docked without)
H_ISOTOPES_PROP = "_sciddiff_h_isotopes"  # atom property: mass numbers of its labelled H (D, T), e.g. "2,2,2"
INPUT_ORDER_PROP = "_sciddiff_input_order"  # the input's atoms in file order: heavy-atom index, or h<parent>:<mass>
FILE_INDEX_PROP = "_sciddiff_file_index"  # atom property: its index in the input file (0-based)
# SD tags that describe one pose (ours, gnina's, smina's): a new pose of the molecule must not inherit the input's
POSE_TAGS = ("rank", "confidence", "consensus", "score", "energy", "pocket", "inter", "intra", "gauss1", "gauss2",
             "repulsion", "hydrophobic", "hbond", "n_torsions", "moved", "minimizedAffinity", "minimizedRMSD",
             "CNNscore", "CNNaffinity", "CNN_VS", "CNNaffinity_variance")


def _sd_records(text: str, sanitize: bool = False) -> Iterator[Chem.Mol | None]:
    """The molecules of an SD file's text, hydrogens kept (None for a record RDKit cannot parse)."""
    return iter(Chem.ForwardSDMolSupplier(io.BytesIO(text.encode()), sanitize=sanitize, removeHs=False))


LIGAND_SUFFIXES = (".sdf", ".sd", ".mol", ".mol2", ".smi", ".smiles", ".txt", ".pdb", ".pdbqt")
COORDINATE_SUFFIXES = tuple(s for s in LIGAND_SUFFIXES if s not in (".smi", ".smiles", ".txt"))  # boxes, poses


def is_ligand_file_name(text: str) -> bool:
    """Whether `text` names a ligand file by its suffix (else it may be a SMILES string such as "CC.Cl")."""
    return format_suffix(text) in LIGAND_SUFFIXES


def _raw_records(path: Path, limit: int | None = None) -> Iterator[tuple[str, Chem.Mol | None]]:
    """(name, unsanitized molecule or None where RDKit cannot parse it) for each molecule of a ligand file: SD
    records, MOL2 molecules, SMILES lines ("SMILES name"; a title line is skipped), the one molecule of a PDB or
    PDBQT file. Names come from the file (SD/MOL2 title, SMILES name column), '' where it has none."""
    suffix = format_suffix(path)
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
        pdb = text if suffix == ".pdb" else pdbqt_to_pdb(text)
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
            smiles = _pdbqt_smiles(path) if format_suffix(path) == ".pdbqt" else None
            if format_suffix(path) in (".pdb", ".pdbqt") and smiles is None:
                # RDKit reads a PDB ligand with single bonds only (no bond orders): a different molecule would be docked
                raise UserError(f"ligand {path}: {format_suffix(path)[1:].upper()} files carry no bond orders (a "
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
    if format_suffix(path) not in (".sdf", ".sd", ".mol", ".mol2"):
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


def reference_coords(path: str | os.PathLike, note: bool = True) -> np.ndarray:
    """The 3D coordinates (N, 3) of every molecule of a reference ligand file (for a box), as gnina's and smina's
    --autobox_ligand read it: a file of several poses or ligands gives the box around all of them (`note`: say so)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"autobox ligand not found: {path}")
    if (suffix := format_suffix(path)) not in COORDINATE_SUFFIXES:
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
        print_note(f"{path}: the box is around all {len(mols)} molecules of the file (as gnina's --autobox_ligand)")
    return np.concatenate([mol.GetConformer().GetPositions() for mol in mols])


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
