"""Item-item graph from content: each item's k nearest neighbours by feature cosine.

Multimodal recommenders that beat LightGCN on sparse data (LATTICE, Zhang et al., MM 2021;
FREEDOM, Zhou & Shen, MM 2023) add an item-item graph built from the frozen content features:
an item with few interactions then borrows from the items that look or sound like it. Here the
graph is fixed (built once from the features, as FREEDOM freezes it) and row-stochastic:

``S[i, j] = (1 / M_i) * sum_m [j in kNN_m(i)] / k_m``

where ``kNN_m(i)`` are the ``k`` items closest to ``i`` by cosine of modality ``m``'s features
(``i`` itself included, as in FREEDOM: it is its own nearest neighbour), among the items that
have that modality; ``M_i`` is the number of modalities ``i`` has and ``k_m = min(k, items
with m)``. ``S @ x`` is then, per item, the mean over its modalities of the mean vector of its
content neighbours. :class:`~fusion.model.FusedGraphModel` adds ``S @ x0`` (layer-0 item vectors)
to the propagated item vectors.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.propagation import _csr, _SparseMatmul


@dataclass(frozen=True)
class ItemGraph:
    """A fixed sparse ``[N, N]`` item-item matrix and its transpose (for the backward pass).

    Build it with :func:`knn_item_graph`. ``graph @ x`` multiplies with gradients to ``x``.

    Shapes:
        x (N, D) -> (N, D)
    """

    matrix: Tensor  # [N, N] CSR
    transpose: Tensor  # [N, N] CSR
    k: int

    @property
    def num_items(self) -> int:
        return int(self.matrix.size(0))

    def __matmul__(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(0) != self.num_items:
            raise ValueError(f"ItemGraph over {self.num_items} items cannot multiply a tensor of shape {list(x.shape)}")
        if x.dtype != self.matrix.dtype:
            return _SparseMatmul.apply(self.matrix.to(x.dtype), self.transpose.to(x.dtype), x)  # [N, D]
        return _SparseMatmul.apply(self.matrix, self.transpose, x)  # [N, D]

    def to(self, device: torch.device | str) -> "ItemGraph":
        return ItemGraph(self.matrix.to(device), self.transpose.to(device), self.k)

    def dense(self) -> Tensor:
        """The matrix as a dense ``[N, N]`` tensor (for tests and inspection)."""
        return self.matrix.to_dense()


def knn_item_graph(
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    k: int = 10,
    nodes: Tensor | None = None,
    block_size: int = 2048,
) -> ItemGraph:
    """The row-stochastic content kNN graph of the module docstring.

    Cosine similarities are computed ``block_size`` rows at a time (memory ``block_size x N``
    per modality, time ``O(N^2 D)``: seconds for tens of thousands of items on a CPU).

    Args:
        features: modality -> ``[N, D_m]`` features (rows of absent items are ignored).
        present: modality -> ``[N]`` bool, ``True`` where the item has the modality; default
            all present.
        k: neighbours per item and modality (the item itself included), ``>= 1``.
        nodes: ``[N]`` bool, the items that take part (e.g. not the cold-start items held out
            of training); an item outside it has an all-zero row and is nobody's neighbour.
            Default all.
        block_size: rows per similarity block.

    Returns:
        The graph; rows of items with no modality (or outside ``nodes``) are zero.

    Raises:
        ValueError: no modality, ``k < 1``, or features / masks of different lengths.

    Shapes:
        features[m] (N, D_m), present[m] (N,), nodes (N,) -> ItemGraph (N, N)
    """
    if not features:
        raise ValueError("knn_item_graph needs at least one modality")
    if k < 1 or block_size < 1:
        raise ValueError(f"knn_item_graph needs k >= 1 and block_size >= 1, got k={k}, block_size={block_size}")
    sizes = {name: int(x.size(0)) for name, x in features.items()}
    n = next(iter(sizes.values()))
    if len(set(sizes.values())) != 1:
        raise ValueError(f"features disagree on the number of items: {sizes}")
    present = present or {}
    device = next(iter(features.values())).device
    keep = torch.ones(n, dtype=torch.bool, device=device) if nodes is None else nodes.to(device).bool()
    if keep.shape != (n,):
        raise ValueError(f"nodes must have shape [{n}], got {list(keep.shape)}")
    members = {}
    for name in features:
        has = present.get(name)
        has = torch.ones(n, dtype=torch.bool, device=device) if has is None else has.to(device).bool()
        if has.shape != (n,):
            raise ValueError(f"present['{name}'] must have shape [{n}], got {list(has.shape)}")
        members[name] = (has & keep).nonzero().flatten()  # [n_m]
    count = torch.zeros(n, device=device)  # [N] modalities per item
    for idx in members.values():
        count[idx] += 1
    rows, cols, vals = [], [], []
    with torch.no_grad():
        for name, idx in members.items():
            if not len(idx):
                continue
            x = F.normalize(features[name][idx].float().nan_to_num(0.0), dim=1)  # [n_m, D_m]
            km = min(k, len(idx))
            for start in range(0, len(idx), block_size):
                sim = x[start : start + block_size] @ x.T  # [b, n_m]
                # The item itself first whatever ties or zero vectors say: it is always a neighbour.
                sim[torch.arange(sim.size(0), device=device), torch.arange(start, start + sim.size(0), device=device)] = 2.0
                top = sim.topk(km, dim=1).indices  # [b, k_m]
                r = idx[start : start + sim.size(0)]  # [b]
                rows.append(r.repeat_interleave(km))
                cols.append(idx[top.flatten()])
                vals.append((1.0 / (km * count[r])).repeat_interleave(km))
    if rows:
        r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    else:
        r = c = torch.zeros(0, dtype=torch.long, device=device)
        v = torch.zeros(0, device=device)
    return ItemGraph(_csr(r, c, v, n), _csr(c, r, v, n), k)


__all__ = ["ItemGraph", "knn_item_graph"]
