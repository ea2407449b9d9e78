"""The trainable model: modality projections + attention fusion + LightGCN propagation."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.attention import AttentionFusion
from fusion.item_graph import ItemGraph
from fusion.projection import ModalityProjection
from fusion.propagation import GraphPropagation

ID_TOKEN = "id"
ID_INITS = ("normal", "xavier")
ID_MODES = ("token", "residual")


def modality_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a modality (a model's or a content index's), or ``None``: a name
    is a non-empty string without ``.`` (saved weights are keyed ``<part>.<modality>.<weight>``)
    and is not ``"id"`` (the ID token's, in attention weights and explanations)."""
    if not isinstance(name, str) or not name or "." in name or name == ID_TOKEN:
        return (f"modality name {name!r} is not allowed: names are non-empty strings without '.', and "
                f"'{ID_TOKEN}' is the ID token's")
    return None


class FusedGraphModel(nn.Module):
    """Multimodal LightGCN: items start from fused content + ID tokens, then graph propagation.

    Layer 0 of item n is ``AttentionFusion`` over its tokens
    ``[proj_m(features_m[n]) for m in modalities] + [id_embedding[n]]`` (missing modalities
    masked); layer 0 of user u is a learned embedding. LightGCN (He et al., SIGIR 2020) then
    propagates over the user-item graph, ``x^{(l+1)} = D^{-1/2} A D^{-1/2} x^{(l)}``, and
    reads out the mean of layers 0..L. A user-item score is the dot product of the outputs.

    Special cases:

    * ``modality_dims == {}`` with ``use_id=True`` is plain ID-only LightGCN: no projection, no
      fusion, the item's layer-0 vector *is* its ID embedding (attention weights are all 1).
    * ``use_id=False`` is content-only: items are known only through their features.

    Cold-start items and free-text / image queries go through the same fusion with the ID token
    masked (:meth:`content_only`, or :meth:`item_content` with ``item_ids=None`` / ``-1``). To
    keep those vectors in the space of the propagated ones, training can (a) drop tokens at
    random (``modality_dropout``, ``id_dropout``: each present token of each item is masked
    with that probability, but never every token of a row), so fusion learns to work without
    the ID; and (b) add ``losses.alignment_loss(model.content_only(...), item_vecs.detach())``
    on warm items. Outputs are *not* L2-normalised: training and :meth:`score` use raw dot
    products as LightGCN does (the norm carries popularity); apply :meth:`normalize_output` to
    index vectors and queries alike for cosine retrieval with an inner-product FAISS index.

    Embeddings start as ``N(0, 0.1^2)`` as in the reference LightGCN implementation
    (``id_init="xavier"``: Xavier-uniform, as MMRec's and RecBole's LightGCN).

    Args:
        num_users: number of users ``U``.
        num_items: number of items ``N`` with an ID embedding (all items in the graph).
        modality_dims: modality name -> feature width, e.g. ``{"text": 384, "image": 1280}``;
            the order of the dict is the token order.
        dim: model dimension ``D``, default ``64``.
        num_layers: LightGCN layers ``L``, default ``3``.
        num_heads: attention heads (must divide ``dim``), default ``4``.
        use_id: whether items get a learned ID token (placed last), default ``True``.
        modality_dropout: training-time probability of masking each present modality token,
            default ``0.0``.
        id_dropout: training-time probability of masking the ID token, default ``0.0``.
        dropout: dropout inside projections and attention, default ``0.0``.
        projection_hidden: hidden width of a two-layer projection MLP, default ``None``
            (a single linear map after LayerNorm).
        id_mode: how the ID embedding joins the content, default ``"token"``: one attention
            token among the modalities (the layer-0 vector is a convex mix of them);
            ``"residual"``: attention fuses the content tokens only and the ID embedding is
            added to the result, ``x0 = fuse(content) + e_id`` (``fuse(content)`` alone for an
            item without ID, ``e_id`` alone for an item without content). Its weights report
            the ID's share of the two parts' norms, content weights scaled by the rest.
        content_gain: Xavier gain of the projections' output layers, default ``1.0``. With
            ``id_mode="residual"`` a small gain (``0.01``) starts every item as its ID
            embedding plus a near-zero content part, which the model grows where content
            helps: measured on ml100k-plus, a full-size content part at initialisation
            outweighs the ``N(0, 0.1^2)`` ID embeddings ten to one and the fused model loses
            to ID-only LightGCN.
        id_init: initialisation of the user and item ID embeddings, ``"normal"`` (default,
            ``N(0, 0.1^2)``) or ``"xavier"`` (Xavier-uniform).

    Raises:
        ValueError: non-positive sizes, a reserved or malformed modality name, no token at
            all, ``dim`` not divisible by ``num_heads``, a probability outside ``[0, 1]`` or an
            unknown ``id_mode`` / ``id_init``.

    Shapes:
        features[m] (N, D_m), present[m] (N,), edge_index (2, E)
        -> user_vecs (U, D), item_vecs (N, D), weights (N, M)
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        modality_dims: Mapping[str, int],
        dim: int = 64,
        num_layers: int = 3,
        num_heads: int = 4,
        use_id: bool = True,
        modality_dropout: float = 0.0,
        id_dropout: float = 0.0,
        dropout: float = 0.0,
        projection_hidden: int | None = None,
        id_mode: str = "token",
        content_gain: float = 1.0,
        id_init: str = "normal",
    ) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1 or dim < 1:
            raise ValueError(
                f"FusedGraphModel needs positive sizes, got num_users={num_users}, "
                f"num_items={num_items}, dim={dim}"
            )
        for name, width in modality_dims.items():
            if (problem := modality_name_problem(name)) is not None:
                raise ValueError(problem)
            if int(width) < 1:
                raise ValueError(f"modality '{name}' has width {width}; widths must be >= 1")
        if not modality_dims and not use_id:
            raise ValueError(
                "FusedGraphModel with no modality and use_id=False has no token to build items from"
            )
        for label, p in (("modality_dropout", modality_dropout), ("id_dropout", id_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {p}")
        self.num_users = num_users
        self.num_items = num_items
        self.modality_dims = {name: int(width) for name, width in modality_dims.items()}
        self.dim = dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.use_id = use_id
        self.modality_dropout = modality_dropout
        self.id_dropout = id_dropout
        self.dropout = dropout
        self.projection_hidden = projection_hidden
        if id_mode not in ID_MODES:
            raise ValueError(f"id_mode must be 'token' or 'residual', got {id_mode!r}")
        self.id_mode = id_mode
        self.content_gain = float(content_gain)
        if id_init not in ID_INITS:
            raise ValueError(f"id_init must be one of {ID_INITS}, got {id_init!r}")
        self.id_init = id_init

        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim) if use_id else None
        self.projections = nn.ModuleDict(
            {
                # A one-column modality (a price, a rating) has nothing to LayerNorm over.
                name: ModalityProjection(
                    width, dim, hidden=projection_hidden, dropout=dropout, init_gain=content_gain, norm=width > 1
                )
                for name, width in self.modality_dims.items()
            }
        )
        self.fusion = AttentionFusion(dim, num_heads, dropout) if self.modality_dims else None
        self.propagation = GraphPropagation(num_layers)
        self.reset_parameters()

    @property
    def modalities(self) -> list[str]:
        """Token names in token order: the modalities as given, then ``"id"`` if used."""
        return list(self.modality_dims) + ([ID_TOKEN] if self.use_id else [])

    def reset_parameters(self) -> None:
        """Re-initialise every parameter and drop graph caches.

        User and item ID embeddings start ``N(0, 0.1^2)`` (``id_init="normal"``, the LightGCN
        reference code) or Xavier-uniform (``"xavier"``, MMRec's and RecBole's LightGCN).
        """
        self.reset_embeddings()
        for proj in self.projections.values():
            proj.reset_parameters()
        if self.fusion is not None:
            self.fusion.reset_parameters()
        self.propagation.reset_parameters()

    @torch.no_grad()
    def reset_embeddings(self, generator: torch.Generator | None = None) -> None:
        """Draw the user and item ID embeddings afresh (``id_init``), from ``generator`` (a CPU
        one; the rows are drawn on the CPU and copied to the embeddings' device) or, by default,
        torch's global generator."""
        for table in (self.user_embedding, self.item_embedding):
            if table is None:
                continue
            w = table.weight if generator is None else torch.empty(table.weight.shape)
            if self.id_init == "xavier":
                nn.init.xavier_uniform_(w, generator=generator)
            else:
                nn.init.normal_(w, std=0.1, generator=generator)
            if generator is not None:
                table.weight.copy_(w)

    # ------------------------------------------------------------------ layer 0: item tokens
    def _num_rows(self, features: Mapping[str, Tensor], item_ids: Tensor | None) -> int:
        rows = {name: int(x.size(0)) for name, x in features.items()}
        if item_ids is not None:
            rows[ID_TOKEN] = int(item_ids.size(0))
        if not rows:
            raise ValueError(
                "item_content needs at least one modality in `features` or `item_ids`; got neither"
            )
        if len(set(rows.values())) != 1:
            raise ValueError(f"features / item_ids disagree on the number of items: {rows}")
        return next(iter(rows.values()))

    def _check_inputs(
        self,
        features: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None,
        item_ids: Tensor | None,
        n: int,
    ) -> None:
        unknown = sorted(set(features) - set(self.modality_dims))
        if unknown:
            raise ValueError(
                f"features for unknown modalities {unknown}; this model has {list(self.modality_dims)}"
            )
        for name, x in features.items():
            if x.dim() != 2 or x.size(1) != self.modality_dims[name]:
                raise ValueError(
                    f"features['{name}'] must have shape [N, {self.modality_dims[name]}], got "
                    f"{list(x.shape)}"
                )
        for name, m in (present or {}).items():
            if name not in features:
                raise ValueError(f"present['{name}'] given but features has no '{name}'")
            if m.dtype != torch.bool or m.shape != (n,):
                raise ValueError(
                    f"present['{name}'] must be a bool tensor of shape [{n}], got {m.dtype} "
                    f"{list(m.shape)}"
                )
        if item_ids is not None:
            if item_ids.dim() != 1 or item_ids.is_floating_point() or item_ids.dtype == torch.bool:
                raise ValueError(
                    f"item_ids must be a 1-d integer tensor, got {item_ids.dtype} "
                    f"{list(item_ids.shape)}"
                )
            if item_ids.numel() and int(item_ids.max()) >= self.num_items:
                raise ValueError(
                    f"item_ids holds {int(item_ids.max())} but the model has {self.num_items} "
                    f"item embeddings (use -1 for an item without one)"
                )

    def item_content(
        self,
        features: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None = None,
        item_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Layer-0 item vectors: fuse each item's modality tokens and (optionally) its ID token.

        In training mode, modality / ID token dropout is applied (never masking every token of
        a row); in eval mode the result is deterministic.

        Args:
            features: modality name -> features. A modality absent from the dict is masked for
                every row (a text query passes only ``{"text": ...}``).
            present: modality name -> ``True`` where the item has that modality; default all
                present. Rows marked absent are ignored whatever they hold (NaN included).
            item_ids: each row's ID-embedding index, ``-1`` for an item without one (cold
                start). ``None`` (default) masks the ID token everywhere: the content-only path.

        Returns:
            ``(vectors, weights)``: fused layer-0 vectors and per-token attention weights in
            :attr:`modalities` order (exactly 0 on masked tokens).

        Raises:
            ValueError: unknown modality, wrong shapes, no rows, an ``item_id`` out of range,
                or, with ``id_mode="token"``, an item left with no token (no modality and no ID;
                ``id_mode="residual"`` gives it a zero vector and zero weights, and ``fit``
                refuses to train an item without content and without a training interaction).

        Shapes:
            features[m] (N, D_m), present[m] (N,), item_ids (N,) -> vectors (N, D), weights (N, M)
        """
        n = self._num_rows(features, item_ids)
        self._check_inputs(features, present, item_ids, n)
        present = present or {}
        weight = self.user_embedding.weight
        tokens: list[Tensor] = []
        masks: list[Tensor] = []
        for name, proj in self.projections.items():
            if name in features:
                has = present.get(name)
                has = torch.ones(n, dtype=torch.bool, device=weight.device) if has is None else has
                x = features[name].to(device=weight.device, dtype=weight.dtype)
                # Zero absent rows before the LayerNorm: NaN there would poison weight gradients.
                x = x.masked_fill(~has.to(x.device).unsqueeze(1), 0.0)  # [N, D_m]
                tokens.append(proj(x))  # [N, D]
                masks.append(has.to(weight.device))
            else:
                tokens.append(weight.new_zeros(n, self.dim))
                masks.append(torch.zeros(n, dtype=torch.bool, device=weight.device))
        if self.item_embedding is not None:
            if item_ids is None:
                tokens.append(weight.new_zeros(n, self.dim))
                masks.append(torch.zeros(n, dtype=torch.bool, device=weight.device))
            else:
                item_ids = item_ids.to(weight.device)
                has_id = item_ids >= 0  # [N]
                tokens.append(self.item_embedding(item_ids.clamp(min=0)))  # [N, D]
                masks.append(has_id)

        if self.fusion is None:  # ID-only LightGCN: the ID embedding is the item vector
            if item_ids is None or not bool(masks[0].all()):
                raise ValueError(
                    "an ID-only model (no modalities) has no vector for items without an ID "
                    "embedding (item_ids None or -1)"
                )
            return tokens[0], weight.new_ones(n, 1)

        stacked = torch.stack(tokens, dim=1)  # [N, M, D]
        mask = torch.stack(masks, dim=1)  # [N, M]
        if self.training:
            mask = self._token_dropout(mask)
        if self.id_mode == "residual" and self.item_embedding is not None:
            return self._residual(stacked, mask)
        return self.fusion(stacked, mask)

    def _residual(self, stacked: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``fuse(content tokens) + e_id`` with the ID's norm share as its weight.

        Shapes: stacked (N, M, D), mask (N, M) -> vectors (N, D), weights (N, M)
        """
        content, has_content = stacked[:, :-1], mask[:, :-1]  # [N, M-1, D], [N, M-1]
        ident = stacked[:, -1] * mask[:, -1:].to(stacked.dtype)  # [N, D]
        rows = has_content.any(dim=1)  # [N]
        fused = stacked.new_zeros(ident.shape)  # [N, D]
        weights = stacked.new_zeros(has_content.shape)  # [N, M-1]
        if bool(rows.any()):
            f, w = self.fusion(content[rows], has_content[rows])
            fused = fused.index_put((rows.nonzero().flatten(),), f)  # [N, D]
            weights = weights.index_put((rows.nonzero().flatten(),), w)  # [N, M-1]
        n_id, n_c = ident.norm(dim=1), fused.norm(dim=1)  # [N], [N]
        share = torch.where(mask[:, -1], n_id / (n_id + n_c).clamp(min=1e-12), torch.zeros_like(n_id))  # [N]
        share = torch.where(rows, share, mask[:, -1].to(share.dtype))  # no content: all ID
        out_w = torch.cat([weights * (1 - share).unsqueeze(1), share.unsqueeze(1)], dim=1)  # [N, M]
        return fused + ident, out_w

    def _token_dropout(self, mask: Tensor) -> Tensor:
        """Mask each present token with its dropout probability, keeping >= 1 token per row."""
        probs = [self.modality_dropout] * len(self.modality_dims)
        if self.use_id:
            probs.append(self.id_dropout)
        if max(probs) == 0.0:
            return mask
        p = torch.tensor(probs, device=mask.device)  # [M]
        kept = mask & (torch.rand(mask.shape, device=mask.device) >= p)  # [N, M]
        emptied = mask.any(dim=1) & ~kept.any(dim=1)  # [N]
        if bool(emptied.any()):
            # Give back one of the row's present tokens, chosen uniformly at random.
            r = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)  # [N, M]
            pick = F.one_hot(r.argmax(dim=1), mask.size(1)).bool()  # [N, M]
            kept = kept | (pick & emptied.unsqueeze(1))
        return kept

    def content_only(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Item vectors from content alone (ID token masked): cold-start items and queries.

        Same as ``item_content(features, present, item_ids=None)[0]``. Train it towards the
        propagated vectors with :func:`fusion.losses.alignment_loss` to search it against
        indexed item vectors.

        Args:
            features: modality name -> features (absent modalities are masked).
            present: modality name -> ``True`` where the item has that modality.

        Returns:
            The content-only item vectors.

        Raises:
            ValueError: as :meth:`item_content`; always for an ID-only model.

        Shapes:
            features[m] (N, D_m), present[m] (N,) -> (N, D)
        """
        return self.item_content(features, present, item_ids=None)[0]

    # ------------------------------------------------------------------ full graph
    def forward(
        self,
        features: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        has_id: Tensor | None = None,
        item_graph: ItemGraph | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Full-graph pass: fuse all items, stack under the users, propagate, split.

        For LightGCN's L2 term regularise the layer-0 parameters of the batch:
        ``user_embedding.weight[users]`` and ``item_embedding.weight[items]``.

        Args:
            features: modality name -> features of all ``num_items`` items.
            present: modality name -> ``True`` where the item has that modality (or ``None``).
            edge_index: symmetric user-item graph, users ``0..U-1``, items ``U..U+N-1``.
            edge_weight: optional edge weights.
            has_id: ``False`` for items that must not use their ID embedding (e.g. cold-start
                items held out of training); default every item uses it.
            item_graph: a content item-item graph ``S`` (:func:`fusion.item_graph.knn_item_graph`);
                when given, ``S @ x0`` (the items' layer-0 vectors averaged over their content
                neighbours, as in FREEDOM) is added to the propagated item vectors.

        Returns:
            ``(user_vecs, item_vecs, weights)``.

        Raises:
            ValueError: features not covering exactly ``num_items`` rows, or as
                :meth:`item_content` and :class:`GraphPropagation`.

        Shapes:
            features[m] (N, D_m), present[m] (N,), edge_index (2, E), edge_weight (E,),
            has_id (N,) -> user_vecs (U, D), item_vecs (N, D), weights (N, M)
        """
        device = self.user_embedding.weight.device
        item_ids = None
        if self.item_embedding is not None:
            item_ids = torch.arange(self.num_items, device=device)  # [N]
            if has_id is not None:
                item_ids = item_ids.masked_fill(~has_id.to(device), -1)  # [N]
        for name, x in features.items():
            if x.size(0) != self.num_items:
                raise ValueError(
                    f"forward needs features of all {self.num_items} items; features['{name}'] "
                    f"has {x.size(0)} rows"
                )
        items, weights = self.item_content(features, present, item_ids)
        x0 = torch.cat([self.user_embedding.weight, items], dim=0)  # [U+N, D]
        out = self.propagation(x0, edge_index, edge_weight)  # [U+N, D]
        item_vecs = out[self.num_users :]  # [N, D]
        if item_graph is not None:
            if item_graph.num_items != self.num_items:
                raise ValueError(
                    f"item_graph covers {item_graph.num_items} items, the model {self.num_items}"
                )
            item_vecs = item_vecs + item_graph @ items  # [N, D]
        return out[: self.num_users], item_vecs, weights

    def score(self, user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        """Dot-product score of user-item pairs, broadcasting over leading dimensions.

        Args:
            user_vecs: user vectors, e.g. ``(B, D)`` or ``(B, 1, D)``.
            item_vecs: item vectors, e.g. ``(B, D)`` or ``(B, S, D)``.

        Returns:
            ``(user_vecs * item_vecs).sum(-1)``.

        Shapes:
            user_vecs (B, D), item_vecs (B, D) -> (B,); (B, 1, D), (B, S, D) -> (B, S)
        """
        return (user_vecs * item_vecs).sum(dim=-1)  # [B] or [B, S]

    def score_all(self, user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        """Scores of every user against every item (full ranking).

        Shapes:
            user_vecs (U, D), item_vecs (N, D) -> (U, N)
        """
        return user_vecs @ item_vecs.T  # [U, N]

    def normalize_output(self, vecs: Tensor) -> Tensor:
        """L2-normalise vectors for cosine retrieval in an inner-product index.

        The model's own outputs are never normalised (see the class docstring); use this on
        item vectors before indexing and on every query (user, content-only) alike.

        Shapes:
            vecs (..., D) -> (..., D)
        """
        return F.normalize(vecs, dim=-1)

    def __repr__(self) -> str:
        extra = (
            f", projection_hidden={self.projection_hidden}" if self.projection_hidden else ""
        )
        return (
            f"{self.__class__.__name__}(num_users={self.num_users}, num_items={self.num_items}, "
            f"modality_dims={self.modality_dims}, dim={self.dim}, num_layers={self.num_layers}, "
            f"num_heads={self.num_heads}, use_id={self.use_id}, "
            f"modality_dropout={self.modality_dropout}, id_dropout={self.id_dropout}, "
            f"dropout={self.dropout}{extra}"
            + (f", id_mode='{self.id_mode}'" if self.id_mode != "token" else "")
            + (f", content_gain={self.content_gain}" if self.content_gain != 1.0 else "")
            + (f", id_init='{self.id_init}')" if self.id_init != "normal" else ")")
        )


__all__ = ["FusedGraphModel"]
