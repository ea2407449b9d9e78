"""Attention fusion: one vector per item from its modality tokens, missing tokens masked out."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionFusion(nn.Module):
    """Per item, multi-head attention of one query over the item's M modality tokens.

    The query of item n is a learned vector plus a projection of the mean of its present
    tokens, so every item asks the same question ("which of my modalities matters?") adjusted
    by what it contains. Each head h scores the tokens, masked tokens get ``-inf`` before the
    softmax and therefore a weight of exactly 0::

        q_n = query + W_q mean_{m present} t_nm
        a_nhm = softmax_m( <q_nh, W_k t_nm>_h / sqrt(D/H) )  over present m
        fused_n = W_o concat_h( sum_m a_nhm (W_v t_nm)_h )

    The returned weights are ``a`` averaged over heads: rows sum to 1 over the present tokens
    and are exactly 0 on masked ones. They are the pre-dropout weights (kept for
    explanations); attention dropout applies only to the weights used for the output. The
    module is permutation-equivariant in the tokens: permuting tokens and mask permutes the
    weights and leaves ``fused`` unchanged. Masked token values are ignored entirely (they may
    even be NaN).

    Args:
        dim: token width ``D``; must be divisible by ``num_heads``.
        num_heads: number of attention heads ``H``, default ``4``.
        dropout: dropout probability on the attention weights used for the output, default
            ``0.0``; active only in training mode.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads`` or a dropout outside ``[0, 1)``.

    Shapes:
        tokens (N, M, D), mask (N, M) -> fused (N, D), weights (N, M)
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"AttentionFusion needs dim divisible by num_heads (both positive), got "
                f"dim={dim}, num_heads={num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AttentionFusion dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.query = nn.Parameter(torch.empty(dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise: query ~ N(0, 0.02^2), Xavier-uniform weights, zero biases."""
        nn.init.normal_(self.query, std=0.02)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse each item's present tokens into one vector.

        Args:
            tokens: per item, one D-vector per modality (order fixed by the caller).
            mask: ``True`` where the token is present. Every row needs at least one.

        Returns:
            ``(fused, weights)``: the fused item vectors and the head-averaged attention
            weights (exactly 0 on masked tokens, rows summing to 1).

        Raises:
            ValueError: wrong shapes or dtype of ``mask``, or a row with no present token (its
                attention would be undefined); the message lists the first offending rows.

        Shapes:
            tokens (N, M, D), mask (N, M) bool -> fused (N, D), weights (N, M)
        """
        if tokens.dim() != 3 or tokens.size(-1) != self.dim:
            raise ValueError(
                f"AttentionFusion({self.dim}) expects tokens of shape [N, M, {self.dim}], got "
                f"{list(tokens.shape)}"
            )
        if mask.dtype != torch.bool or mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"AttentionFusion expects a bool mask of shape {list(tokens.shape[:2])}, got "
                f"{mask.dtype} {list(mask.shape)}"
            )
        n, m, d = tokens.shape
        h, dh = self.num_heads, self.head_dim
        count = mask.sum(dim=1, keepdim=True)  # [N, 1]
        empty = count.squeeze(1) == 0  # [N]
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:10].tolist()
            raise ValueError(
                f"AttentionFusion: {int(empty.sum())} row(s) have no present token (mask all "
                f"False), first rows {rows}; every item needs at least one modality or an id"
            )

        # Zero masked tokens so that NaN/garbage in a missing modality cannot leak through 0 * x.
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)  # [N, M, D]
        pooled = tokens.sum(dim=1) / count.to(tokens.dtype)  # [N, D]
        q = (self.query + self.q_proj(pooled)).view(n, h, dh)  # [N, H, Dh]
        k = self.k_proj(tokens).view(n, m, h, dh)  # [N, M, H, Dh]
        v = self.v_proj(tokens).view(n, m, h, dh)  # [N, M, H, Dh]

        scores = torch.einsum("nhd,nmhd->nhm", q, k) / math.sqrt(dh)  # [N, H, M]
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))  # [N, H, M]
        attn = scores.softmax(dim=-1)  # [N, H, M], exactly 0 where masked
        used = F.dropout(attn, self.dropout, self.training)
        out = torch.einsum("nhm,nmhd->nhd", used, v).reshape(n, d)  # [N, D]
        fused = self.out_proj(out)  # [N, D]
        weights = attn.mean(dim=1)  # [N, M]
        return fused, weights

    def __repr__(self) -> str:
        extra = f", dropout={self.dropout}" if self.dropout else ""
        return f"{self.__class__.__name__}({self.dim}, num_heads={self.num_heads}{extra})"


__all__ = ["AttentionFusion"]
