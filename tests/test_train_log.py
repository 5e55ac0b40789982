import csv

import pytest
import torch

from sciddiff.train import CSVLogger, autocast, progress


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csv_logger_header_once_append_and_flush(tmp_path):
    path = tmp_path / "runs" / "log.csv"
    log = CSVLogger(path)
    log.log(step=1, loss=torch.tensor(0.5), lr=1e-3)
    assert _rows(path) == [["step", "loss", "lr"], ["1", "0.5", "0.001"]]  # flushed before close
    log.log(step=2, loss=0.25)  # a missing column stays empty
    log.close()
    with CSVLogger(path) as again:  # re-open appends under the existing header
        again.log(step=3, loss=0.125, lr=1e-4)
    assert _rows(path) == [["step", "loss", "lr"], ["1", "0.5", "0.001"], ["2", "0.25", ""], ["3", "0.125", "0.0001"]]


def test_csv_logger_resume_drops_rows_after_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    with CSVLogger(path) as log:
        for step in range(1, 6):
            log.log(step=step, loss=1.0 / step)
    with CSVLogger(path, resume_step=3) as log:  # the checkpoint was at step 3; steps 4-5 are re-run
        log.log(step=4, loss=0.0)
    rows = _rows(path)
    assert [r[0] for r in rows] == ["step", "1", "2", "3", "4"] and rows[-1][1] == "0.0"


def test_progress_and_autocast_on_cpu(capsys):
    assert sum(progress(range(5), desc="x")) == 10
    assert list(progress(range(3), disable=True)) == [0, 1, 2]
    a = torch.randn(4, 4)
    with autocast("cpu"):
        assert (a @ a).dtype == torch.float32  # no-op on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_bf16_on_cuda():
    a = torch.randn(4, 4, device="cuda")
    with autocast(torch.device("cuda")):
        assert (a @ a).dtype == torch.bfloat16


def test_csv_logger_grows_its_header_for_a_new_column(tmp_path):
    """A resumed run that logs a column its first call did not (a docking run begun on rigid ligands, then a torsion;
    a metric added since) raised ValueError at every attempt: the header grows, earlier rows blank there."""
    path = tmp_path / "log.csv"
    with CSVLogger(path) as log:
        log.log(step=1, loss=0.5)
    with CSVLogger(path, resume_step=1) as log:
        log.log(step=2, loss=0.4, tor=0.9)
        log.log(step=3, loss=0.3)
    assert path.read_text().splitlines() == ["step,loss,tor", "1,0.5,", "2,0.4,0.9", "3,0.3,"]
