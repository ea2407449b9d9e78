"""LightGCN graph propagation over the joint user-item graph (torch-geometric ``LGConv``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import is_undirected


@dataclass
class _NormCache:
    """The normalised edge weights of one graph, and what they were computed from."""

    edge_index: Tensor  # held so that its id cannot be reused by another tensor
    version: int | None
    edge_weight: Tensor | None
    edge_weight_version: int | None
    num_nodes: int
    dtype: torch.dtype
    normalized: Tensor  # [E]


def _version(t: Tensor | None) -> int | None:
    """In-place modification counter of ``t`` (``None`` for inference tensors, which lack one)."""
    if t is None:
        return None
    try:
        return t._version
    except RuntimeError:
        return None


class GraphPropagation(nn.Module):
    """Parameter-free LightGCN propagation with a layer-mean readout.

    LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation", SIGIR 2020): ``x^{(l+1)} = D^{-1/2} A D^{-1/2} x^{(l)}``, and the output is
    the mean ``1/(L+1) sum_{l=0..L} x^{(l)}``. No feature transform, no non-linearity, no self
    loops.

    Nodes are users ``0..U-1`` followed by items ``U..U+N-1``; ``edge_index`` must hold every
    interaction in both directions (user -> item and item -> user), which is checked once per
    graph. A node without edges keeps only its layer-0 term, i.e. comes out as
    ``x^{(0)} / (L+1)``.

    Each layer is a ``torch_geometric.nn.LGConv``. ``LGConv(normalize=True)`` would recompute
    ``gcn_norm`` (a scatter over all E edges plus two gathers) in every layer of every step;
    full-graph training propagates over the same graph thousands of times, so this module
    calls ``gcn_norm(add_self_loops=False)`` itself -- exactly what ``LGConv(normalize=True)``
    does internally -- caches the result for the graph it was given, and runs the layers as
    ``LGConv(normalize=False)`` on the cached weights. The cache is keyed on the identity and
    in-place version of ``edge_index`` (and ``edge_weight``), the node count and the dtype, so
    a new or modified graph is renormalised; edge weights that require grad are never cached.

    Args:
        num_layers: number of propagation layers ``L``, default ``3``; ``0`` is the identity.

    Raises:
        ValueError: a negative ``num_layers``.

    Shapes:
        x (U+N, D), edge_index (2, E), edge_weight (E,) -> (U+N, D)
    """

    def __init__(self, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"GraphPropagation num_layers must be >= 0, got {num_layers}")
        self.num_layers = num_layers
        self.conv = LGConv(normalize=False)  # parameter-free: one instance serves every layer
        self._cache: _NormCache | None = None

    def reset_parameters(self) -> None:
        """No learnable parameters; drops the cached normalisation."""
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached normalised edge weights."""
        self._cache = None

    def normalized_edge_weight(
        self,
        edge_index: Tensor,
        num_nodes: int,
        edge_weight: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Symmetric-normalised edge weights ``e_ij / sqrt(d_i d_j)``, cached per graph.

        ``d_i`` is the (weighted) degree of node i. For an unweighted bipartite graph the weight
        of a user-item edge is ``1 / sqrt(d_u d_i)``.

        Args:
            edge_index: both directions of every edge, node ids in ``[0, num_nodes)``.
            num_nodes: ``U + N``.
            edge_weight: optional non-negative edge weights, default all ones.
            dtype: dtype of the result, default float32.

        Returns:
            The normalised weights, in the order of ``edge_index``'s columns.

        Raises:
            ValueError: ``edge_index`` not ``[2, E]`` integer, a node id outside
                ``[0, num_nodes)``, ``edge_weight`` not ``[E]``, or a graph that is not
                symmetric (some edge lacks its reverse).

        Shapes:
            edge_index (2, E), edge_weight (E,) -> (E,)
        """
        c = self._cache
        if (
            c is not None
            and c.edge_index is edge_index
            and c.version == _version(edge_index)
            and c.edge_weight is edge_weight
            and c.edge_weight_version == _version(edge_weight)
            and c.num_nodes == num_nodes
            and c.dtype == dtype
        ):
            return c.normalized
        self._check_graph(edge_index, num_nodes, edge_weight)
        _, normalized = gcn_norm(
            edge_index, edge_weight, num_nodes, add_self_loops=False, dtype=dtype
        )
        if edge_weight is not None:
            normalized = normalized.to(dtype)
        if edge_weight is None or not edge_weight.requires_grad:
            self._cache = _NormCache(
                edge_index=edge_index,
                version=_version(edge_index),
                edge_weight=edge_weight,
                edge_weight_version=_version(edge_weight),
                num_nodes=num_nodes,
                dtype=dtype,
                normalized=normalized,
            )
        return normalized

    @staticmethod
    def _check_graph(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None) -> None:
        if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
            raise ValueError(
                f"edge_index must be an integer tensor of shape [2, E], got "
                f"{edge_index.dtype} {list(edge_index.shape)}"
            )
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(
                f"edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}] "
                f"but x has {num_nodes} rows (users then items)"
            )
        if edge_weight is not None and edge_weight.shape != (edge_index.size(1),):
            raise ValueError(
                f"edge_weight must have shape [{edge_index.size(1)}] (one per edge), got "
                f"{list(edge_weight.shape)}"
            )
        if not is_undirected(edge_index, num_nodes=num_nodes):
            raise ValueError(
                "edge_index is not symmetric: LightGCN propagation needs every user-item "
                "interaction in both directions (user -> item and item -> user)"
            )

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """Propagate and average the layers.

        Args:
            x: layer-0 node vectors, users first then items.
            edge_index: the symmetric user-item graph (both directions).
            edge_weight: optional edge weights (default 1), normalised here like the degrees.

        Returns:
            ``1/(L+1) sum_{l=0..L} x^{(l)}``.

        Raises:
            ValueError: see :meth:`normalized_edge_weight`.

        Shapes:
            x (U+N, D), edge_index (2, E), edge_weight (E,) -> (U+N, D)
        """
        if self.num_layers == 0:
            return x
        weight = self.normalized_edge_weight(edge_index, x.size(0), edge_weight, x.dtype)
        out = x
        for _ in range(self.num_layers):
            x = self.conv(x, edge_index, weight)  # [U+N, D]
            out = out + x
        return out / (self.num_layers + 1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_layers={self.num_layers})"


__all__ = ["GraphPropagation"]
