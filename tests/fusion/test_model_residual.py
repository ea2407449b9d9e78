"""FusedGraphModel with id_mode="residual": x0 = fuse(content tokens) + e_id."""
from __future__ import annotations

import pytest
import torch

from fusion.model import FusedGraphModel


def model(**kw) -> FusedGraphModel:
    torch.manual_seed(0)
    return FusedGraphModel(3, 5, {"text": 6, "image": 4}, dim=8, num_layers=2, num_heads=2, id_mode="residual", **kw)


def inputs():
    g = torch.Generator().manual_seed(1)
    feats = {"text": torch.randn(5, 6, generator=g), "image": torch.randn(5, 4, generator=g)}
    present = {"text": torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool),
               "image": torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)}  # item 4: no content
    return feats, present


def test_residual_is_content_fusion_plus_id_embedding():
    m = model().eval()
    feats, present = inputs()
    ids = torch.tensor([0, 1, 2, -1, 4])  # item 3 has no ID (cold)
    x0, w = m.item_content(feats, present, ids)
    with torch.no_grad():
        tokens = torch.stack([m.projections["text"](feats["text"]), m.projections["image"](feats["image"])], 1)
        mask = torch.stack([present["text"], present["image"]], 1)
        rows = [0, 1, 2, 3]
        fused, fw = m.fusion(tokens[rows], mask[rows])  # [4, 8], [4, 2]
        e = m.item_embedding.weight.detach()
    x0, w = x0.detach(), w.detach()
    torch.testing.assert_close(x0[[0, 1, 2]], fused[:3] + e[[0, 1, 2]])
    torch.testing.assert_close(x0[3], fused[3])  # no ID: content alone
    torch.testing.assert_close(x0[4], e[4])  # no content: the ID alone
    assert w[3, 2] == 0.0 and w[4].tolist() == [0.0, 0.0, 1.0]
    assert w[0, 2] == pytest.approx(float(e[0].norm() / (e[0].norm() + fused[0].norm())), rel=1e-5)
    torch.testing.assert_close(w[:3, :2], fw[:3] * (1 - w[:3, 2:]))
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    assert w[1, 1] == 0.0 and w[2, 0] == 0.0  # missing modalities get exactly zero


def test_content_only_path_and_repr():
    m = model().eval()
    feats, present = inputs()
    rows = [0, 1, 2, 3]
    c = m.content_only({k: v[rows] for k, v in feats.items()}, {k: v[rows] for k, v in present.items()})
    x0, _ = m.item_content(feats, present, torch.tensor([-1, -1, -1, -1, 4]))
    torch.testing.assert_close(c.detach(), x0.detach()[rows])
    assert repr(m).endswith("dropout=0.0, id_mode='residual')")
    with pytest.raises(ValueError, match="id_mode must be"):
        FusedGraphModel(3, 5, {"text": 6}, dim=8, id_mode="sum")


def test_full_graph_forward_and_gradients():
    m = model(id_dropout=0.5, modality_dropout=0.5).train()
    feats, present = inputs()
    present = {k: torch.ones(5, dtype=torch.bool) for k in present}
    edge = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 0, 1, 2]])  # users 0..2 <-> items 0..2 (nodes 3..5)
    u, i, w = m(feats, present, edge)
    assert u.shape == (3, 8) and i.shape == (5, 8) and w.shape == (5, 3)
    (u.sum() + i.sum()).backward()
    assert m.item_embedding.weight.grad is not None and all(p.grad is not None for p in m.projections["text"].parameters())
