"""A differentiable Vina-family empirical scoring function in torch (kcal/mol-like units, lower is better).

Terms on heavy-atom pairs within 8 A, as functions of the surface distance d = r - R_i - R_j:
  gauss1 exp(-(d/w)^2), gauss2 exp(-((d-3)/2)^2), repulsion d^2 (d < 0),
  hydrophobic (both hydrophobic) 1 below d = good, falling linearly to 0 at d = bad,
  hydrogen bond (donor-acceptor pair) 1 below d = good, falling linearly to 0 at d = bad.
Two parameter sets (`FUNCTIONS`), as in AutoDock Vina 1.2:
  vina    (Trott & Olson 2010): w 0.5; weights gauss1 -0.0356, gauss2 -0.00516, repulsion 0.840, hydrophobic
          -0.0351 (0.5 -> 1.5), H-bond -0.587 (-0.7 -> 0); X-Score radii C 1.9, N 1.8, O 1.7.
  vinardo (Quiroga & Villarreal 2016): w 0.8; gauss1 -0.045, no gauss2, repulsion 0.8, hydrophobic -0.035
          (0 -> 2.5), H-bond -0.6 (-0.6 -> 0); radii C 2.0, N 1.7, O 1.6.
Atom typing follows Vina: carbon is hydrophobic unless bonded to a heteroatom (any element but C and H, S included);
halogens are hydrophobic; O is an acceptor and a donor when it carries H; N donates when it carries H and accepts
when its lone pair is free; S is neither; metals are donors with R = 1.2 A. In the receptor, where the file gives a
residue's hydrogens (as a receptor prepared for Vina does), they decide: an N or O donates when it carries an H, an N
accepts only when it carries none (His tautomers, cofactor amines); residues without hydrogens in the file take their
donors/acceptors from residue templates (His N both), and their cofactor N/O are acceptors only.

Protein-ligand energies are looked up in precomputed grid maps (one per ligand atom class, trilinear interpolation,
differentiable in the coordinates; atoms outside the grid pay a quadratic wall) during search, and evaluated
exactly on atom pairs for the final ranking. The intra-ligand term (pairs more than three bonds apart) uses the
same steric and hydrophobic terms so that torsion moves cannot fold the ligand onto itself.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from scipy.spatial import cKDTree

from sciddiff.dock.box import Box
from sciddiff.dock.ligand import polar_hydrogen_rotors
from sciddiff.dock.receptor import AA_ALIASES, Receptor
from sciddiff.nn.embeddings import EXP_FLOOR, floored_exp

W_ROT = 0.0585  # Vina's conformational-entropy factor: score = inter / (1 + W_ROT * N_rot)
CUTOFF = 8.0


@dataclass(frozen=True)
class Function:
    """One parameter set of the Vina family (see the module docstring)."""

    gauss1: float
    gauss1_width: float
    gauss2: float
    repulsion: float
    hydrophobic: float
    hydrophobic_range: tuple[float, float]   # (good, bad) surface distances
    hbond: float
    hbond_range: tuple[float, float]
    radii: dict
    short_cutoff: float  # beyond it every term except gauss2 is negligible (max r_sum 4.3 A + the terms' reach)


FUNCTIONS = {
    "vina": Function(-0.0356, 0.5, -0.00516, 0.840, -0.0351, (0.5, 1.5), -0.587, (-0.7, 0.0),
                     {"C": 1.9, "N": 1.8, "O": 1.7, "S": 2.0, "P": 2.1, "F": 1.5, "Cl": 1.8, "Br": 2.0, "I": 2.2},
                     short_cutoff=6.0),
    "vinardo": Function(-0.045, 0.8, 0.0, 0.8, -0.035, (0.0, 2.5), -0.6, (-0.6, 0.0),
                        {"C": 2.0, "N": 1.7, "O": 1.6, "S": 2.0, "P": 2.1, "F": 1.5, "Cl": 1.8, "Br": 2.0, "I": 2.2},
                        short_cutoff=7.0),
}
METALS = {"Zn", "Mg", "Ca", "Fe", "Mn", "Co", "Ni", "Cu", "Na", "K", "Cd", "Hg", "Li", "Sr", "Ba", "Cs", "Rb", "Al"}
HALOGENS = {"F", "Cl", "Br", "I"}
METAL_RADIUS = 1.2

# Protein polar atoms by residue template, for residues whose hydrogens the file does not give.
# Vina's donors and acceptors are N and O only: Cys SG (type SA) is neither.
PROTEIN_DONORS = {("ARG", "NE"), ("ARG", "NH1"), ("ARG", "NH2"), ("ASN", "ND2"), ("GLN", "NE2"), ("HIS", "ND1"),
                  ("HIS", "NE2"), ("LYS", "NZ"), ("TRP", "NE1"), ("SER", "OG"), ("THR", "OG1"), ("TYR", "OH")}
PROTEIN_ACCEPTOR_N = {("HIS", "ND1"), ("HIS", "NE2")}
# Longest C-X bond (A) per heteroatom, for "carbon bonded to a heteroatom" without bond records (C-S is 1.82 A).
C_BOND = {"N": 1.75, "O": 1.75, "S": 2.0, "P": 2.0, "Se": 2.1, "F": 1.75, "Cl": 2.0, "Br": 2.15, "I": 2.35}


@dataclass
class AtomTypes:
    """Per-atom Vina typing: radius, hydrophobic, donor, acceptor (numpy arrays of length N)."""

    radius: np.ndarray
    hydrophobic: np.ndarray
    donor: np.ndarray
    acceptor: np.ndarray

    def classes(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (radius, hyd, don, acc) rows and each atom's class index."""
        table = np.stack([self.radius, self.hydrophobic, self.donor, self.acceptor], 1).astype(np.float32)
        uniq, inverse = np.unique(table, axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1)


def ligand_types(mol: Chem.Mol, function: str = "vina") -> AtomTypes:
    radii = FUNCTIONS[function].radii
    n = mol.GetNumAtoms()
    radius, hyd, don, acc = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    for atom in mol.GetAtoms():
        i, el = atom.GetIdx(), atom.GetSymbol()
        nbrs = [a.GetSymbol() for a in atom.GetNeighbors()]
        has_h = atom.GetTotalNumHs() > 0
        if el in METALS:
            radius[i], don[i] = METAL_RADIUS, True
            continue
        radius[i] = radii.get(el, 2.0)
        if el == "C":
            hyd[i] = all(s in ("C", "H") for s in nbrs)
        elif el in HALOGENS:
            hyd[i] = True
        elif el == "O":
            acc[i], don[i] = True, has_h
        elif el == "N":
            don[i] = has_h
            acc[i] = _nitrogen_accepts(atom)
    return AtomTypes(radius, hyd, don, acc)


def _nitrogen_accepts(atom: Chem.Atom) -> bool:
    """Lone pair available: not cationic, not amide/aniline-like (conjugated trivalent N), not pyrrole-type."""
    if atom.GetFormalCharge() > 0:
        return False
    degree = atom.GetDegree() + atom.GetTotalNumHs()
    if atom.GetIsAromatic():
        return degree == 2
    if degree >= 3:
        for nbr in atom.GetNeighbors():
            if nbr.GetIsAromatic():
                return False
            if any(b.GetBondType() == Chem.BondType.DOUBLE and b.GetOtherAtom(nbr).GetSymbol() in ("O", "S", "N")
                   for b in nbr.GetBonds()):
                return False  # amide / urea / sulfonamide-like
        return degree == 3  # tertiary or secondary amine
    return True  # imine, nitrile


def receptor_types(rec: Receptor, function: str = "vina") -> AtomTypes:
    radii = FUNCTIONS[function].radii
    n = len(rec.coords)
    el = rec.elements
    radius = np.array([METAL_RADIUS if e in METALS else radii.get(e, 2.0) for e in el], np.float32)
    hetero_nbr = np.zeros(n, bool)
    carbons = np.where(el == "C")[0]
    others = np.where((el != "C") & ~np.isin(el, list(METALS)))[0]
    if len(carbons) and len(others):
        cut = np.array([C_BOND.get(e, 1.75) for e in el[others]])
        d = cKDTree(rec.coords[carbons]).sparse_distance_matrix(cKDTree(rec.coords[others]), float(cut.max()),
                                                                output_type="coo_matrix")
        hetero_nbr[carbons[d.row[d.data < cut[d.col]]]] = True
    hyd = ((el == "C") & ~hetero_nbr) | np.isin(el, list(HALOGENS))
    key = list(zip([AA_ALIASES.get(r, r) for r in rec.res_names.tolist()], rec.atom_names.tolist()))  # HID -> HIS
    is_aa = ~rec.is_hetero
    don = np.array([k in PROTEIN_DONORS for k in key]) & is_aa
    don |= (rec.atom_names == "N") & (rec.res_names != "PRO") & is_aa
    don |= np.isin(el, list(METALS))
    don |= (el == "O") & (rec.res_names == "HOH")  # a water's O (io names every water HOH) both gives and takes H-bonds
    his_ring_n = np.array([k in PROTEIN_ACCEPTOR_N for k in key])
    acc = (el == "O") | his_ring_n | ((el == "N") & rec.is_hetero)
    acc &= ~np.isin(el, list(METALS))
    if rec.hydrogens is not None:
        h = rec.hydrogens
        known = (h >= 0) & ((el == "N") | (el == "O"))
        # an imidazole with no N-H (some preparations write His so) is an artefact, not an anion: keep the template
        his_n = his_ring_n & is_aa
        protonated = np.bincount(rec.atom_res[his_n], weights=h[his_n] > 0, minlength=len(rec.res_ca))
        known &= ~(his_n & (protonated[rec.atom_res] == 0))  # (atom_res is -1 only off amino acids, masked by his_n)
        don = np.where(known, h > 0, don)
        acc = np.where(known & (el == "N"), acc & (h == 0), acc)
    return AtomTypes(radius, hyd, don, acc)


PAIR_TERMS = ("gauss1", "gauss2", "repulsion", "hydrophobic", "hbond")  # = the weight names of `Function`
_SHORT_TERMS = ("gauss1", "repulsion", "hydrophobic", "hbond")


def _term(name: str, d: torch.Tensor, hyd: torch.Tensor, hb: torch.Tensor, fn: Function) -> torch.Tensor:
    if name == "gauss1":
        return floored_exp(-((d / fn.gauss1_width) ** 2))
    if name == "gauss2":
        return floored_exp(-(((d - 3.0) / 2.0) ** 2))
    if name == "repulsion":
        return torch.clamp(d, max=0.0) ** 2
    if name == "hydrophobic":
        good, bad = fn.hydrophobic_range
        return hyd * torch.clamp((bad - d) / (bad - good), 0.0, 1.0)
    good, bad = fn.hbond_range
    return hb * torch.clamp((bad - d) / (bad - good), 0.0, 1.0)


def pair_terms(r: torch.Tensor, r_sum: torch.Tensor, hyd: torch.Tensor, hb: torch.Tensor,
               fn: Function = FUNCTIONS["vina"], names: tuple[str, ...] = PAIR_TERMS) -> list[torch.Tensor]:
    """Unweighted Vina terms `names` for pairs at distance r with summed radii r_sum; hyd/hb are 0/1 pair masks.
    No cutoff applied."""
    d = r - r_sum
    return [_term(name, d, hyd, hb, fn) for name in names]


def term_weights(fn: Function = FUNCTIONS["vina"]) -> torch.Tensor:
    """Weights (5,) of PAIR_TERMS."""
    return torch.tensor([getattr(fn, name) for name in PAIR_TERMS])


def hbond_pairs(donor_l, acceptor_l, donor_r, acceptor_r) -> torch.Tensor:
    """The H-bond pair mask of ligand against receptor atoms (broadcast): 1 where one can donate to the other. A pair
    of two atoms that both donate and accept (a hydroxyl and Ser OG, a water) is one bond, as Vina's yes/no test
    (xs_h_bond_possible) counts it, not two."""
    return (donor_l * acceptor_r + acceptor_l * donor_r).clamp(max=1.0)


def _weighted_terms(terms: str, fn: Function) -> tuple[str, ...]:
    """The PAIR_TERMS that `terms` ("all", "short": all but gauss2, "long": gauss2) selects and `fn` weights, in the
    order their weighted values are summed."""
    names = {"short": _SHORT_TERMS, "long": ("gauss2",), "all": _SHORT_TERMS + ("gauss2",)}[terms]
    return tuple(n for n in names if getattr(fn, n))


def pair_energy(r: torch.Tensor, r_sum: torch.Tensor, hyd: torch.Tensor, hb: torch.Tensor,
                terms: str = "all", fn: Function = FUNCTIONS["vina"]) -> torch.Tensor:
    """Weighted sum of `pair_terms`, zero beyond CUTOFF; terms: "all", "short" (everything but gauss2) or "long"
    (gauss2 only). Only the needed terms are computed (grid maps cover millions of pairs)."""
    names = _weighted_terms(terms, fn)
    e = torch.zeros_like(r)
    for name, t in zip(names, pair_terms(r, r_sum, hyd, hb, fn, names)):
        e = e + getattr(fn, name) * t
    return torch.where(r < CUTOFF, e, torch.zeros_like(e))


def pair_energy_and_derivative(r: torch.Tensor, r_sum: torch.Tensor, hyd: torch.Tensor, hb: torch.Tensor | None,
                               fn: Function = FUNCTIONS["vina"]) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_energy` (all terms) and its derivative d energy / d r, both zero beyond CUTOFF; hb=None: no H-bond
    pairs (intra-ligand), the term is skipped. The search's inner loop: few, in-place operations (their count, not
    the arithmetic, is the cost at ~10^4 pairs)."""
    d = r - r_sum
    e, de = torch.zeros_like(r), torch.zeros_like(r)
    if fn.gauss1:
        g = torch.exp(d.square().mul_(-1.0 / fn.gauss1_width**2).clamp_(min=-EXP_FLOOR))
        e.add_(g, alpha=fn.gauss1)
        de.addcmul_(d, g, value=-2.0 * fn.gauss1 / fn.gauss1_width**2)
    if fn.gauss2:
        u = d - 3.0
        g = torch.exp(u.square().mul_(-0.25).clamp_(min=-EXP_FLOOR))
        e.add_(g, alpha=fn.gauss2)
        de.addcmul_(u, g, value=-0.5 * fn.gauss2)
    overlap = d.clamp(max=0.0)
    e.addcmul_(overlap, overlap, value=fn.repulsion)
    de.add_(overlap, alpha=2.0 * fn.repulsion)
    ramps = [(fn.hydrophobic, fn.hydrophobic_range, hyd)] + ([(fn.hbond, fn.hbond_range, hb)] if hb is not None else [])
    for weight, (good, bad), mask in ramps:
        ramp = (bad - d).mul_(1.0 / (bad - good))
        inside = ((ramp > 0) & (ramp < 1)).to(r.dtype)
        e.addcmul_(mask, ramp.clamp_(0.0, 1.0), value=weight)
        de.addcmul_(mask, inside, value=-weight / (bad - good))
    near = (r < CUTOFF).to(r.dtype)
    return e.mul_(near), de.mul_(near)


class IntraLigand:
    """Intra-ligand energy (B,) of poses x (B, N, 3): steric + hydrophobic terms (no H-bonds) over heavy-atom pairs
    more than three bonds apart."""

    def __init__(self, mol: Chem.Mol, lig: AtomTypes, fn: Function = FUNCTIONS["vina"]):
        i, j = np.where(np.triu(Chem.GetDistanceMatrix(mol) > 3, k=1))
        self.i, self.j, self.fn = torch.as_tensor(i), torch.as_tensor(j), fn
        r = torch.as_tensor(lig.radius)
        h = torch.as_tensor(lig.hydrophobic, dtype=torch.float32)
        self.rsum, self.hyd = r[self.i] + r[self.j], h[self.i] * h[self.j]
        # (P, N) pair incidence: x_i - x_j for all pairs, and the atom gradient from the pair forces, as one matmul
        # each (a third of the two gathers and two index_adds at the search's batch of ~90 poses)
        self.incidence = torch.zeros(len(i), mol.GetNumAtoms())
        self.incidence[torch.arange(len(i)), self.i] = 1.0
        self.incidence[torch.arange(len(i)), self.j] = -1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.i) == 0:
            return x.new_zeros(x.shape[:-2])
        r = (x[..., self.i, :] - x[..., self.j, :]).norm(dim=-1)
        return pair_energy(r, self.rsum.to(x.dtype), self.hyd.to(x.dtype), torch.zeros_like(r), fn=self.fn).sum(-1)

    def energy_and_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (B,) and its gradient (B, N, 3) with respect to x (B, N, 3)."""
        if len(self.i) == 0:
            return x.new_zeros(x.shape[0]), torch.zeros_like(x)
        # pairs x poses layout: one (P, N) x (N, 3B) product each way instead of B small ones
        incidence = self.incidence.to(x.dtype)
        b, n, _ = x.shape
        diff = (incidence @ x.transpose(0, 1).reshape(n, 3 * b)).view(-1, b, 3)
        r = diff.norm(dim=-1)
        e, de = pair_energy_and_derivative(r, self.rsum.to(x.dtype)[:, None], self.hyd.to(x.dtype)[:, None], None,
                                           self.fn)
        force = (diff * (de / r.clamp_min(1e-6))[..., None]).view(-1, 3 * b)
        return e.sum(0), (incidence.T @ force).view(n, b, 3).transpose(0, 1)


@dataclass
class GridMap:
    """Energy maps (C, X, Y, Z), one per ligand atom class, on a regular grid: point (i, j, k) sits at
    lo + (i, j, k) * spacing (Angstrom); lo (3,), or (B, 1, 3) for a batch whose rows use different maps."""

    values: torch.Tensor
    lo: torch.Tensor
    spacing: torch.Tensor

    def __post_init__(self):
        _, nx, ny, nz = self.values.shape
        self._top = torch.tensor([nx - 1, ny - 1, nz - 1])
        # flat-index offsets of a cell's 8 corners, in [dx, dy, dz] order
        self._corners = torch.tensor([(a * ny + b) * nz + d for a in (0, 1) for b in (0, 1) for d in (0, 1)])

    def interpolate(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trilinear value (B, N) of atoms x (B, N, 3) of classes cls (N,) and its gradient (B, N, 3). Outside the
        grid the nearest border value is used, with zero gradient along the clamped axes (torch's grid_sample with
        padding_mode="border", align_corners=True)."""
        _, nx, ny, nz = self.values.shape
        top = self._top.to(x.dtype)
        u = (x - self.lo.to(x.dtype)) / self.spacing.to(x.dtype)
        inside = (u >= 0) & (u <= top)
        u = torch.minimum(u.clamp(min=0), top)
        i0 = torch.minimum(u.floor(), top - 1)
        f = u - i0
        i0 = i0.long()
        base = ((cls * nx + i0[..., 0]) * ny + i0[..., 1]) * nz + i0[..., 2]
        v = self.values.reshape(-1).to(x.dtype)[base[..., None] + self._corners].unflatten(-1, (2, 2, 2))
        fx, fy, fz = f.unbind(-1)
        vz = v[..., 0] + fz[..., None, None] * (v[..., 1] - v[..., 0])  # (B, N, 2, 2): interpolated along z
        dz = v[..., 1] - v[..., 0]
        vy = vz[..., 0] + fy[..., None] * (vz[..., 1] - vz[..., 0])     # (B, N, 2): then along y
        dy = vz[..., 1] - vz[..., 0]
        dzy = dz[..., 0] + fy[..., None] * (dz[..., 1] - dz[..., 0])
        value = vy[..., 0] + fx * (vy[..., 1] - vy[..., 0])
        grad = torch.stack([vy[..., 1] - vy[..., 0], dy[..., 0] + fx * (dy[..., 1] - dy[..., 0]),
                            dzy[..., 0] + fx * (dzy[..., 1] - dzy[..., 0])], -1)
        return value, grad * inside / self.spacing.to(x.dtype)


def _grid_energy(grid: GridMap, cls: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy (B,) of atoms x (B, N, 3) of map classes cls in the grid maps, plus a quadratic wall outside the box
    lo..hi (A), and its gradient (B, N, 3)."""
    v, grad = grid.interpolate(x, cls)
    below, above = torch.relu(lo - x), torch.relu(x - hi)
    return v.sum(-1) + 10.0 * (below.pow(2) + above.pow(2)).sum((-1, -2)), grad + 20.0 * (above - below)


def _class_pair_energies(r: torch.Tensor, rec_r: torch.Tensor, rec_hyd: torch.Tensor, rec_don: torch.Tensor,
                         rec_acc: torch.Tensor, classes: np.ndarray, terms: str, fn: Function
                         ) -> Iterator[torch.Tensor]:
    """For each ligand atom class (radius, hyd, don, acc) in turn, the energies (P,) of pairs at distances r < CUTOFF
    (P,) with receptor atoms of those types: `pair_energy`'s values bit for bit, but what depends on the class's
    radius alone (the steric terms, the two ramps) is computed once per radius, and a term whose mask is zero for
    the class is left out (it would add 0). Classes share radii (C hydrophobic or not, N and O donors or not): the
    grid maps cost 0.7x."""
    names = _weighted_terms(terms, fn)
    ramp_names = tuple(n for n in names if n in ("hydrophobic", "hbond"))
    steric = tuple(n for n in names if n not in ramp_names)
    by_radius: dict[float, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
    for radius, hyd, don, acc in classes:
        if radius not in by_radius:
            r_sum = radius + rec_r
            e = torch.zeros_like(r)
            for name, t in zip(steric, pair_terms(r, r_sum, 1.0, 1.0, fn, steric)):
                e = e + getattr(fn, name) * t
            ramps = dict(zip(ramp_names, pair_terms(r, r_sum, 1.0, 1.0, fn, ramp_names)))
            by_radius[radius] = (e, ramps)
        e, ramps = by_radius[radius]
        if "hydrophobic" in ramps and hyd:
            e = e + fn.hydrophobic * (hyd * rec_hyd * ramps["hydrophobic"])
        if "hbond" in ramps and (don or acc):
            e = e + fn.hbond * (hbond_pairs(don, acc, rec_don, rec_acc) * ramps["hbond"])
        yield e


class LatticeNodes:
    """Grid-map values already computed for one ligand's atom classes against one receptor, by node of the lattice
    of whole multiples of each map's spacing (A) from the origin: the boxes of blind docking (six pockets, then
    boxes around the best poses inside them) overlap by about half, and a box built with a `LatticeNodes` snaps its
    grid outward to whole Angstroms, so that its nodes are lattice nodes and only those no box has computed yet
    are computed."""

    _SHIFT, _BITS = 1 << 20, 21  # node indices (within +-2^20 of the origin) packed into one int64

    def __init__(self):
        self.known: dict[tuple[float, str], tuple[np.ndarray, torch.Tensor]] = {}  # -> (sorted keys, (C, K))

    def keys(self, pts: np.ndarray, spacing: float) -> np.ndarray:
        ijk = np.rint(pts / spacing).astype(np.int64) + self._SHIFT
        return (ijk[:, 0] << (2 * self._BITS)) | (ijk[:, 1] << self._BITS) | ijk[:, 2]

    def values(self, pass_id: tuple[float, str], keys: np.ndarray, compute) -> torch.Tensor:
        """Values (C, P) at nodes `keys` (P,): those known, and compute(mask) (C, mask.sum()) for the rest."""
        known_keys, known = self.known.get(pass_id, (np.zeros(0, np.int64), None))
        pos = np.minimum(np.searchsorted(known_keys, keys), max(len(known_keys) - 1, 0))
        have = known_keys[pos] == keys if len(known_keys) else np.zeros(len(keys), bool)
        new = compute(~have)
        out = new.new_empty(new.shape[0], len(keys))
        out[:, torch.as_tensor(~have)] = new
        if have.any():
            out[:, torch.as_tensor(have)] = known[:, torch.as_tensor(pos[have])]
        all_keys = np.concatenate([known_keys, keys[~have]])
        order = np.argsort(all_keys, kind="stable")
        values = new if known is None else torch.cat([known, new], 1)
        self.known[pass_id] = (all_keys[order], values[:, torch.as_tensor(order)])
        return out


class ScoringFunction:
    """Protein-ligand + intra-ligand energy of one ligand against one receptor, batched over poses (B, N, 3)."""

    def __init__(self, receptor: Receptor, mol: Chem.Mol, n_torsions: int, region: Box | None = None,
                 spacing: float = 0.5, grid_pad: float = 2.0, function: str = "vina",
                 nodes: LatticeNodes | None = None):
        """region: build grid maps over it (+ grid_pad A); nodes: share their nodes with other boxes' grids (the
        grid then snapped outward to whole Angstroms)."""
        self.fn = FUNCTIONS[function]
        self.lig = ligand_types(mol, function)
        self.classes, atom_class = self.lig.classes()
        self.atom_class = torch.as_tensor(atom_class)  # (N,) grid-map class per ligand atom, looked up every step
        rec_types = receptor_types(receptor, function)
        self.n_torsions = n_torsions
        self.n_rot = n_torsions + 0.5 * polar_hydrogen_rotors(mol)  # Vina's N_rot: half a rotor per terminal OH/NH2
        self.entropy = 1.0 + W_ROT * self.n_rot
        keep = np.ones(len(receptor.coords), bool)
        if region is not None:  # only atoms that can reach the region
            keep = region.contains(receptor.coords, pad=grid_pad + CUTOFF + (1.0 if nodes is not None else 0.0))
        self.rec_xyz = torch.as_tensor(receptor.coords[keep])
        self.rec_r = torch.as_tensor(rec_types.radius[keep])
        self.rec_hyd = torch.as_tensor(rec_types.hydrophobic[keep], dtype=torch.float32)
        self.rec_don = torch.as_tensor(rec_types.donor[keep], dtype=torch.float32)
        self.rec_acc = torch.as_tensor(rec_types.acceptor[keep], dtype=torch.float32)
        self.intra = IntraLigand(mol, self.lig, self.fn)  # (B,) intra-ligand energy of poses (B, N, 3)
        self.grid = None
        if region is not None:
            self._build_grid(region, spacing, grid_pad, nodes)

    # -------------------------------------------------------------------------------------------- exact
    def inter_exact(self, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Protein-ligand energy (B,) by explicit pairs (used for final scores; cost B x N x receptor atoms near x)."""
        return self._inter_exact(x, chunk, gradient=False)[0]

    def inter_terms(self, x: torch.Tensor) -> torch.Tensor:
        """Unweighted protein-ligand term sums (B, 5) in PAIR_TERMS order over pairs within CUTOFF (what Vina's
        --score_only lists); weighted by `term_weights` they sum to `inter_exact`."""
        rec_xyz, pair_args = self._pair_inputs(x)
        r = torch.cdist(x, rec_xyz[None].expand(x.shape[0], -1, -1), compute_mode="donot_use_mm_for_euclid_dist")
        terms = torch.stack(pair_terms(r, *pair_args, self.fn), -1)
        return (terms * (r < CUTOFF)[..., None]).sum((1, 2))

    def _pair_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Receptor atoms (M, 3) that any pose in x can feel (poses move little during polishing) and the (N, M)
        summed radii, hydrophobic and H-bond pair masks of the ligand against them."""
        lig = self.lig
        near = (torch.cdist(x.reshape(-1, 3).float(), self.rec_xyz) < CUTOFF + 2.0).any(0)
        rec_xyz, rec_r, rec_hyd, rec_don, rec_acc = (a[near].to(x.dtype) for a in (
            self.rec_xyz, self.rec_r, self.rec_hyd, self.rec_don, self.rec_acc))
        r_l, h_l, d_l, a_l = (torch.as_tensor(v, dtype=x.dtype) for v in (
            lig.radius, lig.hydrophobic, lig.donor, lig.acceptor))
        return rec_xyz, (r_l[:, None] + rec_r, h_l[:, None] * rec_hyd, hbond_pairs(d_l[:, None], a_l[:, None], rec_don,
                                                                                   rec_acc))

    def _inter_exact(self, x: torch.Tensor, chunk: int = 64, gradient: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energy (B,) and, with gradient=True, d energy / d x (B, N, 3) (else None)."""
        rec_xyz, pair_args = self._pair_inputs(x)
        energies, grads = [], []
        for xb in x.split(chunk):
            r = torch.cdist(xb, rec_xyz[None].expand(xb.shape[0], -1, -1), compute_mode="donot_use_mm_for_euclid_dist")
            args = (r, *pair_args)
            if not gradient:
                energies.append(pair_energy(*args, fn=self.fn).sum((-1, -2)))
                continue
            e, de = pair_energy_and_derivative(*args, fn=self.fn)
            energies.append(e.sum((-1, -2)))
            c = de / r.clamp_min(1e-6)  # d e / d x_i = sum_j c_ij (x_i - y_j)
            grads.append(xb * c.sum(-1, keepdim=True) - c @ rec_xyz)
        return torch.cat(energies), (torch.cat(grads) if gradient else None)

    # -------------------------------------------------------------------------------------------- grid
    def _build_grid(self, region: Box, spacing: float, pad: float, nodes: LatticeNodes | None = None) -> None:
        """Short-range terms on a fine grid (pairs within the function's short cutoff) and, for Vina, the smooth,
        long-range gauss2 term on a 1 A grid (pairs within 8 A): about 4x fewer pairs than one fine 8 A grid. The
        1 A map is then added into the fine one at its nodes: the two grids share their origin and every coarse node
        is a fine node, so within a fine cell the coarse map's trilinear interpolant is itself trilinear, fixed by
        the cell's corners, and one lookup gives exactly what two did (half the search's grid cost)."""
        lo = region.center - region.size / 2 - pad
        hi = region.center + region.size / 2 + pad
        if nodes is not None:  # whole Angstroms: the nodes of every pass lie on its lattice
            lo, hi = np.floor(lo).astype(np.float32), np.ceil(hi).astype(np.float32)
        tree = cKDTree(self.rec_xyz.numpy())
        passes = [(spacing, self.fn.short_cutoff, "short")] + ([(1.0, CUTOFF, "long")] if self.fn.gauss2 else [])
        maps = []
        for step, cutoff, terms in passes:
            axes = [np.arange(lo[k], hi[k] + step, step, dtype=np.float32) for k in range(3)]
            shape = tuple(len(a) for a in axes)
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

            def node_values(todo: np.ndarray | None, pts=pts, cutoff=cutoff, terms=terms) -> torch.Tensor:
                """Values (C, P) at the nodes pts[todo] (todo None: all)."""
                at = pts if todo is None else pts[todo]
                if len(at) == 0:
                    return torch.zeros(len(self.classes), 0)
                # a plain record array: a scipy.sparse matrix would check and copy its millions of indices
                pairs = cKDTree(at).sparse_distance_matrix(tree, cutoff, output_type="ndarray")
                r = pairs["v"].astype(np.float32)
                if cutoff >= CUTOFF:  # pairs at CUTOFF (in float32) would add exactly 0
                    pairs, r = pairs[r < CUTOFF], r[r < CUTOFF]
                gi, rj = (torch.as_tensor(pairs[k].astype(np.int64)) for k in ("i", "j"))
                r = torch.as_tensor(r)
                rec_r, rec_h = self.rec_r[rj], self.rec_hyd[rj]
                rec_d, rec_a = self.rec_don[rj], self.rec_acc[rj]
                return torch.stack([torch.zeros(len(at)).index_add_(0, gi, e) for e in _class_pair_energies(
                    r, rec_r, rec_h, rec_d, rec_a, self.classes, terms, self.fn)])

            values = (node_values(None) if nodes is None
                      else nodes.values((step, terms), nodes.keys(pts, step), node_values)).reshape(-1, *shape)
            lo_t = torch.as_tensor([a[0] for a in axes])
            hi_t = torch.as_tensor([a[-1] for a in axes])
            maps.append((GridMap(values, lo_t, (hi_t - lo_t) / (torch.as_tensor(shape) - 1)), pts))
        (fine, pts), *coarse = maps
        for grid, _ in coarse:
            cls = torch.arange(len(self.classes))[:, None]
            fine.values += grid.interpolate(torch.as_tensor(pts)[None], cls)[0].reshape(fine.values.shape)
        self.map = fine
        self.grid_lo = fine.lo
        self.grid_hi = fine.lo + fine.spacing * (torch.as_tensor(fine.values.shape[1:]) - 1)
        self.grid = True

    def inter_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Protein-ligand energy (B,) by trilinear interpolation in the grid maps, plus a wall outside the grid."""
        return self._inter_grid(x)[0]

    def _inter_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`inter_grid` and its gradient (B, N, 3)."""
        return _grid_energy(self.map, self.atom_class.to(x.device), self.grid_lo, self.grid_hi, x)

    # -------------------------------------------------------------------------------------------- totals
    def energy(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Search objective (B,): inter (grid or exact) + intra."""
        inter = self.inter_exact(x) if exact or self.grid is None else self.inter_grid(x)
        return inter + self.intra(x)

    def energy_and_gradient(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`energy` (B,) and its gradient (B, N, 3) with respect to the coordinates, computed analytically: the
        search's inner loop, where autograd's per-operation overhead made local optimisation 2.3x slower."""
        inter, g_inter = self._inter_exact(x) if exact or self.grid is None else self._inter_grid(x)
        intra, g_intra = self.intra.energy_and_gradient(x)
        return inter + intra, g_inter + g_intra

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Reported score (B,), Vina's: exact inter-molecular energy / (1 + 0.0585 N_rot)."""
        return self.inter_exact(x) / self.entropy


class StackedGrids:
    """The grid maps of several boxes for ONE ligand, stacked so that a single batch of poses is searched in all of
    them at once: blind docking's pockets. A search step's cost is mostly per-operation overhead, so six pockets' 96
    chains in one batch of 576 cost ~3x one pocket's (2 threads) where six batches cost 6x.

    Maps are padded to a common shape by repeating their last nodes, which leaves every box's trilinear values and
    gradients as they were (beyond a map's edge, as beyond any edge, the border value with zero gradient along the
    clamped axis)."""

    def __init__(self, functions: list[ScoringFunction]):
        first = functions[0]
        self.intra, self.atom_class, self.n_classes = first.intra, first.atom_class, len(first.classes)
        maps = [f.map for f in functions]
        shape = np.max([m.values.shape[1:] for m in maps], 0)
        padded = []
        for m in maps:
            px, py, pz = shape - np.array(m.values.shape[1:])
            padded.append(torch.nn.functional.pad(m.values[None], (0, pz, 0, py, 0, px), mode="replicate")[0])
        self.values = torch.cat(padded)  # (boxes x classes, X, Y, Z)
        self.lo = torch.stack([m.lo for m in maps])
        self.spacing = maps[0].spacing
        self.grid_lo = torch.stack([f.grid_lo for f in functions])
        self.grid_hi = torch.stack([f.grid_hi for f in functions])

    def rows(self, box: torch.Tensor) -> _BoxRows:
        """A scoring function for a batch whose row b is searched in box[b] (long); the search keeps row order."""
        return _BoxRows(self, box)


class _BoxRows:
    def __init__(self, stack: StackedGrids, box: torch.Tensor):
        self.intra = stack.intra
        self.map = GridMap(stack.values, stack.lo[box][:, None], stack.spacing)
        self.cls = box[:, None] * stack.n_classes + stack.atom_class
        self.grid_lo, self.grid_hi = stack.grid_lo[box][:, None], stack.grid_hi[box][:, None]

    def energy_and_gradient(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if exact:
            raise ValueError("stacked grid maps have no exact mode: polish each box with its own ScoringFunction")
        inter, g_inter = _grid_energy(self.map, self.cls, self.grid_lo, self.grid_hi, x)
        intra, g_intra = self.intra.energy_and_gradient(x)
        return inter + intra, g_inter + g_intra
