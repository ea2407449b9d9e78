"""Training objectives: ranking losses, LightGCN's L2 regulariser, content-to-graph alignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pos_neg(name: str, pos_scores: Tensor, neg_scores: Tensor, need_2d: bool) -> None:
    if pos_scores.dim() != 1:
        raise ValueError(f"{name}: pos_scores must be 1-d [B], got {list(pos_scores.shape)}")
    ok_dims = (2,) if need_2d else (1, 2)
    if neg_scores.dim() not in ok_dims or neg_scores.size(0) != pos_scores.size(0):
        want = "[B, S]" if need_2d else "[B] or [B, S]"
        raise ValueError(
            f"{name}: neg_scores must be {want} with B={pos_scores.size(0)}, got "
            f"{list(neg_scores.shape)}"
        )


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian personalised ranking loss (Rendle et al., UAI 2009), averaged.

    ``mean softplus(neg - pos) = mean -log sigmoid(pos - neg)``; with several negatives per
    positive the mean runs over all ``B * S`` pairs.

    Args:
        pos_scores: score of each user's positive item.
        neg_scores: score of one or ``S`` sampled negatives per positive.

    Returns:
        Scalar loss.

    Raises:
        ValueError: mismatched shapes.

    Shapes:
        pos_scores (B,), neg_scores (B,) or (B, S) -> ()
    """
    _check_pos_neg("bpr_loss", pos_scores, neg_scores, need_2d=False)
    if neg_scores.dim() == 2:
        pos_scores = pos_scores.unsqueeze(1)  # [B, 1]
    return F.softplus(neg_scores - pos_scores).mean()


def sampled_softmax_loss(pos_scores: Tensor, neg_scores: Tensor, temperature: float = 1.0) -> Tensor:
    """Sampled softmax: cross-entropy of the positive among itself and S sampled negatives.

    ``mean_b [ -pos_b / T + logsumexp([pos_b, neg_b1, ..., neg_bS] / T) ]``.

    Args:
        pos_scores: score of each user's positive item.
        neg_scores: scores of ``S`` sampled negatives per positive.
        temperature: softmax temperature ``T > 0``, default ``1.0``; small values sharpen.

    Returns:
        Scalar loss.

    Raises:
        ValueError: mismatched shapes or a non-positive temperature.

    Shapes:
        pos_scores (B,), neg_scores (B, S) -> ()
    """
    _check_pos_neg("sampled_softmax_loss", pos_scores, neg_scores, need_2d=True)
    if not temperature > 0:
        raise ValueError(f"sampled_softmax_loss: temperature must be > 0, got {temperature}")
    logits = torch.cat([pos_scores.unsqueeze(1), neg_scores], dim=1) / temperature  # [B, 1+S]
    target = torch.zeros(pos_scores.size(0), dtype=torch.long, device=pos_scores.device)
    return F.cross_entropy(logits, target)


def _check_regularizer(name: str, tensors: tuple[Tensor, ...], batch_size: int) -> None:
    if not tensors:
        raise ValueError(f"{name} needs at least one tensor")
    if batch_size < 1:
        raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")


def l2_regularization(*tensors: Tensor, batch_size: int) -> Tensor:
    """LightGCN's regulariser: ``sum_t ||t||_F^2 / 2 / batch_size``.

    Apply it to the layer-0 embeddings of the batch (users, positive and negative items), as
    the reference LightGCN implementation does, and multiply by the weight decay yourself.

    Args:
        *tensors: the tensors to penalise (at least one).
        batch_size: ``B``, the number of (user, positive item) rows in the batch, however many
            negatives each has (as LightGCN's and MMRec's code divide).

    Returns:
        Scalar penalty.

    Raises:
        ValueError: no tensor or a non-positive ``batch_size``.

    Shapes:
        tensors (any) -> ()
    """
    _check_regularizer("l2_regularization", tensors, batch_size)
    total = sum(t.pow(2).sum() for t in tensors)
    return total / 2 / batch_size


def norm_regularization(*tensors: Tensor, batch_size: int) -> Tensor:
    """MMRec's and RecBole's ``EmbLoss``: ``sum_t ||t||_F / batch_size`` (norms, not squared).

    The regulariser behind the LightGCN numbers those toolkits publish; with it, a weight
    ``w`` pulls a row ``e`` by ``w e / (||t||_F B)``, far weaker than :func:`l2_regularization`
    for the same ``w``. Arguments, errors and shapes as :func:`l2_regularization`.
    """
    _check_regularizer("norm_regularization", tensors, batch_size)
    return sum(torch.linalg.vector_norm(t) for t in tensors) / batch_size


def alignment_loss(a: Tensor, b: Tensor) -> Tensor:
    """Cosine alignment ``mean_n (1 - cos(a_n, b_n))``, in ``[0, 2]``.

    Used to keep content-only item vectors (the cold-start and query path) in the space of the
    graph-propagated item vectors: ``alignment_loss(model.content_only(f, p), item_vecs.detach())``
    pulls the content path towards the graph without letting the graph drift towards content.
    Only directions are aligned, so it pairs with cosine / normalised retrieval
    (``FusedGraphModel.normalize_output``). A zero row has cosine 0 (loss 1).

    Args:
        a: one set of vectors (gradients flow into it).
        b: the vectors to align with, row by row (detach it to make it a fixed target).

    Returns:
        Scalar loss.

    Raises:
        ValueError: ``a`` and ``b`` are not the same ``[N, D]`` shape.

    Shapes:
        a (N, D), b (N, D) -> ()
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"alignment_loss expects two [N, D] tensors of one shape, got {list(a.shape)} and "
            f"{list(b.shape)}"
        )
    return (1.0 - F.cosine_similarity(a, b, dim=1)).mean()


__all__ = ["alignment_loss", "bpr_loss", "l2_regularization", "norm_regularization", "sampled_softmax_loss"]
