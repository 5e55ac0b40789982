"""Synthetic complexes (a buried peptide segment as the ligand) and the rescorer's training-only decoys."""
import gzip
import json
from pathlib import Path

import numpy as np
import torch

from sciddiff.dock.ligand_io import ligand_coords, load_ligand
from sciddiff.dock.rescore import FEATURE_NAMES

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def _atoms(pdb_gz: Path) -> np.ndarray:
    with gzip.open(pdb_gz, "rt") as handle:
        return np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in handle
                         if ln.startswith("ATOM") and ln[76:78].strip() != "H"])


def test_a_synthetic_complex_is_the_protein_split_in_two(tmp_path, capsys):
    from sciddiff.dock.synthetic import main

    proteins = tmp_path / "proteins"
    proteins.mkdir()
    source = proteins / "1uou_protein.pdb.gz"
    source.write_bytes((EXAMPLES / "1uou" / "1uou_protein.pdb.gz").read_bytes())
    assert main(["--proteins", str(proteins), "--out", str(tmp_path / "out"), "--complexes", "1"]) == 0
    [cid] = (tmp_path / "out" / "splits" / "synthetic.txt").read_text().split()
    name = cid.split("/")[1]
    folder = tmp_path / "out" / cid
    mol = load_ligand(folder / f"{name}_ligand.sdf.gz")  # sanitizes: bond orders from the residue templates
    ligand, receptor = ligand_coords(mol), _atoms(folder / f"{name}_protein.pdb.gz")
    original = _atoms(source)
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)
    # every ligand atom but the terminal OXT (placed on the next residue's N) is an atom of the input protein ...
    assert (dist(ligand, original).min(1) < 1e-3).all()
    # ... and no longer one of the receptor's, which lost the segment and its two flanking residues (the termini
    # would clash with the atoms they were bonded to), nothing else
    assert dist(ligand, receptor).min() > 2.0
    removed = dist(original, receptor).min(1) > 1e-3
    assert len(receptor) == len(original) - removed.sum()
    assert mol.GetNumAtoms() - 1 + 2 * 4 <= removed.sum() <= mol.GetNumAtoms() - 1 + 2 * 14
    assert mol.GetNumAtoms() >= 8 and any(a.GetIsAromatic() or a.GetSymbol() != "C" for a in mol.GetAtoms())
    assert main(["--proteins", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no .pdb or .pdb.gz files" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["--proteins", str(proteins), "--out", str(tmp_path / "out")]) == 2  # would mix two runs
    assert "already holds synthetic complexes" in capsys.readouterr().err
    from sciddiff.dock import synthetic  # an interrupted run: no partial synthetic/ (its rerun was refused)

    def interrupted(args, files, out):
        (out / "synthetic" / "half").mkdir(parents=True)
        raise KeyboardInterrupt
    original, synthetic._write_complexes = synthetic._write_complexes, interrupted
    try:
        assert main(["--proteins", str(proteins), "--out", str(tmp_path / "i")]) == 130  # Ctrl-C's status
    finally:
        synthetic._write_complexes = original
    assert not (tmp_path / "i" / "synthetic").exists() and not (tmp_path / "i" / ".synthetic-staging").exists()
    assert main(["--proteins", str(proteins), "--out", str(tmp_path / "i"), "--complexes", "1"]) == 0


def _decoys(path: Path, names: list[str], seed: int, blind: bool = False) -> str:
    gen = torch.Generator().manual_seed(seed)
    items = [{"complex": n, "blind": blind, "features": torch.randn(6, len(FEATURE_NAMES), generator=gen),
              "rmsd": torch.rand(6, generator=gen) * 5, "kind": torch.tensor([0, 1, 1, 1, 1, 2]),
              "order_energy": torch.tensor([2, 0, 1, 3])} for n in names]
    torch.save({"items": items, "command": f"test {seed}"}, path)
    return str(path)


def test_extra_decoys_train_every_fold_and_are_never_scored(tmp_path, monkeypatch):
    from sciddiff.dock import rescore_train

    fitted = []  # the complexes each fit trains on
    fit = rescore_train.fit
    monkeypatch.setattr(rescore_train, "fit", lambda items, *a, **k: fitted.append({i["complex"] for i in items})
                        or fit(items, *a, **k))
    real = _decoys(tmp_path / "real.pt", [f"set/{i}" for i in range(6)], 0)
    extra = _decoys(tmp_path / "extra.pt", [f"synthetic/{i}" for i in range(3)] + ["set/0"], 1)
    argv = ["train", "--decoys", real, "--hidden", "0", "--weight-decay", "1", "--epochs", "2", "--folds", "2"]
    assert rescore_train.main([*argv, "--extra-decoys", extra, "--out", str(tmp_path / "r.pt")]) == 0
    synthetic = {f"synthetic/{i}" for i in range(3)}
    assert len(fitted) == 3 and all(synthetic <= f for f in fitted)  # two folds and the final fit
    assert [len(f - synthetic) for f in fitted] == [3, 3, 6]
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["complexes"] == 6 and meta["extra_complexes"] == 3  # set/0 is a real complex: not taken twice
    assert meta["chosen_cross_validation"]["n"] == 6 and meta["poses"] == 9 * 6
    assert meta["decoy_commands"] == ["test 0", "test 1"]


def test_box_and_blind_lists_of_a_complex_share_a_fold(tmp_path, monkeypatch):
    from sciddiff.dock import rescore_train

    fitted = []  # the (complex, blind) lists each fit trains on
    fit = rescore_train.fit
    monkeypatch.setattr(rescore_train, "fit", lambda items, *a, **k: fitted.append(
        {(i["complex"], i["blind"]) for i in items}) or fit(items, *a, **k))
    names = [f"set/{i}" for i in range(6)]
    box, blind = _decoys(tmp_path / "box.pt", names, 0), _decoys(tmp_path / "blind.pt", names, 1, blind=True)
    argv = ["train", "--decoys", box, blind, "--hidden", "0", "--weight-decay", "1", "--epochs", "2", "--folds", "2"]
    assert rescore_train.main([*argv, "--out", str(tmp_path / "r.pt")]) == 0
    assert [len(f) for f in fitted] == [6, 6, 12]  # both lists of 3 complexes per fold, all 12 in the final fit
    for f in fitted[:2]:
        assert {(c, not b) for c, b in f} == f  # a complex's box list trains exactly where its blind list does
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["complexes"] == 6 and meta["candidate_lists"] == 12 and meta["chosen_cross_validation"]["n"] == 12
    fitted.clear()  # the blind lists as --extra-decoys: each stays out of the fold that scores its complex's box list
    assert rescore_train.main(["train", "--decoys", box, "--extra-decoys", blind, "--hidden", "0", "--weight-decay",
                               "1", "--epochs", "2", "--folds", "2", "--out", str(tmp_path / "r2.pt")]) == 0
    for f in fitted[:2]:  # it trained every fold on all 6 (5 of 5 held-out complexes in-sample)
        assert {(c, not b) for c, b in f} == f and len(f) == 6


def test_a_split_may_name_complexes_of_another_root_by_absolute_path(tmp_path):
    from sciddiff.dock.data import complex_files

    elsewhere = tmp_path / "synthetic" / "X_7"
    elsewhere.mkdir(parents=True)
    (elsewhere / "X_7_protein.pdb.gz").write_bytes(b"")
    protein, ligand = complex_files("/nonexistent/docking", str(elsewhere))
    assert protein == str(elsewhere / "X_7_protein.pdb.gz") and ligand.startswith(str(elsewhere / "X_7_ligand"))
    assert complex_files(tmp_path, "synthetic/X_7")[0] == protein
