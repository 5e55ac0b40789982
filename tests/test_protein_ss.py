"""Secondary-structure conditioning: DSSP training labels, user strings, the natural prior and the conditioned model."""
import numpy as np
import pytest
import torch

from sciddiff.core import so3
from sciddiff.protein import frameflow
from sciddiff.protein.geometry import backbone_from_dihedrals, frames_from_backbone
from sciddiff.protein.metrics import secondary_structure
from sciddiff.protein.model import DenoiserConfig, FrameDenoiser
from sciddiff.protein.ss import (
    SS_UNKNOWN,
    chain_labels,
    draw_ss_labels,
    labels_to_string,
    parse_ss,
    secondary_structure_labels,
)

TINY = DenoiserConfig(dim=32, edge_dim=16, heads=2, blocks=2, k=6, k_sc=3, ss_condition=True)


def _helix_then_strand() -> np.ndarray:
    phi = torch.tensor([-1.05] * 20 + [-2.3] * 10).double()
    psi = torch.tensor([-0.75] * 20 + [2.3] * 10).double()
    return backbone_from_dihedrals(phi, psi).numpy()


def test_training_labels_agree_with_the_eval_metric():
    bb = _helix_then_strand()
    coords = torch.as_tensor(bb[:, :3]).float()
    labels = secondary_structure_labels(torch.cat([coords, coords]), torch.tensor([30, 30]))
    assert labels.shape == (60,)
    assert labels_to_string(labels[:30]) == "".join(secondary_structure(bb)).replace("-", "L")
    assert (labels[2:17] == 1).all()  # the helix is called helix


def test_parse_and_format_round_trip_and_errors():
    assert labels_to_string(parse_ss("hhhh--eeeL", 10)) == "HHHHLLEEEL"
    with pytest.raises(ValueError, match="10 residues"):
        parse_ss("HHH", 10)
    with pytest.raises(ValueError, match="X"):
        parse_ss("HHHHHXEEEE", 10)


def test_natural_prior_draws_similar_lengths_and_is_seeded():
    library = ["H" * 50, "E" * 200]
    drawn = draw_ss_labels(library, 55, np.random.default_rng(0))
    assert labels_to_string(drawn) == "H" * 55  # only the 50-residue string is within 20% of 55
    stretched = draw_ss_labels(["LLHHHHEEEE"], 20, np.random.default_rng(0))
    assert labels_to_string(stretched) == "LLLLHHHHHHHHEEEEEEEE"
    library = [a + b for a in ("HHHHHLLL", "EEEELLLL") for b in ("LLEE", "HHLL")]
    first = chain_labels("natural", 12, [(3, 0), (3, 1), (3, 2), (3, 3)], library)
    again = chain_labels("natural", 12, [(3, 2)], library)
    assert torch.equal(first[2], again[0])
    assert len({labels_to_string(x) for x in first + chain_labels("natural", 12, [(4, i) for i in range(8)], library)}) > 1
    assert chain_labels("none", 12, [(3, 0)], library) is None
    with pytest.raises(ValueError, match="library"):
        chain_labels("natural", 12, [(3, 0)], None)


def test_conditioned_model_starts_as_the_unconditional_one_and_stays_equivariant():
    g = torch.Generator().manual_seed(0)
    plain = FrameDenoiser(DenoiserConfig(**{**TINY.to_dict(), "ss_condition": False})).double()
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    cond = FrameDenoiser(TINY).double()
    missing, unexpected = cond.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["embed_ss.weight"] and not unexpected
    n = 30
    batch, ri = torch.zeros(n, dtype=torch.long), torch.arange(n)
    rot = so3.uniform_so3(n, generator=g, dtype=torch.float64)
    trans = frameflow.center(torch.randn(n, 3, generator=g, dtype=torch.float64), batch)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    helix = parse_ss("H" * n, n)
    # zero-initialised embedding: same output as the unconditional model whatever the labels
    assert torch.allclose(cond(rot, trans, t, batch, ri, ss=helix)[1], plain(rot, trans, t, batch, ri)[1])
    with torch.no_grad():
        cond.embed_ss.weight.normal_(generator=g)
    out_h = cond(rot, trans, t, batch, ri, ss=helix)
    out_e = cond(rot, trans, t, batch, ri, ss=parse_ss("E" * n, n))
    assert (out_h[1] - out_e[1]).abs().max() > 1e-3  # the labels are used
    q = so3.uniform_so3(1, generator=g, dtype=torch.float64)[0]
    rotated = cond(q @ rot, trans @ q.T, t, batch, ri, ss=helix)
    assert torch.allclose(q @ out_h[0], rotated[0], atol=1e-10) and torch.allclose(out_h[1] @ q.T, rotated[1], atol=1e-10)
    # not given = the SS_UNKNOWN embedding
    unknown = torch.full((n,), SS_UNKNOWN)
    assert torch.equal(cond(rot, trans, t, batch, ri)[1], cond(rot, trans, t, batch, ri, ss=unknown)[1])


def test_conditioned_training_and_sampling_run():
    bb = _helix_then_strand()
    rot, ca = frames_from_backbone(*[torch.as_tensor(bb[:, i]).float() for i in range(3)])
    batch, ri = torch.zeros(30, dtype=torch.long), torch.arange(30)
    x = {"rot": rot, "trans": frameflow.center(ca / 10.0, batch)}
    net = FrameDenoiser(TINY)
    for block in net.blocks:  # frame updates start at zero, which would cut every gradient to the features
        torch.nn.init.normal_(block.frame_update.weight, std=0.01)
    ss = parse_ss("H" * 20 + "E" * 10, 30)
    cfg = frameflow.FlowConfig(ss_drop=0.0)
    loss, _ = frameflow.training_loss(net, x, batch, ri, cfg, torch.Generator().manual_seed(0), ss=ss)
    loss.backward()
    assert net.embed_ss.weight.grad.abs().sum() > 0
    out = frameflow.sample(net.eval(), [30], frameflow.FlowConfig(), steps=3, ss=[ss])
    assert out[0].shape == (30, 4, 3) and np.isfinite(out[0]).all()
    with pytest.raises(ValueError, match="match"):
        frameflow.sample(net, [31], frameflow.FlowConfig(), steps=3, ss=[ss])
