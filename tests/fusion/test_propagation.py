from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn import LGConv, LightGCN

from fusion.propagation import GraphPropagation

# 4 users x 5 items. Nodes: users 0..3, items 4..8.
# Degrees: users u0=2, u1=3, u2=1, u3=3; items i0=3, i1=2, i2=1, i3=2, i4=1.
INTERACTIONS = [(0, 0), (0, 1), (1, 0), (1, 2), (1, 3), (2, 1), (3, 0), (3, 3), (3, 4)]
U, N = 4, 5
# 1 / sqrt(d_u d_i), written out by hand from the degrees above.
HAND_WEIGHTS = {
    (0, 0): 1 / math.sqrt(2 * 3),
    (0, 1): 1 / 2,
    (1, 0): 1 / 3,
    (1, 2): 1 / math.sqrt(3),
    (1, 3): 1 / math.sqrt(3 * 2),
    (2, 1): 1 / math.sqrt(2),
    (3, 0): 1 / 3,
    (3, 3): 1 / math.sqrt(3 * 2),
    (3, 4): 1 / math.sqrt(3),
}
# Float64 throughout; the only rounding is in the last ulp of the square roots.
TOL = dict(rtol=0, atol=1e-12)


def toy_graph() -> torch.Tensor:
    ui = torch.tensor(INTERACTIONS).T  # [2, 9]
    ui = torch.stack([ui[0], ui[1] + U])  # items shifted after users
    return torch.cat([ui, ui.flip(0)], dim=1)  # [2, 18] both directions


def toy_features() -> torch.Tensor:
    # column 0: users 1..4, items 10..50; column 1: one-hot on item i4 (node 8)
    x = torch.zeros(U + N, 2, dtype=torch.float64)
    x[:, 0] = torch.tensor([1, 2, 3, 4, 10, 20, 30, 40, 50], dtype=torch.float64)
    x[8, 1] = 1.0
    return x


def hand_dense_adjacency() -> torch.Tensor:
    a = torch.zeros(U + N, U + N, dtype=torch.float64)
    for (u, i), w in HAND_WEIGHTS.items():
        a[u, U + i] = a[U + i, u] = w
    return a


def test_normalized_edge_weights_are_one_over_sqrt_degrees():
    ei = toy_graph()
    w = GraphPropagation(1).normalized_edge_weight(ei, U + N, dtype=torch.float64)
    expected = [
        HAND_WEIGHTS[(src, dst - U)] if src < U else HAND_WEIGHTS[(dst, src - U)]
        for src, dst in ei.T.tolist()
    ]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), **TOL)


def test_uniformly_weighted_graph_normalises_like_unweighted():
    ei = toy_graph()
    prop = GraphPropagation(1)
    plain = prop.normalized_edge_weight(ei, U + N, dtype=torch.float64)
    twos = torch.full((ei.size(1),), 2.0, dtype=torch.float64)
    # 2 / sqrt(2 d_u * 2 d_i) == 1 / sqrt(d_u d_i)
    torch.testing.assert_close(prop.normalized_edge_weight(ei, U + N, twos, torch.float64), plain, **TOL)


def test_one_step_on_hand_chosen_features():
    x = toy_features()
    s6, s3, s2 = math.sqrt(6), math.sqrt(3), math.sqrt(2)
    step = torch.tensor(
        [
            [10 / s6 + 20 / 2, 0],  # u0 <- i0, i1
            [10 / 3 + 30 / s3 + 40 / s6, 0],  # u1 <- i0, i2, i3
            [20 / s2, 0],  # u2 <- i1
            [10 / 3 + 40 / s6 + 50 / s3, 1 / s3],  # u3 <- i0, i3, i4
            [1 / s6 + 2 / 3 + 4 / 3, 0],  # i0 <- u0, u1, u3
            [1 / 2 + 3 / s2, 0],  # i1 <- u0, u2
            [2 / s3, 0],  # i2 <- u1
            [2 / s6 + 4 / s6, 0],  # i3 <- u1, u3
            [4 / s3, 0],  # i4 <- u3
        ],
        dtype=torch.float64,
    )
    out = GraphPropagation(num_layers=1)(x, toy_graph())
    torch.testing.assert_close(out, (x + step) / 2, **TOL)


def test_two_layer_mean_readout():
    x = toy_features()
    a = hand_dense_adjacency()
    out = GraphPropagation(num_layers=2)(x, toy_graph())
    torch.testing.assert_close(out, (x + a @ x + a @ a @ x) / 3, **TOL)
    # one entry fully by hand: item i2 (node 6) only hears from u1 (weight 1/sqrt 3)
    s6, s3 = math.sqrt(6), math.sqrt(3)
    u1_step1 = 10 / 3 + 30 / s3 + 40 / s6
    i2 = (30 + 2 / s3 + u1_step1 / s3) / 3
    assert out[6, 0].item() == pytest.approx(i2, abs=1e-12)


def test_matches_lgconv_normalize_true_and_pyg_lightgcn():
    torch.manual_seed(0)
    ei = toy_graph()
    x = torch.randn(U + N, 8, dtype=torch.float64)
    conv = LGConv(normalize=True)
    layers = [x]
    for _ in range(3):
        layers.append(conv(layers[-1], ei))
    ours = GraphPropagation(3)(x, ei)
    torch.testing.assert_close(ours, torch.stack(layers).mean(0), **TOL)

    ref = LightGCN(U + N, 8, num_layers=3).double()
    with torch.no_grad():
        ref.embedding.weight.copy_(x)
    torch.testing.assert_close(ours, ref.get_embedding(ei), **TOL)


def test_isolated_node_keeps_only_its_layer_zero_share():
    ei = toy_graph()
    x = torch.randn(U + N + 1, 3, dtype=torch.float64)  # node 9 has no edge
    out = GraphPropagation(num_layers=3)(x, ei)
    torch.testing.assert_close(out[9], x[9] / 4, **TOL)


def test_zero_layers_is_identity():
    x = toy_features()
    assert torch.equal(GraphPropagation(0)(x, toy_graph()), x)


def test_normalisation_is_cached_per_graph():
    ei = toy_graph()
    prop = GraphPropagation(2)
    w1 = prop.normalized_edge_weight(ei, U + N)
    assert prop.normalized_edge_weight(ei, U + N) is w1
    prop(toy_features().float(), ei)
    assert prop.normalized_edge_weight(ei, U + N) is w1  # forward reused it

    other = ei.clone()
    w2 = prop.normalized_edge_weight(other, U + N)
    assert w2 is not w1 and torch.equal(w2, w1)
    assert prop.normalized_edge_weight(other, U + N, dtype=torch.float64) is not w2
    assert prop.normalized_edge_weight(other, U + N + 1) is not w2

    # an in-place edit of the cached graph is noticed: re-point edge u2-i1 (both directions,
    # columns 5 and 14) to u0-i2, which leaves a different symmetric graph
    g = toy_graph()
    before = prop.normalized_edge_weight(g, U + N, dtype=torch.float64)
    g[:, 5] = torch.tensor([0, U + 2])
    g[:, 14] = torch.tensor([U + 2, 0])
    after = prop.normalized_edge_weight(g, U + N, dtype=torch.float64)
    assert after is not before
    # u0 now has degree 3 and i2 degree 2: weight 1/sqrt(6)
    assert after[5].item() == pytest.approx(1 / math.sqrt(6), abs=1e-12)

    prop.reset_parameters()
    assert prop.normalized_edge_weight(g, U + N, dtype=torch.float64) is not after


def test_learnable_edge_weights_are_not_cached_and_get_gradients():
    ei = toy_graph()
    ew = torch.ones(ei.size(1), dtype=torch.float64, requires_grad=True)
    prop = GraphPropagation(2)
    assert prop.normalized_edge_weight(ei, U + N, ew, torch.float64) is not prop.normalized_edge_weight(
        ei, U + N, ew, torch.float64
    )
    prop(toy_features(), ei, ew).pow(2).sum().backward()
    assert ew.grad is not None and ew.grad.abs().sum() > 0


def test_gradient_flows_to_input():
    x = toy_features().requires_grad_()
    GraphPropagation(2)(x, toy_graph()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_one_directional_graph_is_rejected():
    ei = toy_graph()[:, :9]  # user -> item only
    with pytest.raises(ValueError, match="not symmetric.*both directions"):
        GraphPropagation(2)(toy_features(), ei)


def test_node_id_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"node ids in \[0, 8\] but x has 8 rows"):
        GraphPropagation(1)(toy_features()[:8], toy_graph())


def test_bad_edge_index_shape_and_weight_shape_are_rejected():
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        GraphPropagation(1)(toy_features(), toy_graph().T)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[18\]"):
        GraphPropagation(1)(toy_features(), toy_graph(), torch.ones(17, dtype=torch.float64))


def test_negative_layers_rejected_and_repr():
    with pytest.raises(ValueError, match="num_layers must be >= 0"):
        GraphPropagation(-1)
    assert repr(GraphPropagation(3)) == "GraphPropagation(num_layers=3)"
    assert list(GraphPropagation(3).parameters()) == []


# ------------------------------------------------------------------ sparse adjacency path
def random_graph(num_users: int, num_items: int, num_edges: int, seed: int) -> torch.Tensor:
    """Both directions of ``num_edges`` random user-item pairs (duplicates kept: they must add up)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, num_users, (num_edges,), generator=g)
    i = torch.randint(0, num_items, (num_edges,), generator=g) + num_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])  # [2, 2E]


def lgconv_oracle(x: torch.Tensor, ei: torch.Tensor, ew: torch.Tensor | None, layers: int) -> torch.Tensor:
    """PyG's own message passing, renormalising in every layer: the path this module replaces."""
    conv = LGConv(normalize=True)
    xs = [x]
    for _ in range(layers):
        xs.append(conv(xs[-1], ei, ew))
    return torch.stack(xs).mean(0)


def test_normalized_adjacency_is_the_hand_computed_matrix_and_cached():
    ei = toy_graph()
    prop = GraphPropagation(2)
    adj = prop.normalized_adjacency(ei, U + N, dtype=torch.float64)
    assert adj.layout == torch.sparse_csr and adj.shape == (U + N, U + N) and adj.dtype == torch.float64
    torch.testing.assert_close(adj.to_dense(), hand_dense_adjacency(), **TOL)
    assert prop.normalized_adjacency(ei, U + N, dtype=torch.float64) is adj
    prop(toy_features(), ei)
    assert prop.normalized_adjacency(ei, U + N, dtype=torch.float64) is adj  # forward reused it
    # the symmetric graph keeps a single matrix for the forward and the backward product
    assert prop._adjacency(ei, U + N, None, torch.float64)[1] is adj

    g = toy_graph()
    before = prop.normalized_adjacency(g, U + N, dtype=torch.float64)
    g[:, 5] = torch.tensor([0, U + 2])  # re-point u2-i1 to u0-i2, both directions
    g[:, 14] = torch.tensor([U + 2, 0])
    after = prop.normalized_adjacency(g, U + N, dtype=torch.float64)
    assert after is not before
    assert after.to_dense()[U + 2, 0].item() == pytest.approx(1 / math.sqrt(6), abs=1e-12)
    assert after.to_dense()[U + 1, 2].item() == 0.0
    prop.clear_cache()
    assert prop.normalized_adjacency(g, U + N, dtype=torch.float64) is not after


@pytest.mark.parametrize("weights", ["none", "symmetric", "asymmetric"])
def test_sparse_path_equals_edge_index_message_passing(weights):
    num_users, num_items = 37, 23
    ei = random_graph(num_users, num_items, 160, seed=1)
    n = num_users + num_items + 2  # two isolated item nodes at the end
    half = ei.size(1) // 2
    g = torch.Generator().manual_seed(2)
    ew = None
    if weights == "symmetric":
        w = torch.rand(half, generator=g, dtype=torch.float64) + 0.5
        ew = torch.cat([w, w])
    elif weights == "asymmetric":  # the transpose differs: the backward must use it
        ew = torch.rand(2 * half, generator=g, dtype=torch.float64) + 0.5
    x = torch.randn(n, 16, generator=g, dtype=torch.float64)
    up = torch.randn(n, 16, generator=g, dtype=torch.float64)  # upstream gradient

    prop = GraphPropagation(3)
    assert prop._use_sparse(x, ew)
    x1 = x.clone().requires_grad_()
    ours = prop(x1, ei, ew)
    (ours * up).sum().backward()
    adj_t, adj = prop._adjacency(ei, n, ew, torch.float64)
    if weights == "none":  # exactly symmetric: one shared matrix
        assert adj is adj_t
    elif weights == "asymmetric":
        assert adj is not adj_t
    # ("symmetric" weights may differ from their reverse in the last ulp after normalisation:
    # either outcome is exact, as the comparison below checks)

    x2 = x.clone().requires_grad_()
    ref = lgconv_oracle(x2, ei, ew, 3)
    (ref * up).sum().backward()
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    torch.testing.assert_close(ours[-2:], x[-2:] / 4, **TOL)

    # the same module on weights that require grad takes the edge_index path: same values
    if ew is not None:
        ew_grad = ew.clone().requires_grad_()
        x3 = x.clone().requires_grad_()
        assert not prop._use_sparse(x3, ew_grad)
        fallback = prop(x3, ei, ew_grad)
        (fallback * up).sum().backward()
        torch.testing.assert_close(fallback, ours, **TOL)
        torch.testing.assert_close(x3.grad, x1.grad, **TOL)


def test_sparse_path_matches_dense_oracle_in_float32_and_under_no_grad():
    ei = random_graph(50, 40, 300, seed=3)
    x = torch.randn(90, 8, generator=torch.Generator().manual_seed(4))
    prop = GraphPropagation(2)
    a = prop.normalized_adjacency(ei, 90, dtype=torch.float64).to_dense()
    xd = x.double()
    dense = (xd + a @ xd + a @ a @ xd) / 3
    with torch.no_grad():
        out = prop(x, ei)
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out.double(), dense, rtol=1e-5, atol=1e-6)


def test_half_precision_takes_the_message_passing_path():
    ei = toy_graph()
    x = toy_features()
    prop = GraphPropagation(2)
    assert not prop._use_sparse(x.bfloat16(), None)
    out = prop(x.bfloat16(), ei)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), prop(x, ei), rtol=2e-2, atol=0.0)


def test_empty_graph_leaves_only_layer_zero():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = GraphPropagation(3)(x, torch.empty(2, 0, dtype=torch.long))
    torch.testing.assert_close(out, x / 4, **TOL)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.25), **TOL)


def test_normalized_adjacency_rejects_weights_that_require_grad():
    ei = toy_graph()
    ew = torch.ones(ei.size(1), requires_grad=True)
    with pytest.raises(ValueError, match="edge_weight that requires grad.*over edge_index"):
        GraphPropagation(1).normalized_adjacency(ei, U + N, ew)
