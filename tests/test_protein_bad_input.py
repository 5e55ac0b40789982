"""`sciddiff backbone prepare | train` on bad input: unreadable chains are skipped with a warning, everything else is one
error line (exit 2) before any work, and nothing is written or deleted on the way (tiny self-made data)."""
import gzip
import json
import re

import pytest
import torch

from sciddiff.cli import main
from sciddiff.protein.data import SPLIT_FILE
from sciddiff.protein.geometry import backbone_from_dihedrals
from sciddiff.protein.pdbio import backbone_to_pdb_string

TINY_MODEL = ["--dim", "16", "--edge-dim", "8", "--heads", "2", "--points", "2", "--blocks", "1", "--k", "4",
              "--k-sc", "2"]
HEADER = "id\tpath\tchain\tlength\tn_breaks"


def _pdb(n: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    ang = torch.tensor([-1.0, -0.8])[:, None] + 0.1 * torch.randn(2, n, generator=g)
    return backbone_to_pdb_string(backbone_from_dihedrals(ang[0].double(), ang[1].double()).numpy())


def _root(tmp_path, rows: list[str], good: int = 4):
    """A data folder whose manifest lists `good` readable 20-29-residue chains good0.. and then `rows`."""
    folder = tmp_path / "data" / "proteins"
    (folder / "pdb").mkdir(parents=True)
    for i in range(good):
        with gzip.open(folder / "pdb" / f"good{i}.pdb.gz", "wt") as handle:
            handle.write(_pdb(20 + 3 * i, i))
    lines = [HEADER] + [f"toy:good{i}\tpdb/good{i}.pdb.gz\tA\t{20 + 3 * i}\t0" for i in range(good)] + rows
    (folder / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return folder.parent


def _lines(text: str) -> list[str]:
    """Output lines without the progress bars (which redraw with carriage returns)."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip() and "reading chains" not in line]


def _prepare(root, out, *extra):
    return main(["backbone", "prepare", "--data", str(root), "--out", str(out), "--no-docking", *extra])


def test_prepare_skips_unreadable_chains_with_one_warning_each(tmp_path, capsys):
    pdb = tmp_path / "data" / "proteins" / "pdb"
    root = _root(tmp_path, ["toy:junk\tpdb/junk.pdb.gz\tA\t100\t0",
                            "toy:empty\tpdb/empty.pdb\tA\t100\t0",
                            "toy:missing\tpdb/missing.pdb.gz\tA\t100\t0",
                            "toy:wrongchain\tpdb/good0.pdb.gz\tZ\t20\t0",
                            "toy:badbreaks\tpdb/good1.pdb.gz\tA\t23\tb548e6491f",
                            "toy:shortrow\tpdb/good1.pdb.gz\t23",
                            "toy:short\tpdb/short.pdb.gz\tA\t8\t0",
                            "toy:broken\tpdb/good2.pdb.gz\tA\t26\t1"])
    with gzip.open(pdb / "junk.pdb.gz", "wt") as handle:
        handle.write("this is not a PDB file\n")
    (pdb / "empty.pdb").write_text("")
    with gzip.open(pdb / "short.pdb.gz", "wt") as handle:
        handle.write(_pdb(8, 9))
    out, split = tmp_path / "chains.pt", tmp_path / "split.tsv"
    assert _prepare(root, out, "--split", str(split), "--new-split") == 0
    err = _lines(capsys.readouterr().err)
    note = err.pop()  # short and broken chains are left out, counted in one note
    assert note.startswith("note: left out 1 chain(s) with n_breaks > 0") and "and 1 with a chain break" in note
    assert all(line.startswith("warning: skipped chain toy:") for line in err), err
    assert [line.split()[3].rstrip(":") for line in err] == \
        ["toy:junk", "toy:empty", "toy:missing", "toy:wrongchain", "toy:badbreaks", "toy:shortrow"]
    assert "no chain 'Z'" in err[3] and "n_breaks 'b548e6491f'" in err[4]
    data = torch.load(out, weights_only=True)
    assert data["ids"] == [f"toy:good{i}" for i in range(4)]
    assert split.read_text().splitlines()[1:] and all(line.startswith("toy:good") for line in split.read_text().splitlines()[1:])


@pytest.mark.parametrize("rows, message", [
    ([], "no usable chain"),  # a header only
    (["toy:short\tpdb/good0.pdb.gz\tA\t20\t0"], "no usable chain"),  # made shorter than 20 residues below
    (["toy:missing\tpdb/missing.pdb.gz\tA\t100\t0"], "no usable chain"),
])
def test_prepare_without_a_usable_chain_is_one_error_and_keeps_the_old_split(tmp_path, capsys, rows, message):
    root = _root(tmp_path, rows, good=0)
    with gzip.open(root / "proteins" / "pdb" / "good0.pdb.gz", "wt") as handle:
        handle.write(_pdb(12, 0))
    out, split = tmp_path / "chains.pt", tmp_path / "split.tsv"
    split.write_text("id\tcluster\tsplit\nold\t0\ttrain\n")
    assert _prepare(root, out, "--split", str(split), "--new-split") == 2
    err = [line for line in _lines(capsys.readouterr().err) if not line.startswith("warning:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
    assert split.read_text() == "id\tcluster\tsplit\nold\t0\ttrain\n"  # --new-split used to delete it up front


def test_prepare_refuses_a_bad_manifest_split_or_output_up_front(tmp_path, capsys, monkeypatch):
    root = _root(tmp_path, [])
    (tmp_path / "adir").mkdir()
    bad_split = tmp_path / "bad_split.tsv"
    bad_split.write_text("garbage\n")
    shipped = SPLIT_FILE.read_bytes()

    def no_work(*args, **kwargs):
        raise AssertionError("a chain was read before the options were checked")

    monkeypatch.setattr("sciddiff.protein.pdbio.read_chain", no_work)
    out = tmp_path / "chains.pt"
    for extra, message in ((["--new-split"], "--new-split needs --split"),
                           (["--out", str(tmp_path / "adir")], "--out "),
                           (["--out", "/proc/chains.pt"], "--out /proc/chains.pt cannot be written"),
                           (["--split", str(tmp_path / "adir")], "--split "),
                           (["--split", str(out)], "--out and --split are the same file"),
                           (["--split", str(bad_split)], "is not a split file")):
        assert _prepare(root, out, *extra) == 2, extra  # a later --out wins over the first
        err = _lines(capsys.readouterr().err)
        assert len(err) == 1 and message in err[0], (extra, err)
    assert SPLIT_FILE.read_bytes() == shipped and not out.exists()

    (root / "proteins" / "manifest.tsv").write_text("id\tpath\tchain\nx\tpdb/good0.pdb.gz\tA\n")
    assert _prepare(root, out) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "no column n_breaks" in err[0] and not out.exists()


def test_prepare_refuses_a_chain_id_listed_twice(tmp_path, capsys):
    """A split file names chains by id: two manifest rows of one id shared its entry (a test chain's copy went to
    train beside it)."""
    root = _root(tmp_path, [])
    manifest = root / "proteins" / "manifest.tsv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[1]]) + "\n")
    assert _prepare(root, tmp_path / "c.pt", "--split", str(tmp_path / "split.tsv"), "--new-split") == 2
    assert "lists the chain id 'toy:good0' more than once" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bb")
    out = tmp / "chains.pt"
    assert _prepare(_root(tmp, [], good=6), out, "--split", str(tmp / "split.tsv"), "--new-split") == 0
    return out


def _train(chains, out, *extra):
    return main(["backbone", "train", "--chains", str(chains), "--out", str(out), "--batch-residues", "120",
                 "--device", "cpu", "--threads", "1", "--log-every", "1", *TINY_MODEL, *extra])


def test_train_refuses_bad_options_before_making_a_run_folder(chains, tmp_path, capsys):
    out = tmp_path / "run"
    for extra, message in ((["--lr", "nan"], "--lr must be a finite number > 0"),
                           (["--lr", "-1"], "--lr must be a finite number > 0"),
                           (["--warmup", "-5"], "--warmup must be >= 0"),
                           (["--log-every", "0"], "--log-every must be >= 1"),
                           (["--val-every", "0"], "--val-every must be >= 1"),
                           (["--ema", "2"], "--ema must lie in [0, 1]"),
                           (["--ckpt-seconds", "nan"], "--ckpt-seconds must be positive"),
                           # model and loss options: tracebacks with a run folder left behind, or meaningless runs
                           (["--k", "0"], "--k must be >= 1"), (["--heads", "0"], "--heads must be >= 1"),
                           (["--blocks", "0"], "--blocks must be >= 1"), (["--max-offset", "-3"], "--max-offset must be >= 1"),
                           (["--scale", "0"], "--scale must be a finite number > 0"),
                           (["--aux-weight", "-5"], "--aux-weight must be a finite number >= 0"),
                           (["--length-balance", "nan"], "--length-balance must be a finite number >= 0"),
                           (["--self-condition", "3"], "--self-condition and --ss-drop are probabilities")):
        assert _train(chains, out, "--max-steps", "1", *extra) == 2, extra
        err = _lines(capsys.readouterr().err)
        assert len(err) == 1 and message in err[0], (extra, err)
        assert not out.exists(), extra
    # --warmup 0 is no warm-up: the first step runs at the full rate (it used to divide by zero)
    assert _train(chains, out, "--max-steps", "1", "--warmup", "0", "--lr", "0.001") == 0
    assert (out / "log.csv").read_text().splitlines()[1].split(",")[0] == "1"
    assert "lr=0.001 " in capsys.readouterr().out


def test_training_reads_chains_in_the_models_units_and_a_resume_keeps_its_own_chains(chains, tmp_path, capsys):
    """--scale S trained on chains in 10 A units whatever S (the loss and the sampler read the model's): a model of
    another scale learned wrongly sized chains. A resume on other chains only printed a note; --init on a resume was
    ignored without one."""
    from sciddiff.protein.data import ChainSet
    from sciddiff.protein.train import build_parser, train

    captured = []
    original = ChainSet.__init__

    def spy(self, data, split="train", scale=10.0, device="cpu"):
        captured.append(scale)
        original(self, data, split, scale, device)

    try:
        ChainSet.__init__ = spy
        train(build_parser().parse_args(["--chains", str(chains), "--out", str(tmp_path / "s5"), "--batch-residues",
                                         "120", "--threads", "1", "--max-steps", "1", *TINY_MODEL, "--scale", "5"]))
    finally:
        ChainSet.__init__ = original
    assert captured and set(captured) == {5.0}
    state = torch.load(tmp_path / "s5" / "state.pt", weights_only=False)
    del state["data"]  # as a run saved before the fix, which trained in 10 A units: not resumed in 5 A ones
    torch.save(state, tmp_path / "s5" / "state.pt")
    assert _train(chains, tmp_path / "s5", "--max-steps", "2", "--scale", "5") == 2
    assert "began before --scale applied to the data" in capsys.readouterr().err
    out = tmp_path / "run"
    assert _train(chains, out, "--max-steps", "1") == 0
    data = torch.load(chains, weights_only=False)
    data["ids"] = [f"other{i}" for i in range(len(data["ids"]))]  # the same file name, other chains
    torch.save(data, tmp_path / "chains.pt")
    capsys.readouterr()
    assert _train(tmp_path / "chains.pt", out, "--max-steps", "2") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "belongs to a run on other chains" in err[0], err
    moved = tmp_path / "elsewhere" / chains.name  # the same chains in another folder resume
    moved.parent.mkdir()
    moved.write_bytes(chains.read_bytes())
    assert _train(moved, out, "--max-steps", "2", "--init", str(tmp_path / "s5" / "model.pt")) == 0
    assert f"note: --init {tmp_path / 's5' / 'model.pt'} is not used" in capsys.readouterr().err


def test_resume_with_other_model_options_is_refused(chains, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(chains, out, "--max-steps", "1") == 0
    state = (out / "state.pt").read_bytes()
    capsys.readouterr()
    resume = ["backbone", "train", "--chains", str(chains), "--out", str(out), "--batch-residues", "120", "--threads",
              "1", "--max-steps", "2"]
    # --dim 128 is the default, given explicitly against this dim-16 run; --no-ss-condition likewise
    for option, value in (("--dim", "24"), ("--dim", "128"), ("--blocks", "2"), ("--ss-condition", None)):
        model = dict(zip(TINY_MODEL[::2], TINY_MODEL[1::2]))
        model[option] = value
        assert main([*resume, *(a for pair in model.items() for a in pair if a is not None)]) == 2, option
        err = _lines(capsys.readouterr().err)
        assert len(err) == 1 and "different model configuration" in err[0] and option in err[0], (option, err)
        assert (out / "state.pt").read_bytes() == state
    # model options left at their defaults, or given as the run's: the run's own configuration is resumed
    assert main(resume) == 0
    assert main([*resume[:-1], "3", *TINY_MODEL]) == 0
    assert capsys.readouterr().out.count("resumed") == 2
    assert torch.load(out / "model.pt", weights_only=True)["model_config"]["dim"] == 16


def test_an_interrupted_run_saves_and_resumes(chains, tmp_path, capsys, monkeypatch):
    from sciddiff.train import interrupt

    calls = []  # Ctrl-C noticed at the third check between steps: the run saves there and exits 130
    monkeypatch.setattr(interrupt, "stop_requested", lambda *_: calls.append(1) or len(calls) > 2)
    out = tmp_path / "run"
    assert _train(chains, out, "--max-steps", "9") == 130
    assert torch.load(out / "state.pt", weights_only=False)["step"] == 2
    monkeypatch.undo()
    assert _train(chains, out, "--max-steps", "3") == 0 and "resumed" in capsys.readouterr().out


def test_resume_keeps_the_runs_training_options_and_a_finished_model_is_never_replaced(chains, tmp_path, capsys):
    """Resuming fell back to this call's defaults for --lr, --warmup, ... (a --warmup 2 run resumed at lr 2.5e-5);
    a run folder holding model.pt without state.pt was silently trained over from scratch."""
    out = tmp_path / "run"
    assert _train(chains, out, "--max-steps", "2", "--lr", "0.001", "--warmup", "2") == 0
    capsys.readouterr()
    assert _train(chains, out, "--max-steps", "3", "--lr", "0.002") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "trained with other options (--lr: 0.001 there, 0.002 here)" in err[0]
    assert _train(chains, out, "--max-steps", "3") == 0  # no --lr, no --warmup: the run's own, not the defaults
    state = torch.load(out / "state.pt", weights_only=False)
    assert state["run_options"]["lr"] == 0.001 and state["run_options"]["warmup"] == 2 and state["step"] == 3
    assert len(json.loads((out / "config.json").read_text())["commands"]) == 2  # both calls that trained it
    (out / "state.pt").unlink()  # a finished run kept without its (large) training state
    model = (out / "model.pt").read_bytes()
    assert _train(chains, out, "--max-steps", "2") == 2
    assert "holds a trained model.pt but no state.pt" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == model
    (out / "model.pt").unlink()  # a run that failed before its first checkpoint (config.json, log.csv): re-runnable
    assert _train(chains, out, "--max-steps", "1") == 0
    for foreign, message in ((chains, "is not a backbone checkpoint"), (tmp_path / "run2" / "state.pt", "training state")):
        if foreign.name == "state.pt":
            assert _train(chains, tmp_path / "run2", "--max-steps", "1") == 0
        assert _train(chains, tmp_path / "run3", "--max-steps", "1", "--init", str(foreign)) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "run3").exists()


def test_read_chain_corrupt_files_are_one_error_and_the_first_protein_chain_and_mse_are_read(tmp_path):
    from sciddiff.protein.pdbio import read_chain

    lines = [ln for ln in _pdb(24, 3).splitlines() if ln.startswith("ATOM")]
    bad = lines[:5] + [lines[5][:30] + "    abcd" + lines[5][38:]] + lines[6:]  # a coordinate that is no number
    (tmp_path / "bad.pdb").write_text("\n".join(bad) + "\nEND\n")
    (tmp_path / "cut.cif").write_text("data_x\nloop_\n_atom_site.group_PDB\n_atom_site.id\n_atom_site.type_symbol\n"
                                      "ATOM 1\n")  # an mmCIF cut short inside its atom table
    for name in ("bad.pdb", "cut.cif"):
        with pytest.raises(ValueError, match="not a readable PDB or mmCIF file"):
            read_chain(tmp_path / name)
    # a DNA chain first, then the protein as chain B; its 10th residue as selenomethionine (a HETATM, as the PDB has)
    dna = [f"ATOM  {k + 1:5d}  P    DA A{k + 1:4d}    {50.0 + 3 * k:8.3f}{50.0:8.3f}{50.0:8.3f}  1.00 20.00           P"
           for k in range(4)]
    protein = [ln[:21] + "B" + ln[22:] for ln in lines]
    protein = ["HETATM" + ln[6:17] + "MSE" + ln[20:] if int(ln[22:26]) == 10 else ln for ln in protein]
    protein = [ln[:17] + "MSE" + ln[20:] if int(ln[22:26]) == 12 else ln for ln in protein]  # as ATOM (PDBFixer)
    (tmp_path / "two.pdb").write_text("\n".join(dna + ["TER"] + protein) + "\nEND\n")
    chain = read_chain(tmp_path / "two.pdb")
    assert chain.chain_id == "B" and len(chain) == 24 and chain.sequence[9] == chain.sequence[11] == "M"
    assert chain.ca_breaks() == 0
    assert chain.protein_chains_in_file == 1


def test_a_chain_the_split_file_does_not_list_joins_its_clusters_held_out_split(tmp_path):
    # a newer reader may read chains an older one could not (MSE): such a chain must not land in train beside a
    # val/test chain of its own sequence cluster (the toy chains are all poly-glycine: one cluster)
    root = _root(tmp_path, [], good=4)
    split = tmp_path / "split.tsv"
    split.write_text("id\tcluster\tsplit\ntoy:good0\t0\tval\ntoy:good1\t0\tval\ntoy:good2\t0\tval\n")
    assert _prepare(root, tmp_path / "chains.pt", "--split", str(split)) == 0
    data = torch.load(tmp_path / "chains.pt", weights_only=True)
    assert data["ids"][3] == "toy:good3" and data["split"].tolist() == [1, 1, 1, 1]
