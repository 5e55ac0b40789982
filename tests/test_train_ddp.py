"""Two gloo processes under torchrun train with different data per rank; DDP must keep them identical and equal to
one process training on the concatenated batches. This file is also the worker script torchrun runs."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sciddiff.train import distributed as D
from sciddiff.train import load_checkpoint, progress, save_checkpoint, seed_everything, training_state

BATCH, STEPS_PER_EPOCH, EPOCHS = 8, 4, 2


def _data():
    g = torch.Generator().manual_seed(42)
    x = torch.randn(2 * BATCH * STEPS_PER_EPOCH, 5, generator=g)
    return x, torch.sin(x.sum(1, keepdim=True))


def _model():
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))


def _step(model, opt, x, y):
    loss = (model(x) - y).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def worker(out_dir: Path) -> None:
    info = D.setup()
    assert info.world_size == 2 and info.device.type == "cpu" and D.world_size() == 2
    seed_everything(info.rank)  # different on purpose: DDP must broadcast rank 0's initial weights
    model = D.wrap(_model())
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dataset = TensorDataset(*_data())
    sampler = D.sampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    seen, losses = [], []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        seen.append(list(sampler))
        for x, y in progress(loader, desc=f"bar-of-rank{info.rank}"):
            losses.append(D.all_reduce_mean(_step(model, opt, x, y)).item())
    # a logged metric that only some ranks have (rank 1 alone holds "b"; no rank holds "c")
    means = D.mean_over_ranks({"a": float(info.rank), **({"b": 5.0} if info.rank == 1 else {})}, ("a", "b", "c"))
    state = training_state(model=model, optimizer=opt, step=EPOCHS * STEPS_PER_EPOCH)  # collective: every rank
    if D.is_main():
        save_checkpoint(out_dir / "ckpt.pt", state)
    torch.save({"params": [p.detach() for p in D.unwrap(model).parameters()], "seen": seen, "losses": losses,
                "means": means},
               out_dir / f"rank{info.rank}.pt")
    try:  # a DDP wrapper alive at cleanup can deadlock the exit (see `cleanup`): refused
        D.cleanup()
    except RuntimeError as err:
        assert "wrapper is alive" in str(err)
    else:
        raise AssertionError("cleanup() accepted a live DDP wrapper")
    del model
    D.cleanup()
    assert not torch.distributed.is_initialized()


def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bar-of-rank0" in proc.stderr and "bar-of-rank1" not in proc.stderr  # progress only on the main rank
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert r0["losses"] == r1["losses"]  # all_reduce_mean gives every rank the same number
    assert r0["means"] == r1["means"] == {"a": 0.5, "b": 5.0}  # each key over the ranks that hold it

    # Single process on the concatenation of both ranks' batches, from rank 0's initial weights.
    x, y = _data()
    seed_everything(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_losses = []
    for epoch in range(EPOCHS):
        i0, i1 = r0["seen"][epoch], r1["seen"][epoch]
        assert not set(i0) & set(i1) and len(set(i0) | set(i1)) == len(x)  # disjoint shares covering the data
        for s in range(STEPS_PER_EPOCH):
            idx = torch.tensor(i0[s * BATCH:(s + 1) * BATCH] + i1[s * BATCH:(s + 1) * BATCH])
            ref_losses.append(_step(model, opt, x[idx], y[idx]).item())
    for a, b in zip(model.parameters(), r0["params"]):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(ref_losses), rtol=0, atol=1e-6)

    ckpt = load_checkpoint(tmp_path / "ckpt.pt")  # RNG states of both ranks, gathered
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def test_setup_without_torchrun_is_single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.setup()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    model = _model()
    assert D.wrap(model) is model and D.unwrap(model) is model and D.is_main()
    assert D.all_reduce_mean(torch.tensor(2.5)).item() == 2.5
    assert len(list(D.sampler(list(range(10)), shuffle=False))) == 10


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
