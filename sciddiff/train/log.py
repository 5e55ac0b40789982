"""Progress bars and a CSV metrics log.

`progress` is tqdm, silenced on every rank but the main one so torchrun runs print one bar. `CSVLogger` appends one row
per `log()` call to a CSV file (header from the first row's keys, grown (the file rewritten atomically) when a later
row brings a new one; each row flushed, so `tail -f` and a killed run both see every row logged). Re-opening an
existing log appends under its header; with `resume_step` the rows logged after that step (by a run that died before
its next checkpoint) are dropped first, so the log has no duplicates.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sciddiff.train.checkpoint import atomic_file
from sciddiff.train.distributed import is_main

__all__ = ["progress", "CSVLogger"]


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), disabled off the main rank (and when the caller passes disable=True)."""
    kwargs["disable"] = kwargs.get("disable", False) or not is_main()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class CSVLogger:
    """`log(step=..., loss=...)` appends a row; values may be numbers, strings or 0-d tensors. Use as a context manager
    or call `close()`. Create it on the main rank only under DDP."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as handle:
                rows = list(csv.reader(handle))
            self.fields = rows[0]
            if resume_step is not None and "step" in self.fields:
                col = self.fields.index("step")
                kept = [rows[0]] + [row for row in rows[1:] if row and float(row[col]) <= resume_step]
                if len(kept) != len(rows):
                    with atomic_file(self.path, "w", newline="") as out:
                        csv.writer(out).writerows(kept)
        self._handle = open(self.path, "a", newline="")
        self._writer = csv.writer(self._handle)

    def log(self, **values) -> None:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
        if self.fields is None:
            self.fields = list(row)
            self._writer.writerow(self.fields)
        if unknown := [k for k in row if k not in self.fields]:  # a later row's new column (a resumed run's metric
            self._grow(unknown)                                  # the run did not log before): the header grows
        self._writer.writerow([row.get(k, "") for k in self.fields])
        self._handle.flush()

    def _grow(self, columns: list[str]) -> None:
        """Rewrite the file (atomically) with `columns` added to its header, earlier rows blank there."""
        self._handle.close()
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        self.fields = self.fields + columns
        with atomic_file(self.path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(self.fields)
            writer.writerows(row + [""] * (len(self.fields) - len(row)) for row in rows[1:])
        self._handle = open(self.path, "a", newline="")
        self._writer = csv.writer(self._handle)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> CSVLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
