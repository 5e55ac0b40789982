import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from sciddiff.core.ema import EMA
from sciddiff.train import (capture_rng, load_checkpoint, restore_rng, restore_training_state, save_checkpoint,
                            seed_everything, training_state, write_json)


def _build(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=20)
    ema = EMA(model, power=0.75)
    return model, opt, sched, ema


def _train(model, opt, sched, ema, steps):
    """A loop drawing from every generator: torch (data, dropout), numpy and Python's random."""
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 4)
        y = x.sum(1, keepdim=True) * (1.0 + 0.1 * float(np.random.randn())) + random.random()
        loss = (model(x) - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)


def test_resume_is_exact(tmp_path):
    seed_everything(0)
    straight = _build(0)
    _train(*straight, steps=10)

    seed_everything(0)
    first = _build(0)
    _train(*first, steps=5)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", training_state(
        model=first[0], optimizer=first[1], scheduler=first[2], ema=first[3], step=5, config={"lr": 1e-2}))
    assert sorted(os.listdir(path.parent)) == ["last.pt"]  # no temporary left behind

    seed_everything(123)  # a new process: different seed, different initial weights
    resumed = _build(99)
    state = load_checkpoint(path)  # weights_only=True: a checkpoint is tensors and plain values
    step = restore_training_state(state, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2], ema=resumed[3])
    assert step == 5 and state["config"] == {"lr": 1e-2}
    _train(*resumed, steps=5)

    for a, b in zip(straight[0].parameters(), resumed[0].parameters()):
        assert torch.equal(a, b)
    for name in straight[3].shadow:
        assert torch.equal(straight[3].shadow[name], resumed[3].shadow[name])
    assert straight[3].step == resumed[3].step == 10
    assert straight[2].get_last_lr() == resumed[2].get_last_lr()
    for sa, sb in zip(straight[1].state.values(), resumed[1].state.values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # The loops really consumed randomness: stopping without restoring would differ.
    seed_everything(0)
    other = _build(0)
    _train(*other, steps=5)
    seed_everything(1)
    _train(*other, steps=5)
    assert not torch.equal(other[0][0].weight, straight[0][0].weight)


def test_rng_capture_restore_round_trip():
    seed_everything(7)
    state = capture_rng()
    draws = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws


def test_seed_everything_reproduces():
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.randn(2))
    seed_everything(3)
    b = (random.random(), np.random.rand(), torch.randn(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": torch.zeros(1000), "bad": lambda: None})  # pickling fails mid-write
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_write_json_is_strict_json_and_non_finite_floats_read_back_as_floats(tmp_path):
    import json

    path = write_json(tmp_path / "m.json", {"eta": float("inf"), "rows": [float("-inf"), (1.5, float("nan"))], "n": 3})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text and text.endswith("\n")

    def refuse(word):
        raise ValueError(word)
    data = json.loads(text, parse_constant=refuse)  # a strict parser's view: no bare Infinity / NaN
    assert data["n"] == 3 and float(data["eta"]) == float("inf") and float(data["rows"][0]) == float("-inf")
    assert data["rows"][1][0] == 1.5 and np.isnan(float(data["rows"][1][1]))
    assert os.listdir(tmp_path) == ["m.json"]


def test_restore_requires_the_states_asked_for(tmp_path):
    model, opt, _, _ = _build(0)
    state = training_state(model=model, step=3)
    with pytest.raises(KeyError):
        restore_training_state(state, model=model, optimizer=opt)


def test_stop_requests_note_signals_and_leave_ignored_ones_ignored():
    import signal

    from sciddiff.train.interrupt import stop_requests

    before = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.SIG_IGN),
                                                   (signal.SIGTERM, signal.default_int_handler))}
    try:
        with stop_requests() as requests:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job's Ctrl-C stays ignored
            os.kill(os.getpid(), signal.SIGTERM)  # noted, not raised
            os.kill(os.getpid(), signal.SIGINT)
        assert requests == ["SIGTERM"]
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_rng_restorable_only_from_as_many_processes_as_now_run():
    """Where the RNG cannot be restored (another process count), the trainers reseed each rank themselves: a resume
    under torchrun of a one-process run had every rank draw the same batches."""
    from sciddiff.train.checkpoint import rng_restorable

    assert rng_restorable({"rng": capture_rng()})  # one process saved, one runs
    assert not rng_restorable({"rng": [capture_rng(), capture_rng()]})  # two saved, one runs
    assert not rng_restorable({})
