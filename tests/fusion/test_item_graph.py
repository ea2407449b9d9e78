from __future__ import annotations

import pytest
import torch

from fusion.item_graph import knn_item_graph
from fusion.model import FusedGraphModel

# Modality a: items 0-3 (4 lacks it); 0 ~ 1 and 2 ~ 3 by cosine. Modality b: items 0 and 4.
A = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [float("nan"), 5.0]])
B = torch.tensor([[1.0, 0.0], [9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [1.0, 0.1]])
PRESENT = {"a": torch.tensor([1, 1, 1, 1, 0]).bool(), "b": torch.tensor([1, 0, 0, 0, 1]).bool()}


def test_hand_built_knn_graph_exact_values():
    g = knn_item_graph({"a": A, "b": B}, PRESENT, k=2)
    # Row i: mean over i's modalities of (1/k) on its k nearest (itself first).
    expected = torch.tensor([
        [0.5, 0.25, 0.0, 0.0, 0.25],  # a: {0, 1}, b: {0, 4}; two modalities -> 1/4 each
        [0.5, 0.5, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.5, 0.5, 0.0],
        [0.0, 0.0, 0.5, 0.5, 0.0],
        [0.5, 0.0, 0.0, 0.0, 0.5],  # b only
    ])
    torch.testing.assert_close(g.dense(), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(g.transpose.to_dense(), expected.T, rtol=0, atol=1e-7)
    assert g.k == 2 and g.num_items == 5


def test_nodes_outside_take_no_part_and_k_caps_at_the_members():
    g = knn_item_graph({"a": A}, {"a": PRESENT["a"]}, k=2, nodes=torch.tensor([1, 1, 1, 0, 1]).bool())
    d = g.dense()
    assert torch.equal(d[3], torch.zeros(5)) and torch.equal(d[:, 3], torch.zeros(5))  # held out
    assert torch.equal(d[4], torch.zeros(5))  # no modality
    # Item 2's nearest other member is now item 1 (cos 0.11) rather than item 0 (cos 0).
    torch.testing.assert_close(d[2], torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0]))
    whole = knn_item_graph({"a": A[:4]}, k=10).dense()  # k above the 4 members: each row is 1/4
    torch.testing.assert_close(whole, torch.full((4, 4), 0.25))


def test_blocks_give_the_same_graph_and_bad_input_raises():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 6, generator=g)
    torch.testing.assert_close(knn_item_graph({"x": x}, k=5, block_size=4).dense(),
                               knn_item_graph({"x": x}, k=5).dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one modality"):
        knn_item_graph({}, k=2)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_item_graph({"x": x}, k=0)
    with pytest.raises(ValueError, match="disagree on the number of items"):
        knn_item_graph({"x": x, "y": x[:3]}, k=2)


def test_model_adds_the_graph_average_of_layer0_vectors_with_gradients():
    torch.manual_seed(0)
    model = FusedGraphModel(2, 5, {"a": 2, "b": 2}, dim=4, num_layers=1, num_heads=2, id_mode="residual").double().eval()
    feats = {"a": A.double(), "b": B.double()}
    edges = torch.tensor([[0, 0, 1], [2, 3, 6]])
    edges = torch.cat([edges, edges.flip(0)], dim=1)
    graph = knn_item_graph(feats, PRESENT, k=2)
    users0, items0, _ = model(feats, PRESENT, edges)
    users1, items1, _ = model(feats, PRESENT, edges, item_graph=graph)
    x0, _ = model.item_content(feats, PRESENT, torch.arange(5))
    torch.testing.assert_close(users1, users0)
    torch.testing.assert_close(items1, items0 + graph.dense().double() @ x0)
    # Gradients through the sparse product equal the dense product's.
    w = torch.randn(5, 4, dtype=torch.float64)
    (items1 * w).sum().backward()
    sparse_grad = model.item_embedding.weight.grad.clone()
    model.zero_grad()
    x0, _ = model.item_content(feats, PRESENT, torch.arange(5))
    (((graph.dense().double() @ x0) + model(feats, PRESENT, edges)[1]) * w).sum().backward()
    torch.testing.assert_close(model.item_embedding.weight.grad, sparse_grad)
    with pytest.raises(ValueError, match="covers 4 items, the model 5"):
        model(feats, PRESENT, edges, item_graph=knn_item_graph({"a": A[:4]}, k=2))
