"""LightGCN graph propagation over the joint user-item graph (torch-geometric ``LGConv``).

torch-geometric is imported where it is first used, not with this module: importing it costs
about 5 s beyond torch's own 3 s on a 2-core machine (it imports its dataset and LLM modules, and transformers with
them), and a process that only serves from a trained directory never propagates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# dtypes torch.sparse.mm multiplies on every device (CPU's MKL kernel has no half / bfloat16)
_SPARSE_DTYPES = (torch.float32, torch.float64)


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
    adj_t: Tensor | None = None  # [U+N, U+N] CSR, row = target: built on first sparse use
    adj: Tensor | None = None  # [U+N, U+N] CSR, adj_t transposed; adj_t itself when symmetric


class _SparseMatmul(torch.autograd.Function):
    """``adj_t @ x`` whose backward multiplies by a prebuilt transpose ``adj``.

    ``torch.sparse.mm``'s own backward transposes the CSR matrix on every call (a CSC view
    that the kernel converts back), which costs about five times the forward product. The
    graph is fixed across training steps, so its transpose is built once and cached -- and
    for the symmetric LightGCN adjacency it is ``adj_t`` itself.

    Shapes:
        adj_t (V, V), adj (V, V), x (V, D) -> (V, D)
    """

    @staticmethod
    def forward(ctx, adj_t: Tensor, adj: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(adj)
        return torch.sparse.mm(adj_t, x)  # [V, D]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor | None]:
        if not ctx.needs_input_grad[2]:
            return None, None, None
        (adj,) = ctx.saved_tensors
        return None, None, torch.sparse.mm(adj, grad)  # [V, D]


def _csr(rows: Tensor, cols: Tensor, values: Tensor, num_nodes: int) -> Tensor:
    """``[num_nodes, num_nodes]`` CSR matrix, duplicate entries summed."""
    from torch_geometric.utils import to_torch_csr_tensor

    with warnings.catch_warnings():
        # torch warns once per process that CSR is "beta" and that invariant checks are off;
        # the matrix is built from a validated edge_index, so neither concerns the caller
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return to_torch_csr_tensor(torch.stack([rows, cols]), values, size=(num_nodes, num_nodes))


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

    Full-graph training propagates over the same graph thousands of times, so everything that
    depends only on the graph is computed once and cached: the normalised edge weights
    (``gcn_norm(add_self_loops=False)``, exactly what ``LGConv(normalize=True)`` computes in
    every layer) and, from them, the normalised adjacency as a sparse CSR matrix
    (:meth:`normalized_adjacency`). Each layer is then one sparse-dense product
    ``torch.sparse.mm(adj_t, x)`` -- what ``LGConv`` itself runs when given a sparse
    ``adj_t`` -- with a backward that reuses the cached transpose instead of transposing
    ``adj_t`` anew in every step (the adjacency is symmetric, so the transpose is usually
    the same matrix). Forward + backward this is an order of magnitude faster than
    ``LGConv``'s gather / scatter message passing over ``edge_index`` on the benchmark graphs,
    and several times faster than ``LGConv`` on ``adj_t``, whose backward time is mostly that
    transpose (``benchmarks/results/propagation.md``). The cache is keyed on
    the identity and in-place version of ``edge_index`` (and ``edge_weight``), the node
    count and the dtype, so a new or modified graph is renormalised.

    Edge weights that require grad are never cached: they, and dtypes ``torch.sparse.mm``
    lacks on CPU (half, bfloat16), take ``LGConv(normalize=False)`` message passing over
    ``edge_index`` with the normalised weights, which gives the same result.

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
        self._conv: nn.Module | None = None  # LGConv(normalize=False), built on first use
        self._cache: _NormCache | None = None

    def reset_parameters(self) -> None:
        """No learnable parameters; drops the cached normalisation."""
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached normalised edge weights and sparse adjacency."""
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
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

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

    def normalized_adjacency(
        self,
        edge_index: Tensor,
        num_nodes: int,
        edge_weight: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The normalised adjacency ``D^{-1/2} A D^{-1/2}`` as a sparse CSR matrix, cached per graph.

        Entry ``[j, i]`` is the normalised weight of edge ``i -> j`` (row = target, PyG's
        ``adj_t`` convention), so one propagation layer is ``adj_t @ x``; duplicated edges
        add up, as in message passing. Cached with, and keyed like,
        :meth:`normalized_edge_weight`.

        Args:
            edge_index: both directions of every edge, node ids in ``[0, num_nodes)``.
            num_nodes: ``U + N``.
            edge_weight: optional non-negative edge weights, default all ones.
            dtype: dtype of the values, default float32.

        Returns:
            ``adj_t``, a ``torch.sparse_csr`` tensor on ``edge_index``'s device.

        Raises:
            ValueError: as :meth:`normalized_edge_weight`, or an ``edge_weight`` that requires
                grad (those are never cached; :meth:`forward` propagates them over
                ``edge_index``).

        Shapes:
            edge_index (2, E), edge_weight (E,) -> (U+N, U+N)
        """
        return self._adjacency(edge_index, num_nodes, edge_weight, dtype)[0]

    def _adjacency(
        self, edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``(adj_t, adj)``: the cached CSR adjacency and its transpose (the same tensor if symmetric)."""
        if edge_weight is not None and edge_weight.requires_grad:
            raise ValueError(
                "normalized_adjacency does not take an edge_weight that requires grad: it would "
                "not be cached; forward propagates such weights over edge_index instead"
            )
        weight = self.normalized_edge_weight(edge_index, num_nodes, edge_weight, dtype)  # [E]
        c = self._cache
        assert c is not None and c.normalized is weight  # weights without grad are always cached
        if c.adj_t is None:
            src, dst = edge_index
            adj_t = _csr(dst, src, weight, num_nodes)  # [U+N, U+N]
            adj = _csr(src, dst, weight, num_nodes)  # [U+N, U+N]
            if (
                torch.equal(adj.crow_indices(), adj_t.crow_indices())
                and torch.equal(adj.col_indices(), adj_t.col_indices())
                and torch.equal(adj.values(), adj_t.values())
            ):
                adj = adj_t  # exactly symmetric: keep one copy
            c.adj_t, c.adj = adj_t, adj
        return c.adj_t, c.adj

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
        from torch_geometric.utils import is_undirected

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
        out = x
        if self._use_sparse(x, edge_weight):
            adj_t, adj = self._adjacency(edge_index, x.size(0), edge_weight, x.dtype)
            for _ in range(self.num_layers):
                x = _SparseMatmul.apply(adj_t, adj, x)  # [U+N, D]
                out = out + x
        else:
            weight = self.normalized_edge_weight(edge_index, x.size(0), edge_weight, x.dtype)  # [E]
            if self._conv is None:
                from torch_geometric.nn import LGConv

                self._conv = LGConv(normalize=False)  # parameter-free: one instance serves every layer
            for _ in range(self.num_layers):
                x = self._conv(x, edge_index, weight)  # [U+N, D]
                out = out + x
        return out / (self.num_layers + 1)

    def _use_sparse(self, x: Tensor, edge_weight: Tensor | None) -> bool:
        """Whether :meth:`forward` multiplies by the cached sparse adjacency.

        Otherwise it runs ``LGConv`` message passing over ``edge_index``;
        ``scripts/bench_propagation.py`` overrides this to time that path.
        """
        grad_weights = edge_weight is not None and edge_weight.requires_grad
        return not grad_weights and x.dtype in _SPARSE_DTYPES

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_layers={self.num_layers})"


__all__ = ["GraphPropagation"]
