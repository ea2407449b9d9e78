"""The user-item interaction graph in torch-geometric form.

Users and items share one node space: user ``u`` is node ``u`` and item ``i`` is node
``U + i``. Every interaction is an undirected edge, stored in both directions, so a graph of
E distinct (user, item) pairs has an ``edge_index`` of shape ``[2, 2E]`` -- what
``torch_geometric.nn.LGConv`` and ``fusion.propagation.GraphPropagation`` expect. Items with
no interactions (cold-start) are nodes without edges.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mmrec.interactions import Interactions
from mmrec.typing import EdgeIndex


def build_edge_index(
    users: np.ndarray, items: np.ndarray, num_users: int, *, num_items: int | None = None
) -> EdgeIndex:
    """Bipartite user-item graph in one node space, both directions, duplicates removed.

    Columns ``0..E-1`` are the user -> item edges sorted by (user, item); columns ``E..2E-1``
    are the same edges reversed, in the same order.

    Args:
        users: user index of each interaction, in ``[0, num_users)``.
        items: item index of each interaction, in ``[0, num_items)``.
        num_users: ``U``, the offset of item nodes.
        num_items: ``N``, only to check the item indices; default ``None`` (unchecked).

    Returns:
        ``edge_index`` with rows (source, target), int64.

    Raises:
        ValueError: ``users`` and ``items`` of different shapes, or indices out of range.

    Shapes:
        users (E',), items (E',) -> (2, 2E) with E <= E' distinct pairs
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.ndim != 1 or users.shape != items.shape:
        raise ValueError(f"users and items must be 1-D of one length, got {users.shape} and {items.shape}")
    if len(users):
        if users.min() < 0 or users.max() >= num_users:
            raise ValueError(f"user indices must lie in [0, {num_users}), got [{users.min()}, {users.max()}]")
        upper = num_items if num_items is not None else np.iinfo(np.int64).max
        if items.min() < 0 or items.max() >= upper:
            raise ValueError(f"item indices must lie in [0, {num_items}), got [{items.min()}, {items.max()}]")
    width = int(items.max()) + 1 if len(items) else 1
    pairs = np.unique(users * width + items)  # sorted by (user, item), duplicates gone
    u = pairs // width
    i = pairs % width + num_users  # item node ids
    edge_index = np.stack([np.concatenate([u, i]), np.concatenate([i, u])])  # [2, 2E]
    return torch.from_numpy(edge_index)


def interaction_graph(inter: Interactions, split: str | Sequence[str] = "train") -> EdgeIndex:
    """``edge_index`` of the interactions in ``split`` (default the training set).

    Shapes:
        -> (2, 2E), node ids in ``[0, U + N)``
    """
    keep = inter.split_mask(split)
    return build_edge_index(inter.users[keep], inter.items[keep], inter.num_users, num_items=inter.num_items)


def gcn_norm_weights(edge_index: EdgeIndex, num_nodes: int) -> Tensor:
    """LightGCN's symmetric normalisation ``1 / sqrt(d_src d_dst)`` of every edge.

    ``d`` counts a node's edges (no self loops), so for a user-item edge the weight is
    ``1 / sqrt(d_u d_i)`` with ``d_u`` the user's item count and ``d_i`` the item's user
    count; equal to ``torch_geometric``'s ``gcn_norm(..., add_self_loops=False)``.

    Args:
        edge_index: a symmetric graph (each edge in both directions).
        num_nodes: ``U + N``.

    Shapes:
        edge_index (2, E) -> (E,) float32
    """
    src, dst = edge_index
    degree = torch.bincount(dst, minlength=num_nodes).to(torch.float32)  # [U+N]
    inv_sqrt = degree.pow(-0.5)
    inv_sqrt[degree == 0] = 0.0
    return inv_sqrt[src] * inv_sqrt[dst]  # [E]


def normalized_adjacency(edge_index: EdgeIndex, num_nodes: int, edge_weight: Tensor | None = None) -> Tensor:
    """Sparse ``D^{-1/2} A D^{-1/2}`` as a coalesced torch COO tensor, for ``torch.sparse.mm``.

    Args:
        edge_index: a symmetric graph.
        num_nodes: ``U + N``.
        edge_weight: weights to place instead of the normalisation; default
            :func:`gcn_norm_weights`.

    Shapes:
        edge_index (2, E), edge_weight (E,) -> (U+N, U+N) sparse COO float32
    """
    weight = gcn_norm_weights(edge_index, num_nodes) if edge_weight is None else edge_weight
    return torch.sparse_coo_tensor(edge_index, weight, (num_nodes, num_nodes), check_invariants=True).coalesce()


def prune_edges(edge_index: EdgeIndex, num_nodes: int, drop: float, rng: np.random.Generator) -> EdgeIndex:
    """Degree-sensitive edge pruning (FREEDOM, Zhou & Shen, MM 2023): a random training subgraph.

    Of the ``E`` undirected edges, ``E - round(drop * E)`` are kept, sampled without replacement
    with probability proportional to ``1 / sqrt(d_u d_i)`` (degrees in the full graph), so an
    edge between rarely seen nodes is more likely to stay than one between hubs; each kept
    edge keeps both directions. Drawing a new subgraph every epoch regularises the
    propagation the way dropout regularises a layer; evaluation uses the full graph.

    Sampling is Efraimidis-Spirakis: edge ``e`` gets key ``log(r_e) / w_e`` with ``r_e``
    uniform in (0, 1), and the largest keys are kept, which is weighted sampling without
    replacement.

    Args:
        edge_index: a graph laid out as :func:`build_edge_index` returns it (the first half of
            the columns are user -> item edges, the second half the same edges reversed).
        num_nodes: ``U + N``.
        drop: fraction of the edges to drop, in ``[0, 1)``; ``0`` returns ``edge_index``.
        rng: the random generator (the caller's, for reproducible training).

    Returns:
        The kept edges in the same layout, in their original order.

    Raises:
        ValueError: ``drop`` outside ``[0, 1)`` or an odd number of columns.

    Shapes:
        edge_index (2, 2E) -> (2, 2E') with E' = E - round(drop * E)
    """
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"prune_edges: drop must lie in [0, 1), got {drop}")
    total = edge_index.size(1)
    if total % 2:
        raise ValueError(f"prune_edges: edge_index must hold every edge twice, got {total} columns")
    half = total // 2
    if drop == 0.0 or half == 0:
        return edge_index
    weight = gcn_norm_weights(edge_index, num_nodes)[:half].double().cpu().numpy()  # [E] 1/sqrt(d_u d_i)
    keep = half - round(drop * half)
    keys = np.log(rng.random(half)) / weight  # larger key = kept
    if keep == 0:
        chosen = np.zeros(0, dtype=np.int64)
    elif keep < half:
        chosen = np.sort(np.argpartition(-keys, keep - 1)[:keep])
    else:
        chosen = np.arange(half)
    index = torch.from_numpy(np.concatenate([chosen, chosen + half]))
    return edge_index[:, index.to(edge_index.device)]
