"""The frame denoiser (equivariance, graph), the flow-matching loss (a tiny run learns) and the sampler (seeds)."""
import math

import numpy as np
import pytest
import torch

from sciddiff.core import so3
from sciddiff.nn.graph import knn_graph, knn_graph_dense
from sciddiff.protein import frameflow
from sciddiff.protein.data import ChainSet
from sciddiff.protein.geometry import backbone_from_dihedrals
from sciddiff.protein.model import DenoiserConfig, FrameDenoiser, build_graph

TINY = DenoiserConfig(dim=32, edge_dim=16, heads=2, blocks=2, k=6, k_sc=3, seq_window=2)


def _randomise(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (the frame updates start at zero), so equivariance is tested on a non-trivial map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _two_chains(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.zeros(30), torch.ones(20)]).long()
    residue_index = torch.cat([torch.arange(30), torch.arange(20)])
    rot = so3.uniform_so3(50, generator=g, dtype=dtype)
    trans = frameflow.center(torch.randn(50, 3, generator=g, dtype=dtype), batch)
    return rot, trans, batch, residue_index, g


def test_denoiser_is_se3_equivariant_in_float64():
    net = FrameDenoiser(DenoiserConfig(dim=32, edge_dim=16, heads=2, blocks=3, k=8, k_sc=4)).double()
    _randomise(net)
    rot, trans, batch, ri, g = _two_chains()
    t = torch.rand(50, generator=g, dtype=torch.float64)
    sc = torch.randn(50, 3, generator=g, dtype=torch.float64)
    q = so3.uniform_so3(1, generator=g, dtype=torch.float64)[0]
    rot1, trans1 = net(rot, trans, t, batch, ri, sc_trans=sc)
    rot2, trans2 = net(q @ rot, trans @ q.T, t, batch, ri, sc_trans=sc @ q.T)
    assert (rot1 - rot).abs().max() > 0.1 and (trans1 - trans).abs().max() > 0.1  # the map is not the identity
    assert torch.allclose(q @ rot1, rot2, atol=1e-10)
    assert torch.allclose(trans1 @ q.T, trans2, atol=1e-10)
    # outputs are valid rotations and centred chains
    assert torch.allclose(rot2.transpose(-1, -2) @ rot2, torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-10)
    assert frameflow.center(trans2, batch).sub(trans2).abs().max() < 1e-12


def test_denoiser_runs_under_bf16_autocast_with_float32_frames():
    """GPU training runs the forward under bf16 autocast (here on the CPU): the features go bf16, the frames stay float32."""
    net = FrameDenoiser(TINY)
    _randomise(net)
    rot, trans, batch, ri, g = _two_chains(torch.float32)
    t = torch.rand(50, generator=g)
    rot1, trans1 = net(rot, trans, t, batch, ri)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rot2, trans2 = net(rot, trans, t, batch, ri)
    assert rot2.dtype == trans2.dtype == torch.float32
    assert torch.allclose(rot2.transpose(-1, -2) @ rot2, torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert (trans2 - trans1).abs().max() < 0.1 * (trans1 - trans).abs().max()  # bf16 features: close, not equal


def test_graph_has_sequence_neighbours_and_no_cross_chain_edges():
    rot, trans, batch, ri, _ = _two_chains(torch.float32)
    cfg = DenoiserConfig(k=5, k_sc=0, seq_window=2)
    src, dst = build_graph(trans, batch, cfg)
    assert (batch[src] == batch[dst]).all() and (src != dst).all()
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert len(pairs) == src.numel()  # no duplicates
    for i in range(29):
        assert (i, i + 1) in pairs and (i + 1, i) in pairs
    assert (29, 30) not in pairs  # chain boundary
    assert (torch.bincount(dst, minlength=50) >= 5).all()


def test_dense_per_chain_knn_matches_the_generic_knn_graph():
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([7, 30, 3, 18])
    batch = torch.repeat_interleave(torch.arange(4), lengths)
    pos = torch.randn(int(lengths.sum()), 3, generator=g, dtype=torch.float64)
    ours = set(zip(*knn_graph_dense(pos, 5, batch).tolist()))
    generic = set(zip(*knn_graph(pos, 5, batch).tolist()))
    assert ours == generic and len(ours) == 5 * (7 + 30 + 18) + 3 * 2


def _tiny_chain_set() -> ChainSet:
    """Eight ideal chains (helices and strand-turn-strand) as a prepared-data dict, all in the train split."""
    chains = []
    for i in range(8):
        n = 16 + 2 * i
        if i % 2:
            phi, psi = torch.full((n,), -1.0), torch.full((n,), -0.8)
        else:
            phi, psi = torch.full((n,), -2.1), torch.full((n,), 2.3)
            phi[n // 2 : n // 2 + 2], psi[n // 2 : n // 2 + 2] = torch.tensor([-1.0, 1.4]), torch.tensor([-0.5, 0.2])
        chains.append(backbone_from_dihedrals(phi.double(), psi.double())[:, :3].float())
    data = {"coords": torch.cat(chains), "lengths": torch.tensor([len(c) for c in chains]),
            "split": torch.zeros(8, dtype=torch.long), "ids": [f"c{i}" for i in range(8)]}
    return ChainSet(data, "train")


def test_length_balanced_chain_sampling_favours_short_chains():
    data = _tiny_chain_set()  # lengths 16, 18, ..., 30
    first = {}
    for balance in (0.0, 4.0):
        g = torch.Generator().manual_seed(0)
        draws = [data.sample_chains(60, g, length_balance=balance) for _ in range(400)]
        assert all(int(data.lengths[d].sum()) <= 60 and len(set(d.tolist())) == len(d) for d in draws)
        first[balance] = np.bincount([int(d[0]) for d in draws], minlength=8)
    assert first[4.0][0] > 2 * first[0.0][0] and first[4.0][7] < first[0.0][7] / 2  # shortest chain first more often


def test_training_loss_with_bf16_network_matches_float32():
    """amp=True (bf16 autocast, as on CUDA; here the CPU's) runs only the network in bf16: the loss stays close."""
    torch.manual_seed(0)
    chains = _tiny_chain_set()
    net = FrameDenoiser(TINY)
    _randomise(net, seed=1)
    b = chains.batch(torch.arange(len(chains)))
    x_data = {"rot": b["rot"], "trans": b["trans"]}
    cfg = frameflow.FlowConfig(self_condition=1.0)
    losses = [frameflow.training_loss(net, x_data, b["batch"], b["residue_index"], cfg, torch.Generator().manual_seed(3),
                                      amp=amp)[0] for amp in (False, True)]
    assert losses[1].dtype == torch.float32 and torch.isfinite(losses[1])
    assert abs(float(losses[1] - losses[0])) < 0.05 * float(losses[0])
    losses[1].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


def test_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    chains = _tiny_chain_set()
    net = FrameDenoiser(TINY)
    cfg = frameflow.FlowConfig()
    b = chains.batch(torch.arange(len(chains)))
    x_data = {"rot": b["rot"], "trans": b["trans"]}

    def fixed_loss() -> float:  # same t, noise and self-conditioning draw every time
        with torch.no_grad():
            losses = [frameflow.training_loss(net, x_data, b["batch"], b["residue_index"], cfg,
                                              torch.Generator().manual_seed(s))[0] for s in range(16)]
        return float(torch.stack(losses).mean())

    before = fixed_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss, parts = frameflow.training_loss(net, x_data, b["batch"], b["residue_index"], cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert set(parts) == {"trans", "rot", "atom", "pair"}
    after = fixed_loss()
    # the velocity targets keep an irreducible variance (many data points per noise draw): 60 steps cut it by ~18%
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("langevin_eta", [0.0, 1.0])
def test_sampling_depends_on_each_chains_seed_only(langevin_eta):
    net = FrameDenoiser(TINY).eval()
    _randomise(net, seed=1)
    for p in net.parameters():
        p.data *= 0.1  # keep the random map tame
    cfg = frameflow.FlowConfig(langevin_eta=langevin_eta, langevin_temperature=0.5)
    seeds = [(7, 0), (7, 1), (7, 2)]
    # the network's frames (the relax's own batch independence is tested in test_protein_refine: on these random chains
    # its iterations can grow rounding differences by orders of magnitude)
    together = frameflow.sample(net, [12, 12, 12], cfg, steps=4, seeds=seeds, idealize=False)
    alone = frameflow.sample(net, [12], cfg, steps=4, seeds=[(7, 1)], idealize=False)
    # neighbours are found per chain, so batch-mates can only change float rounding
    assert np.allclose(together[1], alone[0], atol=1e-4)
    threads_before = torch.get_num_threads()
    in_threads = frameflow.sample(net, [12, 12, 12], cfg, steps=4, seeds=seeds, idealize=False, workers=2)
    assert torch.get_num_threads() == threads_before
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(in_threads, together))  # groups (0, 1) and (2), in order
    assert not np.allclose(together[0], together[1], atol=1e-2)
    relaxed = frameflow.sample(net, [12, 12, 12], cfg, steps=4, seeds=seeds, workers=2)
    assert relaxed[0].shape == (12, 4, 3) and np.isfinite(relaxed[0]).all()
    ca_ca = np.linalg.norm(np.diff(relaxed[0][:, 1], axis=0), axis=-1)
    assert math.isfinite(float(ca_ca.mean()))


def test_compactness_guidance_pulls_extended_chains_in_and_pushes_compact_long_chains_out():
    from sciddiff.protein.metrics import RG_EXPONENT, RG_PREFACTOR

    g = torch.Generator().manual_seed(0)
    lengths = [60, 40, 160]
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    trans = torch.randn(sum(lengths), 3, generator=g, dtype=torch.float64)
    fits = [RG_PREFACTOR * n**RG_EXPONENT / 10.0 for n in lengths]
    rel = frameflow.center(trans, batch)

    def rg(x, i):
        return x[batch == i].pow(2).sum(-1).mean().sqrt()

    scales = [2.0, 0.8, 0.7]  # x fit: extended, compact short, compact long
    rel = torch.cat([rel[batch == i] * scales[i] * fits[i] / rg(rel, i) for i in range(3)])
    trans = rel + torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    out = frameflow.guide_to_natural_rg(trans, batch, 1.0, 10.0, floor=0.9, floor_min_length=150)
    new_rel = frameflow.center(out, batch)
    assert torch.allclose(out.mean(0), trans.mean(0))  # centroids stay
    assert rg(new_rel, 0).item() == pytest.approx(fits[0], rel=1e-9)
    assert torch.allclose(out[batch == 1], trans[batch == 1])  # compact but short: untouched
    assert rg(new_rel, 2).item() == pytest.approx(0.9 * fits[2], rel=1e-9)
    one_sided = frameflow.guide_to_natural_rg(trans, batch, 1.0, 10.0)  # floor 0: the lower side is off
    assert torch.allclose(one_sided[batch == 2], trans[batch == 2])
    half = frameflow.center(frameflow.guide_to_natural_rg(trans, batch, 0.5, 10.0, 0.9, 150), batch)
    assert rg(half, 0).item() == pytest.approx(2**0.5 * fits[0], rel=1e-9)
    assert rg(half, 2).item() == pytest.approx((0.7 * 0.9) ** 0.5 * fits[2], rel=1e-9)