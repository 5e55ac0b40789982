"""The docking score network: e3nn tensor-product convolutions over receptor residues and ligand atoms.

Design for CPU speed (see docs/dock.md): the receptor residue graph is encoded ONCE per complex, independently of
the pose and the noise level (`encode_receptor`); per sample and step only ligand atoms are updated, from
ligand-ligand edges (bonds + 5 A) and receptor->ligand cross edges (the k nearest residues within a cutoff).
Outputs, per sample: a translation score (A^-1, lab frame, a vector), a rotation score (lab-frame rotation
vector about the ligand centroid; the core's body-frame score is R^T times it) and one torsion score per
rotatable bond (rad^-1, invariant). Equivariance: rotating receptor and ligand together by Q rotates the
translation and rotation outputs by Q and leaves torsion outputs unchanged (tested in float64).

Inputs are plain dicts (see `sciddiff.dock.featurize` and `sciddiff.dock.data`): ligand pos (N, 3), feat,
batch (N,) sample index, rec_batch (N,) receptor index, bond_index/bond_type, tor_bonds (M, 2) global atom
indices, tor_batch (M,); receptor pos (R, 3), res_type (R,), vec (R, 3, 3), batch (R,). The noise level enters
as t in [0, 1] per sample (sigma_c = sigma_min,c^(1-t) sigma_max,c^t for every component c).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from e3nn import o3
from torch import nn

from sciddiff.core import so3, torus
from sciddiff.core.schedules import geometric_sigma
from sciddiff.nn.embeddings import floored_exp, sinusoidal_embedding
from sciddiff.nn.graph import radius, radius_graph, segment_mean


ATOM_DIM = 33      # ligand atom features (sciddiff.dock.featurize.atom_features)
N_RES_TYPES = 21   # residue types: 20 amino acids + unknown


@dataclass
class ScoreModelConfig:
    ns: int = 24                 # scalar channels
    nv: int = 6                  # vector (1o and 1e) channels
    rec_layers: int = 2          # receptor-only layers, run once per complex
    lig_layers: int = 3          # ligand layers, run per sample and step
    rec_radius: float = 15.0     # residue-residue edges
    rec_max_neighbors: int = 24
    lig_radius: float = 5.0      # atom-atom edges besides bonds
    cross_radius: float = 40.0   # residue->atom edges: the nearest `cross_max_neighbors` within this distance
    cross_max_neighbors: int = 24
    n_gauss: int = 32
    t_dim: int = 32
    tr_sigma_min: float = 0.1
    tr_sigma_max: float = 19.0
    rot_sigma_min: float = 0.03
    rot_sigma_max: float = 1.55
    tor_sigma_min: float = 0.0314
    tor_sigma_max: float = math.pi

    def sigmas(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tr": geometric_sigma(t, self.tr_sigma_min, self.tr_sigma_max),
                "rot": geometric_sigma(t, self.rot_sigma_min, self.rot_sigma_max),
                "tor": geometric_sigma(t, self.tor_sigma_min, self.tor_sigma_max)}

    def to_dict(self) -> dict:
        return asdict(self)


class GaussianSmearing(nn.Module):
    def __init__(self, stop: float, n: int):
        super().__init__()
        self.register_buffer("offset", torch.linspace(0.0, stop, n))
        self.coeff = -0.5 / (stop / (n - 1)) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return floored_exp(self.coeff * (d[:, None] - self.offset) ** 2)


class SiLU(nn.Module):
    """x sigmoid(x), written x / (1 + exp(-x)) so that poses do not depend on the thread count: torch's fused CPU
    SiLU (and sigmoid) rounds the last bit differently at the edges of each thread's chunk (2 of 433k values of a
    1s3v call differ by 1.5e-8 between 1 and 2 threads, and the search amplifies it); the exp form is the same at any
    count. x is clamped at -80 so that exp stays finite (no inf / inf in the gradient). No parameters: checkpoints
    load as with nn.SiLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1 + torch.exp(-x.clamp(min=-80.0)))


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), SiLU(), nn.Linear(d_hidden, d_out))


class TPConv(nn.Module):
    """Message = TensorProduct(source features, edge spherical harmonics) with per-edge weights from an MLP of
    [edge scalars, source scalars, destination scalars] (DiffDock); mean over incoming edges; residual on the
    destination (zero-padded to the output irreps)."""

    def __init__(self, in_irreps: o3.Irreps, sh_irreps: o3.Irreps, out_irreps: o3.Irreps, edge_dim: int,
                 dst_irreps: o3.Irreps | None = None):
        super().__init__()
        in_irreps = o3.Irreps(in_irreps)
        dst_irreps = o3.Irreps(dst_irreps) if dst_irreps is not None else in_irreps
        self.n_src, self.n_dst = _n_scalars(in_irreps), _n_scalars(dst_irreps)
        self.tp = o3.FullyConnectedTensorProduct(in_irreps, sh_irreps, out_irreps, shared_weights=False)
        d_in = edge_dim + self.n_src + self.n_dst
        self.fc = nn.Sequential(nn.LayerNorm(d_in), mlp(d_in, d_in, self.tp.weight_numel))

    def forward(self, src_feat: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_sh: torch.Tensor,
                dst_feat: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        w = self.fc(torch.cat([edge_attr, src_feat[src, : self.n_src], dst_feat[dst, : self.n_dst]], -1))
        msg = self.tp(src_feat[src], edge_sh, w)
        out = segment_mean(msg, dst, dst_feat.shape[0])
        return out + nn.functional.pad(dst_feat, (0, out.shape[-1] - dst_feat.shape[-1]))


def _n_scalars(irreps: o3.Irreps) -> int:
    """Number of leading 0e channels (the invariant part fed to the edge MLPs)."""
    n = 0
    for mul, ir in irreps:
        if ir != o3.Irrep("0e"):
            break
        n += mul
    return n


def _irreps(ns: int, nv: int, level: int) -> o3.Irreps:
    """Feature irreps growing with depth as in DiffDock: scalars, + vectors, + pseudovectors."""
    if level == 0:
        return o3.Irreps(f"{ns}x0e")
    if level == 1:
        return o3.Irreps(f"{ns}x0e + {nv}x1o")
    return o3.Irreps(f"{ns}x0e + {nv}x1o + {nv}x1e")


class ScoreModel(nn.Module):
    def __init__(self, cfg: ScoreModelConfig | None = None):
        super().__init__()
        cfg = cfg or ScoreModelConfig()
        self.cfg = cfg
        ns, nv, ng, td = cfg.ns, cfg.nv, cfg.n_gauss, cfg.t_dim
        self.sh = o3.Irreps.spherical_harmonics(2)
        # receptor: scalars from residue type, three direction vectors as 1o inputs
        self.rec_embed = nn.Embedding(N_RES_TYPES, ns)
        self.rec_in = o3.Irreps(f"{ns}x0e + 3x1o")
        self.rec_dist = GaussianSmearing(cfg.rec_radius, ng)
        self.rec_convs = nn.ModuleList()
        irr = self.rec_in
        for i in range(cfg.rec_layers):
            out = _irreps(ns, nv, min(i + 1, 2))
            self.rec_convs.append(TPConv(irr, self.sh, out, ng))
            irr = out
        self.rec_irreps = irr
        # ligand
        self.lig_embed = mlp(ATOM_DIM + td, ns, ns)
        self.lig_dist = GaussianSmearing(cfg.lig_radius, ng)
        self.cross_dist = GaussianSmearing(cfg.cross_radius, ng)
        self.lig_convs, self.cross_convs = nn.ModuleList(), nn.ModuleList()
        irr = _irreps(ns, nv, 0)
        for i in range(cfg.lig_layers):
            out = _irreps(ns, nv, min(i + 1, 2))
            self.lig_convs.append(TPConv(irr, self.sh, out, ng + 4 + td))
            self.cross_convs.append(TPConv(self.rec_irreps, self.sh, out, ng + td, dst_irreps=irr))
            irr = out
        self.lig_irreps = irr
        # heads
        self.center_dist = GaussianSmearing(20.0, ng)
        self.center_conv = TPConv(irr, self.sh, o3.Irreps("2x1o + 2x1e"), ng + td, dst_irreps=o3.Irreps(""))
        self.tr_norm = mlp(1 + td, ns, 1)
        self.rot_norm = mlp(1 + td, ns, 1)
        # DiffDock's bond-frame harmonics: edge SH x bond-axis SH (l = 2 is even: blind to the bond's direction)
        self.tor_tp = o3.FullTensorProduct(self.sh, o3.Irreps("2e"), filter_ir_out=[o3.Irrep(ir) for ir in ("0e", "1o", "1e")])
        self.tor_conv = TPConv(irr, self.tor_tp.irreps_out, o3.Irreps(f"{ns}x0o + {ns}x0e"), ng + td,
                               dst_irreps=o3.Irreps(""))
        self.tor_out = nn.Sequential(nn.Linear(2 * ns, ns), nn.Tanh(), nn.Linear(ns, 1, bias=False))

    # ------------------------------------------------------------------------------------------------ receptor
    def encode_receptor(self, rec: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pose- and noise-independent residue features (R, rec_irreps.dim)."""
        cfg = self.cfg
        pos = rec["pos"]
        h = torch.cat([self.rec_embed(rec["res_type"]), rec["vec"].reshape(-1, 9).to(pos.dtype)], -1)
        ei = radius_graph(pos, cfg.rec_radius, rec.get("batch"), max_num_neighbors=cfg.rec_max_neighbors)
        vec = pos[ei[0]] - pos[ei[1]]
        sh = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        attr = self.rec_dist(vec.norm(dim=-1))
        for conv in self.rec_convs:
            h = conv(h, ei, attr, sh, h)
        return h

    # ------------------------------------------------------------------------------------------------ ligand
    def forward(self, lig: dict[str, torch.Tensor], rec: dict[str, torch.Tensor], t: torch.Tensor,
                rec_h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores for poses lig["pos"] at noise levels t (G,): translation (G, 3), lab-frame rotation (G, 3),
        torsion (M,). `rec_h` = `encode_receptor(rec)`, computed here when not given (training)."""
        cfg = self.cfg
        if rec_h is None:
            rec_h = self.encode_receptor(rec)
        pos, batch = lig["pos"], lig["batch"]
        n_graphs = t.shape[0]
        temb = sinusoidal_embedding(t * 1000.0, cfg.t_dim).to(pos.dtype)
        h = self.lig_embed(torch.cat([lig["feat"].to(pos.dtype), temb[batch]], -1))

        # ligand-ligand edges: bonds plus all pairs within lig_radius (a bond present twice is harmless)
        radius_ei = radius_graph(pos, cfg.lig_radius, batch)
        ei = torch.cat([lig["bond_index"], radius_ei], 1)
        btype = torch.cat([lig["bond_type"].to(pos.dtype), pos.new_zeros(radius_ei.shape[1], 4)], 0)
        vec = pos[ei[0]] - pos[ei[1]]
        lig_sh = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        lig_attr = torch.cat([self.lig_dist(vec.norm(dim=-1)), btype, temb[batch[ei[1]]]], -1)

        # receptor -> ligand cross edges: row 0 = ligand atom (dst), row 1 = residue (src)
        cross = radius(rec["pos"], pos, cfg.cross_radius, rec.get("batch"), lig["rec_batch"],
                       max_num_neighbors=cfg.cross_max_neighbors)
        cei = torch.stack([cross[1], cross[0]])
        cvec = rec["pos"][cei[0]] - pos[cei[1]]
        cross_sh = o3.spherical_harmonics(self.sh, cvec, normalize=True, normalization="component")
        cross_attr = torch.cat([self.cross_dist(cvec.norm(dim=-1)), temb[batch[cei[1]]]], -1)

        for conv, xconv in zip(self.lig_convs, self.cross_convs):
            h_new = conv(h, ei, lig_attr, lig_sh, h)
            h = h_new + xconv(rec_h, cei, cross_attr, cross_sh, h) - nn.functional.pad(h, (0, h_new.shape[-1] - h.shape[-1]))

        # translation and rotation: convolution from every atom to its ligand's centroid
        center = segment_mean(pos, batch, n_graphs)
        cvec = pos - center[batch]
        c_ei = torch.stack([torch.arange(pos.shape[0], device=pos.device), batch])
        c_sh = o3.spherical_harmonics(self.sh, cvec, normalize=True, normalization="component")
        c_attr = torch.cat([self.center_dist(cvec.norm(dim=-1)), temb[batch]], -1)
        out = self.center_conv(h, c_ei, c_attr, c_sh, pos.new_zeros(n_graphs, 0))
        tr = out[:, 0:3] + out[:, 6:9]
        rot = out[:, 3:6] + out[:, 9:12]
        sig = cfg.sigmas(t)
        tr_n = tr.norm(dim=-1, keepdim=True)
        tr = tr / (tr_n + 1e-6) * self.tr_norm(torch.cat([tr_n, temb], -1)) / sig["tr"][:, None].to(pos.dtype)
        rot_n = rot.norm(dim=-1, keepdim=True)
        rot_scale = so3.igso3_score_norm(sig["rot"]).sqrt().to(pos.dtype)[:, None]
        rot = rot / (rot_n + 1e-6) * self.rot_norm(torch.cat([rot_n, temb], -1)) * rot_scale

        # torsions: convolution from atoms within lig_radius of each rotatable bond's centre, with the bond axis
        tor_bonds = lig["tor_bonds"]
        if tor_bonds.shape[0] == 0:
            return tr, rot, pos.new_zeros(0)
        tor_batch = batch[tor_bonds[:, 0]]
        bond_center = (pos[tor_bonds[:, 0]] + pos[tor_bonds[:, 1]]) / 2
        bond_vec = pos[tor_bonds[:, 1]] - pos[tor_bonds[:, 0]]
        te = radius(pos, bond_center, cfg.lig_radius, batch, tor_batch)  # row 0 = bond, row 1 = atom
        t_ei = torch.stack([te[1], te[0]])
        evec = pos[t_ei[0]] - bond_center[t_ei[1]]
        e_sh = o3.spherical_harmonics(self.sh, evec, normalize=True, normalization="component")
        b_sh = o3.spherical_harmonics(2, bond_vec, normalize=True, normalization="component")
        t_sh = self.tor_tp(e_sh, b_sh[t_ei[1]])
        t_attr = torch.cat([self.lig_dist(evec.norm(dim=-1)), temb[tor_batch[t_ei[1]]]], -1)
        tor_h = self.tor_conv(h, t_ei, t_attr, t_sh, pos.new_zeros(tor_bonds.shape[0], 0))
        tor = self.tor_out(tor_h).squeeze(-1)
        tor_scale = torus.wrapped_normal_score_norm(sig["tor"][tor_batch]).sqrt().to(pos.dtype)
        return tr, rot, tor * tor_scale


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
