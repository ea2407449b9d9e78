"""Full-ranking top-K evaluation: accuracy and beyond-accuracy metrics.

Protocol (MMRec / RecBole "full sort"): every user with at least one interaction in the
evaluated split scores every item; the items the user interacted with in the splits before it
are masked (training items when validating; training and validation items when testing;
training items only with ``mask="train"``); the top K are compared with the held-out items.
Users are scored in batches, so the score matrices never outgrow one ``batch x items`` (the
scorer's, and the copy that is masked).

Metric definitions, per user with truth set T (|T| >= 1) and top-K list L, then averaged over
users (MMRec's ``utils/metrics.py``; users with no truth item are not averaged):

* ``recall@K``    = |L ∩ T| / |T|
* ``precision@K`` = |L ∩ T| / K
* ``hit@K``       = 1 if L ∩ T is non-empty else 0
* ``mrr@K``       = 1 / (rank of the first hit in L), 0 without a hit
* ``ndcg@K``      = DCG / IDCG, DCG = sum over hits at rank r of 1 / log2(r + 1),
  IDCG = sum_{r=1..min(|T|, K)} 1 / log2(r + 1)

Beyond accuracy, over the same users:

* ``coverage@K``  = distinct items in all top-K lists / number of items that could be ranked
  (cold-start items held out of the lists are not counted)
* ``novelty@K``   = mean self-information ``-log2(pop_i / sum pop)`` of the recommended items
  (per list, then over users); ``pop`` is the item's training interaction count, and an
  item never seen in training counts as seen once (so its novelty is finite, the largest)
* ``diversity@K`` = intra-list diversity, the mean over pairs of recommended items of
  ``1 - cos(v_a, v_b)`` (per list, then over users), from given item vectors
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrec.errors import ConfigError
from mmrec.interactions import Interactions

ScoreFn = Callable[[np.ndarray], "Tensor | np.ndarray"]
MASKS = ("all", "train")


class NonFiniteScores(ValueError):
    """A score function gave NaN scores (weights gone NaN, or so large that the scores overflow)."""
_DIVERSITY_BATCH = 1024  # users per chunk of the (B, K, K) similarity tensor, fewer where it would pass SCORE_BYTES
# rank_topk scores fewer users at a time than asked where a batch's (B, N) float32 scores would pass
# this (at 1,024 users, from 65k items): 820 MB at 200k items became 256 MB, in the same time.
SCORE_BYTES = 256 * 2**20


def score_users(user_vecs: np.ndarray | Tensor, item_vecs: Tensor, excluded: np.ndarray | None,
                users: np.ndarray) -> Tensor:
    """A :data:`ScoreFn` (bind the first three with ``functools.partial``): ``[B, N]`` dot products
    of ``users``' vectors with every item's, ``-inf`` for the ``excluded`` items (``[N]`` bool:
    the items held out of a cold-start model's training), which are then never ranked."""
    rows = torch.as_tensor(np.asarray(users), device=item_vecs.device)
    s = torch.as_tensor(user_vecs, device=item_vecs.device)[rows] @ item_vecs.T  # [B, N]
    if excluded is not None:
        s[:, torch.as_tensor(np.asarray(excluded, bool), device=s.device)] = float("-inf")
    return s


def rank_topk(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix,
    batch_size: int = 1024,
    *,
    progress: bool = False,
    fresh_scores: bool = False,
) -> np.ndarray:
    """Top-``k`` items of each user by score, with excluded items never recommended.

    Args:
        score_fn: maps a batch of user indices ``(B,)`` to scores over all items ``(B, N)``
            (a torch tensor on any device, or a numpy array); called under ``torch.no_grad``.
            Its output is not modified, unless ``fresh_scores``.
        users: the user indices to rank for.
        k: list length.
        exclude: ``(U, N)`` CSR; row ``u``'s items get score ``-inf`` for user ``u``.
        batch_size: users per ``score_fn`` call, default 1024; fewer where the ``(B, N)``
            float32 scores would pass ``SCORE_BYTES`` (256 MB).
        progress: show a progress bar, default ``False``.
        fresh_scores: ``score_fn`` returns a new float32 tensor at each call (as
            :func:`score_users` does), which is masked in place instead of copied first: half the
            memory, 1.3-1.4x faster at 200k items.

    Returns:
        Item indices, best first. A slot stays ``-1`` when the user has fewer than ``k``
        items left after exclusion. Equal scores rank the lower item index first, so a list is
        the start of any longer one (``torch.topk``'s own order of ties changed with ``k``).
        Scores are ranked in float32, or in float64 when ``score_fn`` returns float64 or
        integers past 2**24 (which float32 would round together; unsigned 16-64 bit ones always).

    Raises:
        ValueError: ``k`` or ``batch_size`` < 1, scores of the wrong shape, NaN scores.

    Shapes:
        users (B_total,) -> (B_total, K) int64
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    users = np.asarray(users, dtype=np.int64)
    exclude = sp.csr_matrix(exclude)
    num_items = exclude.shape[1]
    kk = min(k, num_items)
    out = np.full((len(users), k), -1, dtype=np.int64)
    if num_items == 0:  # nothing to rank: every slot empty
        return out
    batch_size = min(batch_size, max(1, SCORE_BYTES // (4 * max(num_items, 1))))
    starts = range(0, len(users), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, disable=not progress, desc="ranking", unit="batch"):
            batch = users[start : start + batch_size]
            scores = torch.as_tensor(score_fn(batch))
            if scores.shape != (len(batch), num_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)}, expected ({len(batch)}, {num_items})"
                )
            # [B, N], ours to mask: the scorer's own when it says so (a new float32 tensor), else a copy
            # float64 as given; integers in float64 only when float32 would round some (past 2**24, as
            # popularity counts rarely are: the batch budget counts 4 bytes a score)
            wide = scores.dtype == torch.float64 or (
                not (scores.dtype.is_floating_point or scores.dtype == torch.bool) and scores.numel() > 0
                and _beyond_float32(scores))
            if not (fresh_scores and scores.dtype == torch.float32):
                scores = scores.to(torch.float64 if wide else torch.float32, copy=True)
            sub = exclude[batch]
            rows = np.repeat(np.arange(len(batch)), np.diff(sub.indptr))
            rows_t = torch.from_numpy(rows).to(scores.device)
            cols_t = torch.from_numpy(sub.indices.astype(np.int64)).to(scores.device)
            scores[rows_t, cols_t] = -torch.inf
            # [B, K + 1]: the one past the list tells whether a tie crosses its end
            values, index = torch.topk(scores, min(kk + 1, num_items), dim=1)
            if torch.isnan(values).any():  # topk ranks NaN above every number: any NaN shows here
                raise NonFiniteScores("score_fn returned NaN scores")
            values, index = _ties_by_index(scores, values, index, kk)
            index[values == -torch.inf] = -1
            out[start : start + len(batch), :kk] = index.cpu().numpy()
    return out


def _beyond_float32(scores: Tensor) -> bool:
    """Whether integer scores hold a value float32 would round (past 2**24 either way)."""
    try:
        return max(-int(scores.min()), int(scores.max())) > 2**24
    except (NotImplementedError, RuntimeError):  # (torch has no min of uint16 / 32 / 64): rank them in float64
        return True


def _ties_by_index(scores: Tensor, values: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk``'s lists (``k`` + 1 long, or all ``N`` items), made the first ``k`` items by
    (score descending, index ascending): among items tied at the last score kept, the lowest
    indices, and ties ordered by index.

    Shapes:
        scores (B, N), values (B, K'), index (B, K') -> (B, k), (B, k)
    """
    crosses = values[:, k] == values[:, k - 1] if values.shape[1] > k else torch.zeros(len(values), dtype=torch.bool)
    values, index = values[:, :k], index[:, :k].clone()
    last = values[:, -1:]  # [B, 1]
    kept = (values == last).sum(dim=1)  # of the tied items, how many topk kept
    over = crosses.to(values.device) & (last[:, 0] > -torch.inf)  # there were more to choose from
    n = scores.shape[1]
    # The tied items keyed N - index (the others -1), the top `kept` of them: the lowest indices,
    # ascending. Rows in slices (views, no copies; rare with learned float scores, every row with
    # counts as scores), their [R, N] keys and mask within SCORE_BYTES as the scores are.
    chunk = max(1, SCORE_BYTES // (5 * max(n, 1)))
    descending = torch.arange(n, 0, -1, dtype=torch.int32 if n < 2**31 else torch.int64, device=scores.device)
    for a in range(0, len(values), chunk) if over.any() else ():
        b = a + chunk
        want = torch.where(over[a:b], kept[a:b], 0)  # [R]: none for the rows without a crossing tie
        if not want.any():
            continue
        key = torch.where(scores[a:b] == last[a:b], descending, -1)  # [R, N]
        _, lowest = key.topk(int(want.max()), dim=1)  # [R, M]
        j = torch.arange(lowest.shape[1], device=scores.device)
        fill = j < want[:, None]  # [R, M]: each row's first `kept` of them
        slots = k - want[:, None] + j  # [R, M]: the list's last `kept` slots, in order
        rows = torch.arange(a, a + len(want), device=scores.device)[:, None].expand_as(slots)
        index[rows[fill], slots[fill]] = lowest[fill]
    by_index, order = index.sort(dim=1)
    _, by_score = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values, by_index.gather(1, by_score)


def _as_csr(truth: sp.spmatrix | Sequence[np.ndarray], rows: int, num_items: int | None) -> sp.csr_matrix:
    if sp.issparse(truth):
        m = sp.csr_matrix(truth, copy=True)
    else:
        lengths = [len(t) for t in truth]
        parts = [np.asarray(t, dtype=np.int64) for t in truth]
        indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if num_items is None:
            raise ValueError("num_items is required when truth is a list of arrays")
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(truth), num_items))
    if m.shape[0] != rows:
        raise ValueError(f"truth has {m.shape[0]} rows but topk has {rows}")
    if num_items is not None and m.shape[1] != num_items:
        raise ValueError(f"truth has {m.shape[1]} item columns but num_items is {num_items}")
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def evaluate_ranking(
    topk: np.ndarray,
    truth: sp.spmatrix | Sequence[np.ndarray],
    ks: Sequence[int] = (10, 20),
    *,
    num_items: int | None = None,
    item_popularity: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
    candidates: int | None = None,
) -> dict[str, float]:
    """Metrics of top-K lists against held-out items (definitions in the module docstring).

    Args:
        topk: ranked item indices per user, ``-1`` for empty slots (as from :func:`rank_topk`).
        truth: held-out items of the same users, row-aligned with ``topk``: a CSR matrix or a
            list of index arrays.
        ks: list lengths to report, each at most ``topk.shape[1]``; default (10, 20).
        num_items: ``N``; default the column count of a CSR ``truth`` (required for lists).
        item_popularity: training interaction count per item; adds ``novelty@K``.
        item_vectors: one vector per item; adds ``diversity@K`` (absent when no list holds two
            items: it is a mean over pairs).
        candidates: how many items the lists could hold, ``coverage@K``'s denominator (items
            never ranked, such as cold-start items held out, left out); default ``N``.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "precision@10": ..., "hit@10": ..., "mrr@10": ...,
        "coverage@10": ..., ["novelty@10", "diversity@10",] ..., "num_users": ...}``
        where ``num_users`` counts the users with at least one truth item.

    Raises:
        ValueError: a K larger than the lists, misaligned inputs, an item index outside
            ``[-1, N)`` or twice in one list, no user with a truth item.

    Shapes:
        topk (R, K_max), truth (R, N), item_popularity (N,), item_vectors (N, D)
    """
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D (users, K), got shape {topk.shape}")
    if any(k < 1 or k > topk.shape[1] for k in ks):
        raise ValueError(f"each K must lie in [1, {topk.shape[1]}] (the list length), got {tuple(ks)}")
    truth_m = _as_csr(truth, topk.shape[0], num_items)
    num_items = truth_m.shape[1]
    if topk.size and (topk.min() < -1 or topk.max() >= num_items):  # (an index N counted as the next row's item 0)
        raise ValueError(f"topk holds item indices outside [-1, {num_items}): {topk.min()} .. {topk.max()}")
    ordered = np.sort(topk, axis=1)
    twice = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1)  # (a hit counted twice)
    if twice.any():
        raise ValueError(f"topk row {int(np.flatnonzero(twice)[0])} holds an item index more than once")
    pos_len_all = np.diff(truth_m.indptr)
    evaluated = pos_len_all > 0
    if not evaluated.any():
        raise ValueError("no user has a truth item: nothing to evaluate")
    truth_m = truth_m[evaluated]
    top = topk[evaluated]  # [R, K_max]
    pos_len = pos_len_all[evaluated]
    R = len(top)
    valid = top >= 0

    # Hit matrix by key lookup: (row, item) -> row * N + item, sorted for the CSR truth.
    truth_keys = np.repeat(np.arange(R), pos_len) * num_items + truth_m.indices
    truth_keys.sort()
    top_keys = np.arange(R)[:, None] * num_items + top  # [R, K_max]
    at = np.minimum(np.searchsorted(truth_keys, top_keys), len(truth_keys) - 1)
    hits = valid & (truth_keys[at] == top_keys)  # [R, K_max]

    discount = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))  # [K_max]
    ideal = np.cumsum(discount)  # IDCG for 1..K_max truth items
    if item_popularity is not None:
        pop = np.maximum(np.asarray(item_popularity, dtype=np.float64), 1.0)
        if pop.shape != (num_items,):
            raise ValueError(f"item_popularity must have shape ({num_items},), got {pop.shape}")
        info = -np.log2(pop / np.asarray(item_popularity, dtype=np.float64).sum().clip(min=1.0))  # [N]
    unit = None
    if item_vectors is not None:
        vecs = np.asarray(item_vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != num_items:
            raise ValueError(f"item_vectors must have shape ({num_items}, D), got {vecs.shape}")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        unit = vecs / np.maximum(norms, 1e-12)  # a zero vector has cosine 0 with everything

    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        v = valid[:, :k]
        n_hit = h.sum(axis=1)
        out[f"recall@{k}"] = float(np.mean(n_hit / pos_len))
        out[f"ndcg@{k}"] = float(np.mean((h * discount[:k]).sum(axis=1) / ideal[np.minimum(pos_len, k) - 1]))
        out[f"precision@{k}"] = float(np.mean(n_hit / k))
        out[f"hit@{k}"] = float(np.mean(n_hit > 0))
        first = h.argmax(axis=1)  # first hit's 0-based rank (0 when no hit, masked below)
        out[f"mrr@{k}"] = float(np.mean(np.where(n_hit > 0, 1.0 / (first + 1), 0.0)))
        out[f"coverage@{k}"] = float(len(np.unique(top[:, :k][v])) / (candidates or num_items))
        if item_popularity is not None:
            per_list = np.where(v, info[np.where(v, top[:, :k], 0)], 0.0).sum(axis=1)
            n = v.sum(axis=1)
            if (n > 0).any():  # (every list empty: undefined, and NaN is no JSON; as diversity below)
                out[f"novelty@{k}"] = float(np.mean(per_list[n > 0] / n[n > 0]))
        if unit is not None:
            diversity = _intra_list_diversity(top[:, :k], v, unit)
            if not math.isnan(diversity):  # (no list of two items: undefined, and NaN is no JSON)
                out[f"diversity@{k}"] = diversity
    out["num_users"] = int(R)  # a count (the dict's other values are means)
    return out


def _diversity_chunk(k: int, dim: int, itemsize: int) -> int:
    """Users per chunk of :func:`_intra_list_diversity`: at most ``_DIVERSITY_BATCH``, and fewer
    where their arrays would pass ``SCORE_BYTES``, at about 25 bytes a pair of each user's
    ``[K, K]`` arrays (cosines, the pair mask, the distances) and its ``[K, D]`` vectors (at
    K = 1000, 1,024 users at once took over 20 GB)."""
    return max(1, min(_DIVERSITY_BATCH, SCORE_BYTES // (k * k * 25 + k * dim * itemsize)))


def _intra_list_diversity(top: np.ndarray, valid: np.ndarray, unit: np.ndarray) -> float:
    """Mean over users (with >= 2 items) of mean pairwise ``1 - cos`` within the list."""
    k = top.shape[1]
    off_diagonal = ~np.eye(k, dtype=bool)
    per_user = []
    chunk = _diversity_chunk(k, unit.shape[1], unit.itemsize)
    for start in range(0, len(top), chunk):
        t, v = top[start : start + chunk], valid[start : start + chunk]
        x = unit[np.where(v, t, 0)]  # [B, K, D]
        cos = x @ x.transpose(0, 2, 1)  # [B, K, K]
        pair = v[:, :, None] & v[:, None, :] & off_diagonal  # [B, K, K]
        n_pairs = pair.sum(axis=(1, 2))
        dist = np.where(pair, 1.0 - cos, 0.0).sum(axis=(1, 2))
        per_user.append(dist[n_pairs > 0] / n_pairs[n_pairs > 0])
    scores = np.concatenate(per_user)
    return float(scores.mean()) if len(scores) else float("nan")


def evaluate(
    score_fn: ScoreFn,
    inter: Interactions,
    split: str = "test",
    mask: str = "all",
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    *,
    item_vectors: np.ndarray | None = None,
    progress: bool = False,
    fresh_scores: bool = False,
    candidates: int | None = None,
    novelty: bool = True,
) -> dict[str, float]:
    """Full-ranking evaluation of a scorer on the ``valid`` or ``test`` split.

    Args:
        score_fn: see :func:`rank_topk`.
        inter: split interactions.
        split: ``"valid"`` or ``"test"`` (default).
        mask: which of the user's other interactions are excluded from ranking:
            ``"all"`` (default; RecBole and production convention): every interaction outside
            the evaluated split that the evaluation may know of -- train when validating,
            train + valid when testing -- and the pairs rated below a rating threshold
            (``inter.seen``), which serving never recommends back; ``"train"``: train only
            (MMRec's convention, used by the published numbers in the data README).
        ks: list lengths, default (10, 20).
        batch_size: users per ``score_fn`` call.
        item_vectors: item vectors for ``diversity@K``; default none.
        progress: show a progress bar.
        fresh_scores: see :func:`rank_topk`.
        candidates: as for :func:`evaluate_ranking` (the items ``score_fn`` does not rule out).
        novelty: report ``novelty@K`` from training popularity (off where the candidates have
            no training interactions, as held-out cold items: it would be a constant).

    Returns:
        :func:`evaluate_ranking`'s dict.

    Raises:
        ConfigError: unknown ``split`` or ``mask``; unsplit interactions.
        ValueError: no user has an interaction in ``split``.
    """
    topk, truth = rank_split(score_fn, inter, split, mask, max(ks), batch_size, progress=progress,
                             fresh_scores=fresh_scores)
    return evaluate_ranking(
        topk,
        truth,
        ks,
        num_items=inter.num_items,
        item_popularity=inter.item_popularity("train") if novelty else None,
        item_vectors=item_vectors,
        candidates=candidates,
    )


def rank_split(
    score_fn: ScoreFn,
    inter: Interactions,
    split: str = "test",
    mask: str = "all",
    k: int = 20,
    batch_size: int = 1024,
    *,
    progress: bool = False,
    fresh_scores: bool = False,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """The top-``k`` lists :func:`evaluate` scores (its ``split`` and ``mask``), for callers that
    measure more on the same lists.

    Returns:
        ``(topk, truth)``: the lists of the users with an interaction in ``split`` (as from
        :func:`rank_topk`) and those users' ``split`` items, row-aligned.

    Raises:
        ConfigError: unknown ``split`` or ``mask``; unsplit interactions.

    Shapes:
        -> topk (R, k) int64, truth (R, N) CSR
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
    if mask not in MASKS:
        raise ConfigError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    truth = inter.user_items(split)
    users = np.flatnonzero(np.diff(truth.indptr))
    if mask == "train" or split == "valid":
        exclude = inter.user_items("train")
    else:
        exclude = inter.user_items(["train", "valid"])
    # "all" also leaves out the pairs rated below the rating threshold: never recommended back,
    # so never ranked here (an evaluated positive excepted: it is never masked)
    below = inter.seen_items() if mask == "all" else sp.csr_matrix(exclude.shape, dtype=np.float32)
    if below.nnz:
        exclude = (exclude + (below - below.multiply(truth))).tocsr()
        exclude.eliminate_zeros()
        exclude.data[:] = 1.0
    topk = rank_topk(score_fn, users, k, exclude, batch_size, progress=progress, fresh_scores=fresh_scores)
    return topk, truth[users]
