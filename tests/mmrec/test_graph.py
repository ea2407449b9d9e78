from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from mmrec.graph import build_edge_index, gcn_norm_weights, interaction_graph, normalized_adjacency, prune_edges
from mmrec.interactions import Interactions

# 4 users x 5 items; (1, 2) is given twice. Degrees: users [2, 3, 1, 3], items [2, 3, 1, 2, 1].
USERS = np.array([3, 0, 1, 1, 2, 3, 0, 1, 3, 1])
ITEMS = np.array([4, 0, 1, 2, 3, 0, 1, 3, 1, 2])
U, N = 4, 5
# Distinct pairs sorted by (user, item), with 1 / sqrt(d_u d_i).
PAIRS = [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3), (2, 3), (3, 0), (3, 1), (3, 4)]
S2, S3, S6 = math.sqrt(2), math.sqrt(3), math.sqrt(6)
WEIGHTS = [1 / 2, 1 / S6, 1 / 3, 1 / S3, 1 / S6, 1 / S2, 1 / S6, 1 / 3, 1 / S3]


def test_edge_index_exact() -> None:
    edge_index = build_edge_index(USERS, ITEMS, U, num_items=N)
    assert edge_index.dtype == torch.int64
    src = [u for u, _ in PAIRS] + [U + i for _, i in PAIRS]
    dst = [U + i for _, i in PAIRS] + [u for u, _ in PAIRS]
    assert edge_index.tolist() == [src, dst]
    assert edge_index.tolist()[0][:9] == [0, 0, 1, 1, 1, 2, 3, 3, 3]
    assert edge_index.tolist()[1][:9] == [4, 5, 5, 6, 7, 7, 4, 5, 8]


def test_normalised_weights_exact_and_match_torch_geometric() -> None:
    edge_index = build_edge_index(USERS, ITEMS, U)
    w = gcn_norm_weights(edge_index, U + N)
    expected = torch.tensor(WEIGHTS + WEIGHTS, dtype=torch.float32)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
    _, pyg = gcn_norm(edge_index, None, U + N, add_self_loops=False)
    torch.testing.assert_close(w, pyg, rtol=0, atol=1e-7)


def test_normalized_adjacency_equals_dense_formula() -> None:
    edge_index = build_edge_index(USERS, ITEMS, U)
    n = U + N + 2  # two cold items without edges
    a = torch.zeros(n, n)
    a[edge_index[0], edge_index[1]] = 1.0
    d = a.sum(1)
    d_inv_sqrt = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    dense = d_inv_sqrt[:, None] * a * d_inv_sqrt[None, :]
    adj = normalized_adjacency(edge_index, n)
    assert adj.layout == torch.sparse_coo and adj.is_coalesced() and adj.shape == (n, n)
    torch.testing.assert_close(adj.to_dense(), dense, rtol=0, atol=1e-7)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.sparse.mm(adj, x), dense @ x, rtol=1e-6, atol=1e-6)


def test_interaction_graph_uses_the_train_split_only() -> None:
    inter = Interactions(
        user_ids=[10, 11],
        item_ids=["a", "b", "c"],
        users=np.array([0, 0, 1, 1]),
        items=np.array([0, 1, 1, 2]),
        split=np.array([0, 2, 0, 1]),
    )
    assert interaction_graph(inter).tolist() == [[0, 1, 2, 3], [2, 3, 0, 1]]
    assert interaction_graph(inter, "all").shape == (2, 8)


def test_build_edge_index_errors() -> None:
    with pytest.raises(ValueError, match=r"user indices must lie in \[0, 3\)"):
        build_edge_index(USERS, ITEMS, 3)
    with pytest.raises(ValueError, match=r"item indices must lie in \[0, 4\)"):
        build_edge_index(USERS, ITEMS, U, num_items=4)
    with pytest.raises(ValueError, match="1-D of one length"):
        build_edge_index(USERS, ITEMS[:3], U)
    assert build_edge_index(np.array([], dtype=np.int64), np.array([], dtype=np.int64), U).shape == (2, 0)


def test_prune_edges_keeps_whole_edges_in_order() -> None:
    edge_index = build_edge_index(USERS, ITEMS, U)
    assert prune_edges(edge_index, U + N, 0.0, np.random.default_rng(0)) is edge_index
    kept = prune_edges(edge_index, U + N, 0.34, np.random.default_rng(0))
    assert kept.shape == (2, 2 * 6)  # 9 edges, round(0.34 * 9) = 3 dropped
    half = kept[:, :6]
    assert torch.equal(kept[:, 6:], half.flip(0))  # each kept edge in both directions
    pairs = [(int(u), int(i) - U) for u, i in half.T]
    assert pairs == sorted(pairs) and set(pairs) <= set(PAIRS)  # original order, original edges
    again = prune_edges(edge_index, U + N, 0.34, np.random.default_rng(0))
    assert torch.equal(kept, again)  # the generator decides
    assert prune_edges(edge_index, U + N, 0.99, np.random.default_rng(0)).shape == (2, 0)


def test_prune_edges_samples_in_proportion_to_inverse_sqrt_degree() -> None:
    # Edges (u0, i0), (u1, i0), (u1, i1); degrees u0 1, u1 2, i0 2, i1 1: weights 1/sqrt(2),
    # 1/2, 1/sqrt(2). Keeping one edge, the hub edge (u1, i0) stays with probability
    # 0.5 / (0.5 + 2 / sqrt(2)) = 0.2612.
    edge_index = build_edge_index(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    rng = np.random.default_rng(0)
    draws = 4000
    hub = sum(
        prune_edges(edge_index, 4, 2 / 3, rng)[:, 0].tolist() == [1, 2] for _ in range(draws)
    )
    expected = 0.5 / (0.5 + 2 / math.sqrt(2))
    assert abs(hub / draws - expected) < 3 * math.sqrt(expected * (1 - expected) / draws)


def test_prune_edges_errors() -> None:
    edge_index = build_edge_index(USERS, ITEMS, U)
    with pytest.raises(ValueError, match="drop must lie"):
        prune_edges(edge_index, U + N, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="every edge twice"):
        prune_edges(edge_index[:, :3], U + N, 0.5, np.random.default_rng(0))
