"""Backbone metrics: synthetic chains with known answers, and natural chains against the reference statistics."""

import math

import numpy as np
import pytest
import torch

from sciddiff.protein import geometry, metrics, ramachandran
from sciddiff.protein.data import data_root, read_manifest
from sciddiff.protein.evaluate import complete_backbone
from sciddiff.protein.pdbio import read_chain


def test_ideal_helix_scores_as_helix():
    m = metrics.chain_metrics(metrics.ideal_helix(40))
    assert m["ca_valid"] and m["ca_clashes"] == 0
    assert m["ca_ca_mean"] == pytest.approx(3.80, abs=0.02)
    assert m["C-N_mean"] == pytest.approx(1.329, abs=1e-3)
    assert m["rama_favoured"] == 1.0
    assert m["helix"] > 0.9 and m["strand"] == 0.0
    assert m["rg_ratio"] > 1.5  # a 40-residue rod is far from globular


def test_a_gap_in_an_experimental_chain_is_no_peptide_bond():
    helix = metrics.ideal_helix(40)
    broken = np.concatenate([helix[:20], helix[25:]])  # residues 21-25 missing: residues 20 and 26 are 7 A apart
    gaps = np.zeros(len(broken) - 1, bool)
    gaps[19] = True
    counted, skipped = metrics.chain_metrics(broken), metrics.chain_metrics(broken, gaps)
    assert not counted["ca_valid"] and counted["C-N_mean"] > 1.4 and counted["rama_favoured"] < 1.0
    assert skipped["ca_valid"] and skipped["gaps"] == 1 and skipped["rama_favoured"] == 1.0
    assert skipped["C-N_mean"] == pytest.approx(1.329, abs=1e-3)
    assert skipped["ca_ca_mean"] == pytest.approx(3.80, abs=0.02)


def test_peptide_planarity_counts_twisted_peptides_and_not_cis_ones():
    phi, psi = torch.full((30,), -1.0, dtype=torch.float64), torch.full((30,), -0.8, dtype=torch.float64)
    omega = torch.full((30,), math.pi, dtype=torch.float64)
    omega[5], omega[12] = math.radians(140.0), 0.0  # one peptide 40 deg from planar, one cis
    m = metrics.chain_metrics(geometry.backbone_from_dihedrals(phi, psi, omega).numpy())
    assert m["omega_twisted"] == pytest.approx(1 / 29)
    assert m["omega_deviation_mean"] == pytest.approx(40.0 / 29, abs=1e-6)
    gaps = np.zeros(29, bool)
    gaps[5] = True  # the twisted peptide, 5 -> 6, left out as a gap
    assert metrics.chain_metrics(geometry.backbone_from_dihedrals(phi, psi, omega).numpy(), gaps)["omega_twisted"] == 0


def test_gaps_are_read_from_numbering_and_geometry(tmp_path):
    # DSSP and MolProbity find breaks from geometry: a numbering that skips over a bonded peptide (chymotrypsin's) is
    # no gap; a skip where C-N is 7 A is one; consecutive numbers stay a peptide, so a broken sample is judged broken
    from sciddiff.protein.evaluate import read_folder
    from sciddiff.protein.pdbio import backbone_to_pdb_string

    helix = metrics.ideal_helix(40)
    broken = np.concatenate([helix[:20], helix[25:]])

    def renumber(text, after, by):
        return "\n".join(ln[:22] + f"{int(ln[22:26]) + by:4d}" + ln[26:] if ln.startswith("ATOM") and
                         int(ln[22:26]) > after else ln for ln in text.splitlines()) + "\n"

    (tmp_path / "a_skip_bonded.pdb").write_text(renumber(backbone_to_pdb_string(helix), 20, 5))
    (tmp_path / "b_skip_broken.pdb").write_text(renumber(backbone_to_pdb_string(broken), 20, 5))
    (tmp_path / "c_contiguous_broken.pdb").write_text(backbone_to_pdb_string(broken))
    _, _, gaps = read_folder(tmp_path)
    assert [int(g.sum()) for g in gaps] == [0, 1, 0]


def test_one_structure_in_two_formats_counts_once(tmp_path, capsys):
    import gzip

    from sciddiff.protein.evaluate import read_folder
    from sciddiff.protein.pdbio import backbone_to_pdb_string

    text = backbone_to_pdb_string(metrics.ideal_helix(12))
    (tmp_path / "x.pdb").write_text(text)
    (tmp_path / "x.pdb.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "x_2.pdb").write_text(text)
    names, backbones, _ = read_folder(tmp_path)
    assert names == ["x.pdb", "x_2.pdb"] and len(backbones) == 2
    assert "x.pdb.gz left out: the same name in another format" in capsys.readouterr().err


def test_ramachandran_regions():
    deg = np.radians
    # alpha helix, beta strand, and the sterically forbidden phi = psi = 0
    pref = ramachandran.preference(deg(np.array([-63.0, -120.0, 0.0])), deg(np.array([-42.0, 130.0, 0.0])))
    assert pref[0] >= ramachandran.FAVOURED and pref[1] >= ramachandran.FAVOURED and pref[2] < ramachandran.ALLOWED
    frac = ramachandran.classify(deg(np.array([-63.0, 120.0, np.nan])), deg(np.array([-42.0, 60.0, 10.0])))
    assert frac == {"favoured": 0.5, "allowed": 0.5}


def test_ca_clash_counts_only_distant_pairs():
    helix = metrics.ideal_helix(10)
    assert metrics.ca_clashes(helix) == 0  # i, i+3 in a helix is 5 A
    folded = helix.copy()
    folded[9] += helix[0, 1] - helix[9, 1] + np.array([2.0, 0.0, 0.0])  # residue 9's CA 2 A from residue 0's
    assert metrics.ca_clashes(folded) == 1
    assert not metrics.chain_metrics(folded)["ca_valid"]


def test_random_walk_baseline_is_reproducible_and_unfolded():
    a = metrics.random_walk(60, torch.Generator().manual_seed(5))
    b = metrics.random_walk(60, torch.Generator().manual_seed(5))
    assert np.array_equal(a, b)
    m = metrics.chain_metrics(a)
    assert m["ca_ca_within_tol"] == 1.0 and m["rama_favoured"] < 0.5


def test_mmd_is_zero_for_one_distribution_and_positive_between_two():
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)), rng.normal(loc=1.0, size=(200, 4))
    bw = metrics.median_bandwidth(x)
    assert abs(metrics.mmd(x, y, bw)) < 0.02
    assert metrics.mmd(x, z, bw) > 0.1


def test_distance_profile_counts_neighbours_per_residue():
    helix = metrics.ideal_helix(30)
    prof = metrics.distance_profile(helix)
    assert prof.shape == (24,)
    # every pair |i-j| >= 2 within 24 A is counted twice (once per residue) and divided by L
    ca = helix[:, 1]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    i, j = np.triu_indices(30, k=2)
    assert prof.sum() == pytest.approx(2 * (d[i, j] < 24).sum() / 30)


def _natural_chains(count: int) -> list[np.ndarray]:
    root = data_root()
    if not (root / "proteins" / "manifest.tsv").is_file():
        pytest.skip(f"natural chains not found under {root} (set SCIDDIFF_DATA)")
    rows = read_manifest(root)[::7][:count]  # a spread over all sources
    return [complete_backbone(read_chain(r["path"], r["chain"] or None)) for r in rows]


def test_metrics_on_natural_chains_reproduce_reference_statistics():
    """shared/data/README.md (904 unbroken chains): N-CA 1.459, CA-C 1.524, C-N 1.329 A; N-CA-C 111.0, CA-C-N 116.5,
    C-N-CA 121.7 deg; CA-CA 3.800 A; no clashes; Ramachandran favoured 90.2 +/- 6%, allowed 97.1 +/- 2.5%;
    Rg ~ 1.59 N^0.465; DSSP helix 0.27, strand 0.31. A 60-chain subset must match within its sampling error."""
    per_chain = [metrics.chain_metrics(b) for b in _natural_chains(60)]
    mean = {k: float(np.mean([m[k] for m in per_chain])) for k in per_chain[0] if k != "dssp"}
    assert mean["N-CA_mean"] == pytest.approx(1.459, abs=0.005)
    assert mean["CA-C_mean"] == pytest.approx(1.524, abs=0.005)
    assert mean["C-N_mean"] == pytest.approx(1.329, abs=0.005)
    assert mean["N-CA-C_mean"] == pytest.approx(111.0, abs=0.7)
    assert mean["CA-C-N_mean"] == pytest.approx(116.5, abs=0.7)
    assert mean["C-N-CA_mean"] == pytest.approx(121.7, abs=0.7)
    assert mean["ca_ca_mean"] == pytest.approx(3.80, abs=0.02)
    assert mean["ca_clashes"] < 0.1
    assert mean["rama_favoured"] == pytest.approx(0.902, abs=0.025)
    assert mean["rama_allowed"] == pytest.approx(0.971, abs=0.015)
    assert mean["helix"] == pytest.approx(0.27, abs=0.07)
    assert mean["strand"] == pytest.approx(0.31, abs=0.07)
    assert mean["rg_ratio"] == pytest.approx(1.0, abs=0.08)


def test_chains_too_short_for_dssp_or_angles_get_metrics_without_nan():
    """The sampler accepts 5 residues and eval reads chains of any length: pydssp itself fails below 6 residues, and a
    1-residue chain has no peptide bond, a 2-residue one no residue with both phi and psi."""
    import json

    per_chain = [metrics.chain_metrics(metrics.ideal_helix(n)) for n in range(1, 8)]
    assert [m["dssp"] for m in per_chain[:5]] == ["-" * n for n in range(1, 6)]  # loop: too short for H or E
    assert per_chain[5]["dssp"] != "-" * 6  # from 6 residues on, pydssp decides (here: helix)
    assert per_chain[0]["C-N_mean"] is None and per_chain[0]["ca_ca_mean"] is None
    assert per_chain[1]["rama_favoured"] is None and per_chain[1]["C-N_mean"] == pytest.approx(1.329, abs=1e-3)
    summary = metrics.summarize(per_chain)
    assert summary["C-N_mean"] == pytest.approx(1.329, abs=1e-3) and summary["rama_favoured"] == 1.0
    assert metrics.summarize(per_chain[:1])["rama_favoured"] is None  # defined for no chain
    json.dumps([per_chain, summary], allow_nan=False)  # strict JSON
