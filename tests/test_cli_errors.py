"""Bad input anywhere in the command line: one error line, a non-zero exit, and nothing written."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddiff.cli import UserError, check_output_path, load_or_fail, main

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
PROTEIN = str(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
LIGAND = str(EXAMPLES / "1uou" / "1uou_ligand.sdf")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.strip() and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def test_check_output_path_fails_early_and_creates_nothing(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot be written"):
        check_output_path(tmp_path / "a_file" / "out.json")  # a file on the way
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_output_path(tmp_path / "a_file", folder=True)
    with pytest.raises(UserError, match="exists and is a folder"):
        check_output_path(tmp_path, option="--json")
    monkeypatch.chdir(tmp_path)
    for name in ("", ".", "..", str(tmp_path)):  # replacing these would delete the current folder or its parents
        with pytest.raises(UserError, match="must name the output folder itself"):
            check_output_path(name, folder=True, replaced=True)
    assert check_output_path(".", folder=True) == Path(".")  # writing into it is fine
    assert check_output_path(tmp_path / "new" / "deeper", folder=True) == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_load_or_fail_names_what_the_file_is_not(tmp_path):
    def load(path):
        return torch.load(path, weights_only=True)["config"]

    junk = tmp_path / "ligand.sdf"
    for text in ("not a checkpoint\n", "hello world\n", "e\n", "j\n"):  # the unpickler fails differently on each
        junk.write_text(text)
        with pytest.raises(UserError, match=r"ligand.sdf is not a score model \(not a torch checkpoint file\)"):
            load_or_fail(load, junk, "score model")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other.pt is not a score model \(no 'config' entry\)"):
        load_or_fail(load, tmp_path / "other.pt", "score model")
    with pytest.raises(UserError, match="no score model at") as err:
        load_or_fail(load, tmp_path / "missing.pt", "score model")
    assert "pip install -e" not in str(err.value)  # the user's own file: no word about the shipped ones
    # the Python loaders' own error for bytes that are no checkpoint (torch advised weights_only=False, or raised a
    # bare KeyError / IndexError / EOFError), and a real checkpoint holding a pickled object keeps torch's reason
    import pickle

    import numpy as np

    from sciddiff.train.checkpoint import load_checkpoint

    for text in ("hello world\n", "", "{\"a\": 1}\n"):
        junk.write_text(text)
        with pytest.raises(pickle.UnpicklingError, match="ligand.sdf is not a torch checkpoint file"):
            load_checkpoint(junk)
    torch.save({"config": {"steps": np.int64(3)}}, tmp_path / "numpy.pt")
    with pytest.raises(UserError, match=r"numpy.pt: it holds a pickled object a weights-only load refuses \(Unsupported "
                                        r"global: GLOBAL numpy.*scalar was not an allowed global by default\)$"):
        load_or_fail(load_checkpoint, tmp_path / "numpy.pt", "score model")  # (torch's preamble: escape codes)


def test_a_missing_shipped_checkpoint_says_where_they_come_from(tmp_path, capsys):
    """A non-editable install leaves data/ behind: the shipped checkpoints' absence is said, never silent."""
    from sciddiff.cli import SHIPPED_DATA
    from sciddiff.dock.cli import _load_optional

    gone = SHIPPED_DATA / "dock" / "no_such_model.pt"
    with pytest.raises(UserError, match=r"no backbone checkpoint at .*no_such_model.pt \(.*`pip install -e \.`\)"):
        load_or_fail(torch.load, gone, "backbone checkpoint")
    assert _load_optional(None, gone, "score model", torch.load, "--model") is None  # docking goes on without it...
    note = capsys.readouterr().err
    assert note.startswith("note: no score model at") and "--model none" in note and "pip install -e ." in note
    assert _load_optional("none", gone, "score model", torch.load, "--model") is None  # ...and `none` is silent
    assert capsys.readouterr().err == ""


def test_dock_refuses_to_replace_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND, "--out", ".",
                 "--overwrite", "--model", "none"]) == 2
    assert "must name the output folder itself" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND, "--model",
                 LIGAND, "--out", "o"]) == 2
    assert "1uou_ligand.sdf is not a score model" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_dock_eval_reports_a_missing_data_folder_and_failed_complexes(tmp_path, capsys):
    split = tmp_path / "split.txt"
    split.write_text("set/NOPE\n")
    assert main(["dock-eval", "--data", str(tmp_path / "nope"), "--split", str(split), "--out", str(tmp_path / "e")]) == 2
    assert "docking data folder not found" in one_line_error(capsys)
    (tmp_path / "data").mkdir()
    assert main(["dock-eval", "--data", str(tmp_path / "data"), "--split", str(split), "--out", str(tmp_path / "e"),
                 "--every", "0"]) == 2
    assert "--every must be >= 1" in one_line_error(capsys)
    assert main(["dock-eval", "--data", str(tmp_path / "data"), "--split", str(split), "--out", str(tmp_path / "e"),
                 "--model", "none", "--no-posebusters"]) == 2  # no folder for the complex: refused before any work
    assert "1 of the 1 complexes" in one_line_error(capsys) and not (tmp_path / "e").exists()
    (tmp_path / "data" / "set" / "NOPE").mkdir(parents=True)  # a folder without the complex's files
    assert main(["dock-eval", "--data", str(tmp_path / "data"), "--split", str(split), "--out", str(tmp_path / "e"),
                 "--model", "none", "--no-posebusters"]) == 1  # a failed complex counts as a miss AND is reported
    captured = capsys.readouterr()
    assert "set/NOPE: failed" in captured.err and "1 of 1 complexes failed" in captured.err
    summary = (tmp_path / "e" / "summary.json").read_text()
    assert "Infinity" not in summary and '"median_rmsd_top1": null' in summary  # strict JSON


def test_backbone_commands_refuse_foreign_files(tmp_path, capsys):
    assert main(["backbone", "sample", "--length", "20", "--checkpoint", LIGAND, "--out", str(tmp_path / "s")]) == 2
    assert "is not a backbone checkpoint" in one_line_error(capsys)
    assert not (tmp_path / "s").exists()  # the output folder is made only once the model has loaded
    folder = tmp_path / "designs"
    folder.mkdir()
    (folder / "a.pdb.gz").write_bytes(b"garbage, not gzip")
    (folder / "b.pdb").write_text("")
    assert main(["backbone", "eval", str(folder)]) == 2
    assert "not a readable PDB or mmCIF file" in one_line_error(capsys)
    assert main(["backbone", "eval", str(folder), "--json", str(folder)]) == 2
    assert "--json" in one_line_error(capsys)


def test_policy_train_bad_data_leaves_no_run_folder(tmp_path, capsys):
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(gzip.compress(b"junk"))
    for data in ("single.npy", "junk.npz"):
        assert main(["policy", "train", "--data", str(tmp_path / data), "--out", str(tmp_path / "run"),
                     "--steps", "1"]) == 2
        assert "from `sciddiff policy prepare`" in one_line_error(capsys)
    assert main(["policy", "train", "--data", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "run"),
                 "--steps", "0"]) == 2
    assert "--steps must be at least 1 (0 only re-saves an --init policy" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_small_mistakes_get_their_own_message(tmp_path, capsys):
    assert main(["policy", "demos", "--out", str(tmp_path / "d.zarr"), "--restart-steps", "50"]) == 2
    assert "--restart-steps needs --from-policy" in one_line_error(capsys)
    table = tmp_path / "table.csv"
    table.write_text("protein,ligand,name\n")
    assert main(["dock", "--batch", str(table), "--out", str(tmp_path / "o"), "--model", "none"]) == 2
    assert "has a header but no rows" in one_line_error(capsys)
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--center", "0", "0", "0", "--size", "inf", "9",
                 "9", "--out", str(tmp_path / "o")]) == 2
    assert "finite and positive" in one_line_error(capsys)
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "o").exists()


def test_dock_mistakes_from_the_first_user_audit(tmp_path, capsys):
    """One error line and nothing written for: an output that names an input (dock-score replaced the poses it
    scored), dummy atoms (docked as 2 A atoms), a seed RDKit would repeat or torch cannot take, --autobox-add without
    --autobox in dock-eval (docked blind), --ranking learned without a rescorer (ranked by energy under its name), an
    autobox ligand without coordinates (the message listed SMILES files)."""
    poses = tmp_path / "poses.sdf"
    poses.write_text(Path(LIGAND).read_text())
    before = poses.read_bytes()
    for option in ("--json", "--out"):
        assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(poses), option, str(poses)]) == 2
        assert "is the --ligand file" in one_line_error(capsys)
    assert poses.read_bytes() == before
    out = str(tmp_path / "o")
    for ligand, message in (("*c1ccccc1", "dummy or attachment atoms (*)"), ("[2*]CCO", "dummy or attachment atoms")):
        assert main(["dock", "--protein", PROTEIN, "--ligand", ligand, "--autobox-ligand", LIGAND, "--out", out]) == 2
        assert message in one_line_error(capsys)
    for seed in ("-1", str(2**31), "99999999999999999999"):
        assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND, "--seed", seed,
                     "--out", out]) == 2
        assert "--seed must lie between 0 and 2147483647" in one_line_error(capsys)
    split = tmp_path / "split.txt"
    split.write_text("1uou\n")
    assert main(["dock-eval", "--data", str(EXAMPLES), "--split", str(split), "--autobox-add", "8", "--out", out]) == 2
    assert "--autobox-add needs --autobox" in one_line_error(capsys)
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND, "--rescore", "none",
                 "--ranking", "learned", "--model", "none", "--out", out]) == 2
    assert "--ranking learned needs the rescoring model" in one_line_error(capsys)
    (tmp_path / "ref.cif").write_text("data_x\n")
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", str(tmp_path / "ref.cif"),
                 "--out", out]) == 2
    assert "give a file with 3D coordinates: .sdf" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def _example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_refuse_bad_input_before_the_work(tmp_path, capsys):
    generation = _example("backbone_generation")
    assert generation.main(["--num", "1", "--out", str(tmp_path / "b")]) == 2
    assert "--num >= 2" in one_line_error(capsys)
    assert generation.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")]) == 2
    assert "no backbone checkpoint" in one_line_error(capsys)
    assert not (tmp_path / "b").exists()
    from sciddiff.policy.latency import main as latency

    assert latency([LIGAND]) == 2
    assert "is not a policy checkpoint" in one_line_error(capsys)
    custom = _example("diffusion_policy_custom_env")
    (tmp_path / "afile").write_text("")
    for argv, message in ((["--demos", "2"], "--demos must be at least 3"),  # it wrote the demos, then failed
                          (["--out", str(tmp_path / "afile")], "exists and is not a folder")):  # a traceback
        assert custom.main([*argv, "--out", str(tmp_path / "mc")] if "--out" not in argv else argv) == 2
        assert message in one_line_error(capsys)
    assert not (tmp_path / "mc").exists()


def test_overwrite_replaces_only_a_docking_output_and_never_one_holding_the_inputs(tmp_path, capsys):
    import shutil

    inputs = tmp_path / "project"
    inputs.mkdir()
    protein, ligand = shutil.copy(PROTEIN, inputs), shutil.copy(LIGAND, inputs)
    (inputs / "notes.txt").write_text("mine")
    run = ["dock", "--protein", protein, "--ligand", ligand, "--autobox-ligand", ligand, "--model", "none",
           "--overwrite"]
    assert main([*run, "--out", str(inputs)]) == 2
    assert "holds the input" in one_line_error(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*run, "--out", str(other)]) == 2
    assert "is not a docking output" in one_line_error(capsys)
    assert sorted(p.name for p in inputs.iterdir()) == sorted([Path(protein).name, Path(ligand).name, "notes.txt"])
    assert (other / "notes.txt").read_text() == "mine"


def test_sigterm_cleans_up_as_ctrl_c_does_and_exits_143(tmp_path, capsys):
    """A scheduler's SIGTERM killed a command at once: hidden staging folders stayed behind, and one blocked every
    later run into the same --out. Now it is raised where the command is, as Ctrl-C is."""
    import os
    import signal
    import time

    from sciddiff.cli import run_command
    from sciddiff.dock.output import atomic_dir, check_out_dir
    from sciddiff.train.interrupt import interruption

    def work(args):
        with atomic_dir(tmp_path / "out") as staging:
            (staging / "rank1.sdf").write_text("half a result")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # never reached: the signal arrives first

    assert run_command(work, None) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only as long as the command
    assert isinstance(interruption(["SIGTERM"]), KeyboardInterrupt) and run_command(
        lambda args: (_ for _ in ()).throw(interruption(["SIGTERM"])), None) == 143  # a trainer that saved, then stops
    assert run_command(lambda args: (_ for _ in ()).throw(interruption(["SIGINT"])), None) == 130
    # what a run killed outright (SIGKILL) leaves: the next --overwrite / --resume clears it instead of refusing
    (tmp_path / "out" / ".1s3v.tmp-abcd1234").mkdir(parents=True)
    (tmp_path / "out" / ".notes.tmp-final").mkdir()  # not a staging name: the folder is foreign, and left alone
    (tmp_path / ".out.tmp-efgh5678").mkdir()
    with pytest.raises(UserError, match="not a docking output"):
        check_out_dir(tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / ".1s3v.tmp-abcd1234").exists()  # a refused folder is left as it was
    (tmp_path / "out" / ".notes.tmp-final").rmdir()
    assert check_out_dir(tmp_path / "out", overwrite=True) == tmp_path / "out"
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / ".out.tmp-efgh5678").exists()


def test_model_versions_name_the_file_and_still_match_runs_recorded_before():
    from sciddiff.cli import file_digest, same_version

    ours = f"score_model.pt@step4129 sha256:{file_digest(EXAMPLES.parent / 'dock' / 'score_model.pt')}"
    assert same_version(ours, ours) and same_version("score_model.pt@step4129", ours)  # recorded before digests
    assert not same_version("score_model.pt@step4129 sha256:000000000000", ours)  # another file, same name and step
    assert not same_version("score_model.pt@step10", ours) and not same_version(None, ours)
    assert same_version("learned rescorer rescore.pt (2026-12-06)", "learned rescorer rescore.pt (2026-12-06) sha256:1")
