import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from sciddiff.nn import graph
from sciddiff.nn.graph import knn, knn_graph, radius, radius_graph, segment_mean, segment_softmax


def _cloud(n, seed, dtype=torch.float64, box=10.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=dtype) * box


def _edges(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


def _ref_radius(x, y, r, bx=None, by=None, k=None):
    """(y index, x index) pairs from cKDTree, example by example; k = keep the k nearest within r."""
    x, y = x.numpy(), y.numpy()
    bx = np.zeros(len(x), int) if bx is None else bx.numpy()
    by = np.zeros(len(y), int) if by is None else by.numpy()
    out = set()
    for b in np.unique(by):
        ix, iy = np.flatnonzero(bx == b), np.flatnonzero(by == b)
        if len(ix) == 0:
            continue
        tree = cKDTree(x[ix])
        if k is None:
            for i, nbrs in zip(iy, tree.query_ball_point(y[iy], r)):
                out |= {(int(i), int(ix[j])) for j in nbrs}
        else:
            dist, idx = tree.query(y[iy], k=min(k, len(ix)), distance_upper_bound=r)
            dist, idx = dist.reshape(len(iy), -1), idx.reshape(len(iy), -1)
            for i, d_row, j_row in zip(iy, dist, idx):
                out |= {(int(i), int(ix[j])) for d, j in zip(d_row, j_row) if np.isfinite(d)}
    return out


def _ref_graph(pos, r, batch=None, loop=False, k=None):
    """radius_graph reference: (source j, target i); self loops handled like PyG (count towards k when loop=True)."""
    if loop:
        pairs = _ref_radius(pos, pos, r, batch, batch, k)
    else:
        pairs = _ref_radius(pos, pos, r, batch, batch, None if k is None else k + 1)
        pairs = {(i, j) for i, j in pairs if i != j}  # the k+1 nearest include self: dropping it leaves the k nearest others
    return {(j, i) for i, j in pairs}


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request, monkeypatch):
    if request.param:  # force tiny chunks: rows split within an example and examples grouped across chunks
        monkeypatch.setattr(graph, "_max_pairs", lambda device: 500)
    return request.param


@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_matches_ckdtree(chunking, loop):
    pos = _cloud(700, 0)
    ei = radius_graph(pos, 1.2, loop=loop)
    assert ei.dtype == torch.long and ei.shape[0] == 2
    ref = _ref_graph(pos, 1.2, loop=loop)
    assert len(ref) > 3000
    assert _edges(ei) == ref
    # Sorted by centre (row 1), and symmetric as a radius graph must be.
    assert torch.all(ei[1, 1:] >= ei[1, :-1])
    assert _edges(ei.flip(0)) == _edges(ei)


def test_radius_graph_batched_unsorted(chunking):
    pos = _cloud(600, 1)
    g = torch.Generator().manual_seed(2)
    batch = torch.randint(0, 5, (600,), generator=g)  # deliberately not sorted; example 5 of 6 empty below
    batch[batch == 3] = 5
    ei = radius_graph(pos, 1.5, batch=batch)
    ref = _ref_graph(pos, 1.5, batch)
    assert _edges(ei) == ref
    assert torch.all(batch[ei[0]] == batch[ei[1]])


@pytest.mark.parametrize("k", [1, 6])
def test_radius_graph_max_num_neighbors_keeps_nearest(chunking, k):
    pos = _cloud(500, 3)
    batch = torch.arange(500) // 170
    ei = radius_graph(pos, 2.0, batch=batch, max_num_neighbors=k)
    assert _edges(ei) == _ref_graph(pos, 2.0, batch, k=k)
    counts = torch.bincount(ei[1], minlength=500)
    assert counts.max() == k
    # Nearest first within each centre.
    d = (pos[ei[0]] - pos[ei[1]]).norm(dim=1)
    same = ei[1, 1:] == ei[1, :-1]
    assert torch.all(d[1:][same] >= d[:-1][same])
    loops = radius_graph(pos, 2.0, batch=batch, loop=True, max_num_neighbors=k)
    assert _edges(loops) == _ref_graph(pos, 2.0, batch, loop=True, k=k)
    assert (loops[0] == loops[1]).sum() == 500  # self is nearest, so always kept


def test_radius_bipartite_matches_ckdtree(chunking):
    x, y = _cloud(800, 4), _cloud(300, 5)
    bx, by = torch.arange(800) % 3, torch.arange(300) % 4  # example 3 has queries but no points
    ei = radius(x, y, 1.3, bx, by)
    assert _edges(ei) == _ref_radius(x, y, 1.3, bx, by)
    assert torch.all(by[ei[0]] == bx[ei[1]])
    capped = radius(x, y, 1.3, bx, by, max_num_neighbors=4)
    assert _edges(capped) == _ref_radius(x, y, 1.3, bx, by, k=4)


def test_knn_graph_matches_ckdtree(chunking):
    pos = _cloud(500, 6)
    batch = torch.cat([torch.zeros(300), torch.ones(195), 2 * torch.ones(5)]).long()  # last example smaller than k
    ei = knn_graph(pos, 8, batch=batch)
    ref = set()
    for b in range(3):
        idx = torch.nonzero(batch == b).flatten().numpy()
        _, nn_ = cKDTree(pos[idx].numpy()).query(pos[idx].numpy(), k=min(9, len(idx)))
        ref |= {(int(idx[j]), int(idx[i])) for i, row in enumerate(nn_) for j in row if j != i}
    assert _edges(ei) == ref
    counts = torch.bincount(ei[1], minlength=500)
    assert counts[:495].eq(8).all() and counts[495:].eq(4).all()
    with_loops = knn_graph(pos, 8, batch=batch, loop=True)
    assert (with_loops[0] == with_loops[1]).sum() == 500


def test_chunking_fixture_really_splits(chunking, monkeypatch):
    calls = []
    cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b, **kw: calls.append(1) or cdist(a, b, **kw))
    knn_graph(_cloud(300, 10), 4, batch=torch.arange(300) // 100)
    assert (len(calls) > 50) == chunking


def test_knn_bipartite(chunking):
    x, y = _cloud(400, 7), _cloud(50, 8)
    ei = knn(x, y, 5)
    _, idx = cKDTree(x.numpy()).query(y.numpy(), k=5)
    assert _edges(ei) == {(i, int(j)) for i, row in enumerate(idx) for j in row}


def test_float32_and_50k_cloud_bounded_memory(monkeypatch):
    """50k points (float32): exact against cKDTree, chunked (never a 50k x 50k matrix)."""
    pos = _cloud(50_000, 9, dtype=torch.float32, box=60.0)
    blocks = []
    cdist = torch.cdist

    def spy(a, b, **kw):
        blocks.append(a.shape[0] * b.shape[0])
        return cdist(a, b, **kw)

    monkeypatch.setattr(torch, "cdist", spy)
    ei = radius_graph(pos, 2.5)
    assert len(blocks) > 10 and max(blocks) <= 1 << 22  # <= 16 MB of distances at a time
    assert sum(blocks) < 0.2 * 50_000**2  # the sorted slab scans a fraction of all pairs
    pairs = cKDTree(pos.double().numpy()).query_pairs(2.5, output_type="ndarray")
    assert ei.shape[1] == 2 * len(pairs)
    key = lambda a, b: np.sort(a * 50_000 + b)  # noqa: E731
    ref = key(np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]]))
    assert np.array_equal(key(ei[0].numpy(), ei[1].numpy()), ref)


def test_empty_and_invalid_inputs():
    assert radius_graph(torch.zeros(0, 3), 1.0).shape == (2, 0)
    assert radius_graph(torch.zeros(1, 3), 1.0).shape == (2, 0)
    assert knn_graph(torch.zeros(1, 3), 3).shape == (2, 0)
    with pytest.raises(ValueError):
        radius_graph(torch.zeros(5), 1.0)
    with pytest.raises(ValueError):
        knn_graph(torch.zeros(5, 3), 0)
    with pytest.raises(ValueError):
        radius_graph(torch.zeros(5, 3), 1.0, batch=torch.zeros(4, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pos = _cloud(3000, 11, dtype=torch.float32, box=30.0)
    batch = torch.arange(3000) // 700
    for fn in (lambda p, b: radius_graph(p, 2.0, b), lambda p, b: radius_graph(p, 2.0, b, max_num_neighbors=5),
               lambda p, b: knn_graph(p, 6, b)):
        assert _edges(fn(pos.cuda(), batch.cuda()).cpu()) == _edges(fn(pos, batch))  # sets: FMA may reorder ties


def test_segment_mean_matches_per_group_means_and_is_differentiable():
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(12, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.tensor([0, 2, 2, 0, 4, 4, 4, 0, 2, 4, 0, 2])
    out = segment_mean(src, index, 6)
    for g in range(6):
        rows = src[index == g]
        assert torch.allclose(out[g], rows.mean(0) if len(rows) else torch.zeros(3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda s: segment_mean(s, index, 6), (src,))


def test_segment_softmax_and_mean_match_torch_geometric():
    from torch_geometric.utils import scatter
    from torch_geometric.utils import softmax as pyg_softmax

    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 7, (50,), generator=g)  # node 6 may get no rows: zeros like PyG's
    src = 30 * torch.randn(50, 4, generator=g)  # spreads of > 80 within a node: floored weights
    assert torch.allclose(segment_softmax(src, index, 8), pyg_softmax(src, index, num_nodes=8), atol=1e-30, rtol=1e-6)
    assert torch.allclose(segment_softmax(src, index, 8).new_zeros(8, 4).index_add_(0, index, segment_softmax(src, index, 8)),
                          torch.bincount(index, minlength=8).clamp_max(1).float()[:, None].expand(8, 4), atol=1e-6)
    assert torch.equal(segment_mean(src, index, 8), scatter(src, index, dim=0, dim_size=8, reduce="mean"))
