"""The `sciddiff` command line: one entry point, one sub-command module per application.

Each application exposes `register(subparsers)` in `sciddiff/<app>/cli.py`; it adds its sub-commands and sets
`func(args) -> int` on each. Only the application of the command being run is imported, so that a command (and its
bad-input error) does not wait for the others' heavy imports, and a broken optional dependency of one application
does not take down the others.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# sub-command -> the module whose register() adds it; only the module of the command being run is imported
COMMANDS = {"dock": "sciddiff.dock.cli", "dock-eval": "sciddiff.dock.cli", "backbone": "sciddiff.protein.cli",
            "policy": "sciddiff.policy.cli", "bench": "sciddiff.bench"}


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2, never as a traceback."""


def run_command(func, args) -> int:
    """Run func(args) for a module's own `main`: a UserError becomes one line on stderr and exit status 2."""
    try:
        func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def idle_threads(most: int = 2) -> int:
    """CPU threads for a command's default: up to `most`, but no more than the cores that no other process is running
    on right now. Two threads on two idle cores make docking and backbone sampling 1.4-1.7x faster, but when another
    process holds one of the cores they measured 2-30x SLOWER than one (OpenMP threads waiting on each other)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(most, cores - round(_other_running())))


def _other_running(samples: int = 3, interval: float = 0.02) -> float:
    """Processes running or runnable besides this one, averaged over a few instants (/proc/loadavg's 4th field on
    Linux; elsewhere the 1-minute load average, which also remembers the last minute)."""
    try:
        counts = []
        for i in range(samples):
            with open("/proc/loadavg") as handle:
                counts.append(int(handle.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(interval)
        return sum(counts) / len(counts)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


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
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"sciddiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as a script, this module is __main__, a different module object from sciddiff.cli: use that one's main so the
    # applications' UserError (imported from sciddiff.cli) is the class caught here.
    from sciddiff.cli import main as package_main

    sys.exit(package_main())
