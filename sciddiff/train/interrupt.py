"""Stopping a training loop cleanly on Ctrl-C or SIGTERM (a scheduler's kill), so that the run saves and resumes.

Inside `with stop_requests() as requests:` the signals only append their name to `requests`; the loop checks it
between optimiser steps (an interrupt inside a step would save half-updated weights), saves its checkpoint and exits
as interrupted. A second Ctrl-C interrupts at once, without saving. Under DDP, `stop_requested` makes every rank stop
at the same step when any of them was signalled (one collective: call it where the ranks already synchronise);
`decide` adds the time limit and the periodic checkpoint, which rank 0 decides.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from sciddiff.train import distributed


@contextlib.contextmanager
def stop_requests() -> Iterator[list[str]]:
    """The names of the stop signals received so far (handlers are set only in the main thread, where Python allows
    them; elsewhere the interrupts stay as they are). A signal the process ignores stays ignored: a shell starts
    background jobs with SIGINT ignored, so that the terminal's Ctrl-C does not reach them."""
    requests: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return

    def note(signum: int, frame) -> None:
        if signum == signal.SIGINT and "SIGINT" in requests:
            raise KeyboardInterrupt
        requests.append(signal.Signals(signum).name)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, note)
    try:
        yield requests
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def interruption(requests: list[str]) -> KeyboardInterrupt:
    """What a loop stopped by `requests` raises once it has saved: `sciddiff.cli.Terminated` for SIGTERM (exit
    status 143), else KeyboardInterrupt (130)."""
    from sciddiff.cli import Terminated

    return Terminated() if "SIGTERM" in requests else KeyboardInterrupt()


def stop_requested(requests: list[str], world_size: int, device: torch.device) -> bool:
    """Whether this process, or under DDP any process, was asked to stop: the same answer on every rank."""
    if world_size == 1:
        return bool(requests)
    return float(distributed.all_reduce_mean(torch.tensor(float(bool(requests)), device=device))) > 0


def decide(out_of_time: bool, checkpoint_due: bool, requests: list[str], world_size: int,
           device: torch.device) -> tuple[bool, bool, bool]:
    """(stop, checkpoint now, interrupted), the same on every rank: rank 0's clock decides the time limit and the
    periodic checkpoint (`distributed.main_decides`), any rank's signal the interruption; an interrupted loop skips
    the periodic checkpoint because it saves once it has stopped."""
    out_of_time, checkpoint_due = distributed.main_decides(out_of_time, checkpoint_due)
    interrupted = stop_requested(requests, world_size, device)
    return out_of_time or interrupted, checkpoint_due and not interrupted, interrupted
