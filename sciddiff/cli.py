"""The `sciddiff` command line: one entry point, one sub-command module per application.

Each application exposes `register(subparsers)` in `sciddiff/<app>/cli.py`; it adds its sub-commands and sets
`func(args) -> int` on each. Only the application of the command being run is imported, so that a command (and its
bad-input error) does not wait for the others' heavy imports, and a broken optional dependency of one application
does not take down the others.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import pickle
import re
import signal
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

# sub-command -> the module whose register() adds it; only the module of the command being run is imported
COMMANDS = {"dock": "sciddiff.dock.cli", "dock-eval": "sciddiff.dock.cli", "dock-score": "sciddiff.dock.cli",
            "backbone": "sciddiff.protein.cli",
            "policy": "sciddiff.policy.cli", "bench": "sciddiff.bench"}


# The checkpoints the project ships live in the source checkout's data/ folder, beside this package: an editable
# install (README: `pip install -e .`) finds them, a wheel or `pip install .` leaves them behind.
SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data"
NOT_SHIPPED = ("the shipped checkpoints are in a source checkout's data/ folder, which a non-editable install leaves "
               "behind: install from a clone with `pip install -e .`")


def text_digest(text: str, length: int = 12) -> str:
    """The first `length` hex digits of a text's SHA-256: what names a run's data in its training state (by content,
    not by path, so a moved file still resumes)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike, length: int = 12) -> str:
    """The first `length` hex digits of a file's SHA-256: what names a model in a run's records (two trainings written
    to the same file name and step are different models; a resume must not mix their results)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def same_version(recorded, current) -> bool:
    """Whether a run's recorded model version names the model loaded now: equal, or recorded before versions carried
    the file's digest (2026-12-06; "score_model.pt@step4129" for "score_model.pt@step4129 sha256:...")."""
    if recorded == current:
        return True
    return (isinstance(recorded, str) and isinstance(current, str) and "sha256:" not in recorded
            and " sha256:" in current and current.split(" sha256:")[0] == recorded)


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether `path` is one of the project's shipped files (under the checkout's data/)."""
    return Path(path).resolve().is_relative_to(SHIPPED_DATA)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised where the command is, as Ctrl-C's KeyboardInterrupt is, so
    that the same clean-up runs (staging folders removed, a trainer's checkpoint saved); exit status 143."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises `Terminated` inside the block (default Python would die at once, leaving staging folders and
    temporary files behind). Set in the main thread only, and only where SIGTERM has its default action: an
    ignored or otherwise handled signal stays as it is (a trainer's own handler takes over inside its loop)."""
    def terminate(signum, frame):
        raise Terminated

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interrupted_status(err: KeyboardInterrupt) -> int:
    """One line for an interrupted command, and its exit status: 143 for SIGTERM, 130 for Ctrl-C (128 + signal)."""
    terminated = isinstance(err, Terminated)
    print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
    return 143 if terminated else 130


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2, never as a traceback."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except None (a required option, or one whose default is decided later:
    the help text says how)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def run_command(func, args) -> int:
    """Run func(args) for a module's own `main`: a UserError becomes one line on stderr and exit status 2, a
    file-system error (disk full, permissions) one line and exit status 1; an int that func returns is the exit status
    (e.g. 1: some items failed and were reported), anything else it returns (a path, a summary) means 0."""
    try:
        with sigterm_as_interrupt():
            status = func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # as `sciddiff` itself: a trainer resumes from its last checkpoint
        return interrupted_status(err)
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def print_note(message: str) -> None:
    """One `note:` line on stderr: something read or done in a way the user may not expect, while the run goes on
    (errors are `UserError`s: one `error:` line and a non-zero exit)."""
    print(f"note: {message}", file=sys.stderr)


def options_below(args: argparse.Namespace, low: int, *names: str) -> list[str]:
    """The options among `names` (attribute names) that are set and below `low`, spelled as on the command line
    ("--batch-size"): each command words its own one-line error."""
    return [f"--{name.replace('_', '-')}" for name in names
            if getattr(args, name) is not None and getattr(args, name) < low]


def options_not_positive(args: argparse.Namespace, *names: str, zero: bool = False) -> list[str]:
    """The float options among `names` that are set and not finite numbers > 0 (>= 0 with `zero`): `x <= 0` alone
    lets nan through, which then silently means "no limit" or poisons a learning-rate schedule. inf is refused too."""
    def bad(v: float) -> bool:
        return not math.isfinite(v) or v < 0 or (v == 0 and not zero)

    return [f"--{name.replace('_', '-')}" for name in names
            if getattr(args, name) is not None and bad(getattr(args, name))]


def check_output_path(path: str | os.PathLike, *, folder: bool = False, replaced: bool = False,
                      option: str = "--out", inputs: dict[str, object] | None = None) -> Path:
    """An output path, checked before any work is done so that a run does not fail at its end: an existing path must
    be of the right kind (a folder with `folder`), the nearest existing parent must be a folder this process can
    create files in (probed with a temporary folder: permission bits say nothing for root or on read-only and
    virtual file systems), a folder that will be `replaced` as a whole must be named (not '', '.', '..' or a
    folder above the current one), and it must not be one of the command's `inputs` ({option: path or paths}),
    which it would replace. Creates nothing."""
    out = Path(path)
    for name, given in (inputs or {}).items():
        for p in [given] if isinstance(given, (str, os.PathLike)) else list(given or []):
            try:  # a SMILES string longer than a file name, a symlink loop: not the same file
                same = Path(p).is_file() and out.resolve() == Path(p).resolve()
            except (OSError, RuntimeError):
                same = False
            if same:
                raise UserError(f"{option} {path} is the {name} file: name another file for the output")
    if replaced and (not str(path).strip() or out.name in ("", ".", "..") or Path.cwd().is_relative_to(out.resolve())):
        raise UserError(f"{option} must name the output folder itself, not {str(path)!r} (it is replaced as a whole)")
    if not str(path).strip():  # Path("") is the current folder: never what an empty option meant
        raise UserError(f"{option} is empty: name the output")
    if out.exists() and out.is_dir() != folder:
        raise UserError(f"{option} {out} exists and is {'not ' if folder else ''}a folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as err:
        raise UserError(f"{option} {out} cannot be written: {err.strerror or err}") from None
    return out


def torch_device(name: str | None, option: str = "--device"):
    """A torch device the user named ("auto"/None: cuda when available, else cpu), refused in one line when torch
    does not know it or it is not available here (cuda without CUDA, cuda:3 on a one-GPU machine, mps ...)."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"{option} {name}: not a torch device ({_first_line(err)})") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"{option} {name} requested but {'that GPU is' if torch.cuda.is_available() else 'CUDA is'} "
                        "not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {name}: only cpu and cuda devices are supported")
    return device


def load_or_fail(load, path: str | os.PathLike, what: str):
    """load(path) for a file the user named: a missing file, or one that is not a `what` (not a torch checkpoint,
    missing entries, wrong shapes), becomes one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no {what} at {path}" + (f" ({NOT_SHIPPED})" if is_shipped(path) else ""))
    try:
        return load(path)
    except PICKLE_ERRORS as err:
        if not_a_pickle(err):
            raise UserError(f"{path} is not a {what} (not a torch checkpoint file)") from None
        if isinstance(err, KeyError):
            raise UserError(f"{path} is not a {what} (no {err} entry)") from None
        raise UserError(f"cannot load {what} {path}: {_refusal(err)}") from None  # a pickled object refused
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        raise UserError(f"cannot load {what} {path}: {_first_line(err)}") from None


def _refusal(err: BaseException) -> str:
    """torch's reason for refusing a pickled object under weights_only (the line naming the object's global),
    without the terminal's escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    reason = next((ln.split("WeightsUnpickler error:")[-1].strip() for ln in text.splitlines()
                   if "unsupported global" in ln.lower()), None)
    if reason is None:
        return _first_line(Exception(text))
    return f"it holds a pickled object a weights-only load refuses ({reason.split(' Please use')[0].rstrip('.')})"


# what torch.load raises when its bytes are no checkpoint (or hold a pickled object it refuses): `not_a_pickle` sorts them
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, IndexError, struct.error, KeyError)


def not_a_pickle(err: BaseException) -> bool:
    """Whether torch.load's error says the bytes are no pickle at all (torch's own text then suggests
    weights_only=False: no advice for a file that is not a checkpoint): an UnpicklingError other than a weights-only
    refusal of a pickled object, an empty stack (IndexError), a short read (EOFError, struct.error), or an int
    KeyError (the unpickler's memo failing on text)."""
    if isinstance(err, pickle.UnpicklingError):
        return "unsupported global" not in str(err).lower()
    if isinstance(err, KeyError):
        return bool(err.args) and isinstance(err.args[0], int)
    return isinstance(err, (EOFError, IndexError, struct.error))


def _first_line(err: BaseException) -> str:
    """The message's first line; one that ends in ':' ("Error(s) in loading state_dict for X:") with the next."""
    lines = [ln.strip() for ln in str(err).strip().splitlines()] or [type(err).__name__]
    line = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


def idle_threads(most: int = 2) -> int:
    """CPU threads for a command's default: up to `most`, but no more than the cores that no other process is running
    on right now. Two threads on two idle cores make docking and backbone sampling 1.4-1.7x faster, but when another
    process holds one of the cores they measured 2-30x SLOWER than one (OpenMP threads waiting on each other)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(most, cores - round(_other_running())))


def _other_running(samples: int = 3, interval: float = 0.02) -> float:
    """Processes running or runnable besides this one: averaged over a few instants (/proc/loadavg's 4th field on
    Linux), or the 1-minute load average less one where that is higher: a neighbour that computes in bursts (or does
    I/O between them) can be off the run queue at every instant sampled and still hold a core half the time (the
    policy example trained 17x slower on 2 threads beside such a load, 1-minute average 1.7). Elsewhere the 1-minute
    load average."""
    recent = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    try:
        counts = []
        for i in range(samples):
            with open("/proc/loadavg") as handle:
                counts.append(int(handle.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(interval)
        return max(sum(counts) / len(counts), recent - 1.0)
    except (OSError, ValueError, IndexError):
        return recent


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with a known sub-command first, only that application is imported (its modules import
    torch, e3nn or torch-geometric: seconds); otherwise (`--help`, a typo) every application."""
    parser = argparse.ArgumentParser(prog="sciddiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for module_name in [COMMANDS[first]] if first in COMMANDS else dict.fromkeys(COMMANDS.values()):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # an application not built yet, or its dependency missing
            if err.name and err.name.startswith("sciddiff"):
                continue
            raise
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UserError as err:
        print(f"sciddiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions, a file that vanished: one line, not a traceback
        print(f"sciddiff {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        return interrupted_status(err)


if __name__ == "__main__":
    # Run as a script, this module is __main__, a different module object from sciddiff.cli: use that one's main so the
    # applications' UserError (imported from sciddiff.cli) is the class caught here.
    from sciddiff.cli import main as package_main

    sys.exit(package_main())
