import copy

import pytest
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from sciddiff.core.ema import EMA


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_fixed_decay_hand_computed():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA(lin, decay=0.9)
    for value in (2.0, 4.0):
        with torch.no_grad():
            lin.weight.fill_(value)
        ema.update(lin)
    # 0.9 * (0.9 * 1 + 0.1 * 2) + 0.1 * 4 = 0.9 * 1.1 + 0.4 = 1.39
    assert ema.shadow["weight"].item() == pytest.approx(1.39, abs=1e-6)
    assert ema.step == 2


def test_power_warmup_decay_values():
    ema = EMA(nn.Linear(1, 1), power=0.75, max_decay=0.9999)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.step += 1
    # 1 - (1 + k)^-0.75 for k = 0, 1, 2, 3
    assert decays == pytest.approx([0.0, 1 - 2**-0.75, 1 - 3**-0.75, 1 - 4**-0.75])
    ema.step = 10**9
    assert ema.current_decay() == 0.9999  # clipped at max_decay
    ema = EMA(nn.Linear(1, 1), power=0.75, min_decay=0.5)
    assert ema.current_decay() == 0.5  # clipped at min_decay


def test_matches_diffusers_emamodel_power_warmup():
    model = _model()
    ours = EMA(model, power=0.75)
    ref = EMAModel(model.parameters(), use_ema_warmup=True, power=0.75, inv_gamma=1.0, decay=0.9999, min_decay=0.0,
                   foreach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        loss = model(torch.randn(8, 3, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.update(model)
        ref.step(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    for name, shadow in zip(names, ref.shadow_params):
        torch.testing.assert_close(ours.shadow[name], shadow, rtol=0, atol=1e-7)
    # Buffers are copied, not averaged.
    torch.testing.assert_close(ours.shadow["1.running_mean"], model[1].running_mean, rtol=0, atol=0)
    assert ours.shadow["1.num_batches_tracked"].item() == 6


def test_frozen_params_copied_copy_to_and_state_dict_round_trip():
    model = _model()
    ema = EMA(model, decay=0.5)
    model[0].weight.requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["0.weight"], model[0].weight)  # frozen: copied
    assert not torch.allclose(ema.shadow["2.weight"], model[2].weight)  # trained: averaged

    target = _model(seed=5)
    ema.copy_to(target)
    for name, tensor in target.state_dict().items():
        torch.testing.assert_close(tensor, ema.shadow[name], rtol=0, atol=0)

    fresh = EMA(_model(seed=7), decay=0.5)
    fresh.load_state_dict(copy.deepcopy(ema.state_dict()))
    assert fresh.step == 1
    for name in ema.shadow:
        torch.testing.assert_close(fresh.shadow[name], ema.shadow[name], rtol=0, atol=0)
    with pytest.raises(KeyError):
        EMA(nn.Linear(2, 2)).load_state_dict(ema.state_dict())


def test_tied_weights_are_averaged_once_and_copied_to_both_names():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a  # e.g. tied input / output embeddings

    model = Tied()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.a.weight.add_(1.0)
    ema.update(model)
    target = Tied()
    ema.copy_to(target)
    assert torch.equal(target.b.weight, ema.shadow["a.weight"]) and target.a.weight is target.b.weight


def test_shadow_is_independent_of_model():
    model = _model()
    ema = EMA(model)
    with torch.no_grad():
        model[0].weight.zero_()
    assert ema.shadow["0.weight"].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_on_cuda_matches_cpu():
    cpu, gpu = _model(), _model().cuda()
    ema_cpu, ema_gpu = EMA(cpu, power=0.75), EMA(gpu, power=0.75)
    for _ in range(3):
        with torch.no_grad():
            for a, b in zip(cpu.parameters(), gpu.parameters()):
                a.mul_(1.1)
                b.mul_(1.1)
        ema_cpu.update(cpu)
        ema_gpu.update(gpu)
    for name, t in ema_cpu.shadow.items():
        torch.testing.assert_close(ema_gpu.shadow[name].cpu(), t)
