"""Per-modality projection: pretrained feature vectors of any width -> the model dimension D."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ModalityProjection(nn.Module):
    """Project one modality's pretrained features into the shared model space.

    ``LayerNorm(D_in) -> Dropout -> Linear(D_in, D)``, or with ``hidden`` a two-layer MLP
    ``LayerNorm -> Dropout -> Linear(D_in, hidden) -> GELU -> Dropout -> Linear(hidden, D)``.

    Why the LayerNorm on the *input*: the encoders put their features on unrelated scales
    (MiniLM sentence vectors are unit-norm, so each of their 384 entries is ~0.05; EfficientNet
    pooled activations are non-negative and of order 1; a precomputed ``.npy`` modality such as
    audio can be anything). Standardising each item's vector per modality keeps one modality
    from dominating the attention by sheer magnitude and makes the learning rate mean the same
    thing for every modality. Set ``norm=False`` for features that are already standardised, or
    for ``in_dim == 1``, where a LayerNorm would map every input to the same value.

    Args:
        in_dim: width ``D_in`` of the incoming features.
        dim: output width ``D`` (the model dimension).
        hidden: width of the hidden layer of a two-layer MLP; ``None`` (default) for a single
            linear map.
        dropout: dropout probability on the normalised input (and on the hidden layer), default
            ``0.0``; active only in training mode.
        norm: whether to LayerNorm the input, default ``True``.
        init_gain: Xavier gain of the output layer, default ``1.0``. A small gain (the fused
            model's ``content_gain``) starts the projected content near zero, so a model that
            adds content to learned ID embeddings begins as ID-only and grows the content
            share where it helps.

    Raises:
        ValueError: a non-positive width, a dropout outside ``[0, 1)``, or ``norm=True`` with
            ``in_dim == 1``.

    Shapes:
        x (N, D_in) -> (N, D)
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        norm: bool = True,
        init_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if in_dim < 1 or dim < 1 or (hidden is not None and hidden < 1):
            raise ValueError(
                f"ModalityProjection widths must be positive, got in_dim={in_dim}, dim={dim}, "
                f"hidden={hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ModalityProjection dropout must be in [0, 1), got {dropout}")
        if not init_gain >= 0.0:
            raise ValueError(f"ModalityProjection init_gain must be >= 0, got {init_gain}")
        if norm and in_dim == 1:
            raise ValueError(
                "ModalityProjection(in_dim=1) with norm=True would map every input to the same "
                "value; pass norm=False for a scalar feature"
            )
        self.in_dim = in_dim
        self.dim = dim
        self.hidden = hidden
        self.dropout = dropout
        self.init_gain = float(init_gain)
        self.norm = nn.LayerNorm(in_dim) if norm else None
        if hidden is None:
            self.lin1 = nn.Linear(in_dim, dim)
            self.lin2 = None
        else:
            self.lin1 = nn.Linear(in_dim, hidden)
            self.lin2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise: LayerNorm to identity, Xavier-uniform weights (``init_gain`` on the
        output layer), zero biases."""
        if self.norm is not None:
            self.norm.reset_parameters()
        out = self.lin2 if self.lin2 is not None else self.lin1
        for lin in (self.lin1, self.lin2):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight, gain=self.init_gain if lin is out else 1.0)
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Project features.

        Args:
            x: features of one modality.

        Returns:
            The projected features.

        Raises:
            ValueError: ``x`` is not 2-d with ``in_dim`` columns.

        Shapes:
            x (N, D_in) -> (N, D)
        """
        if x.dim() != 2 or x.size(1) != self.in_dim:
            raise ValueError(
                f"ModalityProjection({self.in_dim}, {self.dim}) expects features of shape "
                f"[N, {self.in_dim}], got {list(x.shape)}"
            )
        if self.norm is not None:
            x = self.norm(x)
        x = F.dropout(x, self.dropout, self.training)
        x = self.lin1(x)  # [N, D] or [N, hidden]
        if self.lin2 is not None:
            x = F.dropout(F.gelu(x), self.dropout, self.training)
            x = self.lin2(x)  # [N, D]
        return x

    def __repr__(self) -> str:
        extra = ""
        if self.hidden is not None:
            extra += f", hidden={self.hidden}"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.norm is None:
            extra += ", norm=False"
        if self.init_gain != 1.0:
            extra += f", init_gain={self.init_gain}"
        return f"{self.__class__.__name__}({self.in_dim}, {self.dim}{extra})"


__all__ = ["ModalityProjection"]
