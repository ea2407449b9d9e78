"""Explanations: why an item was recommended or found similar, and what each modality adds.

Three questions, three functions:

* :func:`explain_recommendations`: for each item recommended to a user, the item's attention
  weights over its tokens (how much of its vector comes from text, image, audio, id) and the
  user's history items most like it (:meth:`~mmrec.recommender.Recommender.liked_items`:
  every split of the training file, as the user knows them, not only those training used). A
  trained model scores ``user . item`` and the user's vector is propagated from the training
  items, so the history items whose vectors point the result's way pull it up; they are ranked
  by cosine, not by the dot product, which would name the same few long-vectored (popular)
  history items under every result. For a validation or test item, or a user training never saw
  (whose vector is its random start, as ``recommend`` warns), the item is one like the result,
  not one that placed the user.
* :func:`explain_similar`: for each item found similar to a query item, its attention weights
  and, per modality both items have, the cosine of their features: what each modality alone
  says about the pair (there is no user to name history items of).
* :func:`explain_item`: one item's attention weights and its nearest neighbours in each
  modality alone (exact cosine over that modality's features, among the items that have it)
  and fused (the index itself), so a user sees what each modality contributes.

The first two attach a plain dict to each :class:`~mmrec.item_index.Result` as
``result.explanation`` (JSON-ready; :func:`why_line` renders it as one short line)::

    {"attention": {"text": 0.62, "id": 0.38},
     "history": [{"item_id": 7, "name": "Heat (1995)", "similarity": 0.8123}, ...]}   # recommend
    {"attention": {"text": 0.5, "image": 0.5},
     "modality_similarity": {"text": 0.81, "image": 0.4}}                            # similar

Explanations are computed by brute force over the few rows involved (or one modality's
features for :func:`explain_item`): they are read by people, not on the serving hot path.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrec.errors import MMRecError, check_count
from mmrec.item_index import ItemIndex, Result, shown_fields
from mmrec.typing import ItemId

if TYPE_CHECKING:
    from mmrec.recommender import Recommender

logger = logging.getLogger(__name__)

DEFAULT_HISTORY = 3  # history items named per recommended item
DECIMALS = 4  # rounding of the numbers in an explanation
TITLE_PROBE = 100  # items whose display fields are looked at for a title
FUSED = "fused"  # the key of the index's own neighbours in :class:`ItemExplanation`


def fused_key(index: ItemIndex) -> str:
    """:data:`FUSED`, or ``"fused (index)"`` when a modality of ``index`` is itself named so."""
    return FUSED if FUSED not in index.modalities else f"{FUSED} (index)"


# --- pieces --------------------------------------------------------------------------------
def title_field(index: ItemIndex) -> str | None:
    """The display field naming an item: ``title`` if the catalog has one (a text field, or a
    display field of its first items), else its first text field."""
    fields = index.manifest.get("text_fields") or []
    if "title" in fields or any("title" in it["fields"] for it in index.items[:TITLE_PROBE]):
        return "title"
    return fields[0] if fields else None


def display_name(index: ItemIndex, item_id: ItemId) -> str:
    """An item's title (see :func:`title_field`), or its id when it has none."""
    fields = index.items[index._pos[item_id]]["fields"]
    label = fields.get(title_field(index) or "title")
    return str(label) if label else str(item_id)


def attention_weights(index: ItemIndex, item_id: object) -> dict[str, float]:
    """Token -> attention weight of one item (rounded), in ``manifest["tokens"]`` order.

    Tokens an item lacks (no text, or the id of an item added after training) weigh exactly 0.
    """
    return _attention_row(index, index._pos[index.resolve_id(item_id)])


def _attention_row(index: ItemIndex, row: int) -> dict[str, float]:
    tokens = index.manifest["tokens"]
    return {t: round(float(w), DECIMALS) for t, w in zip(tokens, index.attention[row])}


def _raw_vectors(index: ItemIndex, rows: np.ndarray) -> np.ndarray:
    """``[R, D]`` float64 vectors the index scores by inner product (the MIPS coordinate removed)."""
    return index.vectorizer.mips.original(index.vectors[rows]).astype(np.float64)


def _unit_rows(x: np.ndarray, has: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` ``[N, D_m]`` scaled to unit norm, zero where ``has`` (default: every row) is
    False or the row is 0."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)  # [N]
    ok = norms > 0 if has is None else has & (norms > 0)
    return np.where(ok[:, None], x / np.where(ok, norms, 1.0)[:, None], 0.0)  # [N, D_m]


def _centred(index: ItemIndex, modality: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """``[R, D_m]`` features of ``rows`` less the modality's catalog mean when the index measures
    content similarity from it (:func:`fusion.fixed.modality_centers`)."""
    x = index.features[modality][rows]
    center = index.centers.get(modality)
    return x if center is None else x - center


def _has_modality(index: ItemIndex, modality: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """``[R]`` bool: the items of ``rows`` (default all) have this modality (present and a non-zero
    feature vector)."""
    return index.present[modality][rows] & (np.abs(index.features[modality][rows]).sum(1) > 0)


def _modality_units(index: ItemIndex, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """``([N] has, [N, D_m] float32 unit rows of the centred features)`` of a modality, kept on
    the index until its feature arrays are replaced (an add or remove replaces them, never
    writes into them): an explanation then costs one product, not a pass over the catalog."""
    cache = index._explain_units
    feats, present = index.features[modality], index.present[modality]
    got = cache.get(modality)
    if got is None or got[0] is not feats or got[1] is not present:
        has = _has_modality(index, modality)
        got = cache[modality] = (feats, present, has, _unit_rows(_centred(index, modality), has).astype(np.float32))
    return got[2], got[3]


# --- recommendations -----------------------------------------------------------------------
def history_contributions(
    rec: "Recommender", user_id: object, item_ids: Sequence[object], history: int = DEFAULT_HISTORY
) -> list[list[dict[str, Any]]]:
    """For each item, the user's history items most similar to it, best first.

    The history is the user's positives still in the index (:meth:`Recommender.liked_items`):
    an item the user rated below the training rating threshold does not explain a recommendation
    (in directories written before liked items were stored, every known item counts as liked).
    The similarity of a history item ``h`` to a result ``r`` is the cosine of their raw vectors
    (the direction of the score the model uses, without the length that would let a few
    popular history items explain every result); only positive similarities count (an item
    pointing away from the result did not pull it up), and an item is never its own
    explanation (it can be recommended back with ``exclude_known=False``).

    Args:
        rec: a trained recommender.
        user_id: the user.
        item_ids: the items to explain (usually the recommended ones).
        history: how many history items to name per item at most, default 3.

    Returns:
        per item, up to ``history`` dicts ``{"item_id", "name", "similarity"}``.

    Raises:
        MMRecError: a content index (no users), an unknown user or item, ``history < 1``.
    """
    if not rec.trained:
        raise MMRecError(
            "this directory holds a content index, not a trained model: it has no users whose history could "
            "explain a recommendation (explain similar items instead, or run `mmrec train`)"
        )
    history = check_count(history, "the number of history items to name")
    index = rec.items
    liked = rec.liked_items(user_id)
    if not liked:  # else every result would read "no item of your history is alike"
        logger.warning("user '%s' has no liked item left in the index (removed since training, or rated below the "
                       "threshold): no history item can explain the results", user_id)
    return _items_like(index, liked, item_ids, history)


def _items_like(
    index: ItemIndex, known: list[ItemId], item_ids: Sequence[object], history: int
) -> list[list[dict[str, Any]]]:
    """Per item, the ``known`` items (all in ``index``) most similar to it: as :func:`history_contributions`."""
    h_rows = np.array([index._pos[i] for i in known], dtype=np.int64)  # [H]
    r_rows = np.array([index._pos[index.resolve_id(i)] for i in item_ids], dtype=np.int64)  # [K]
    sims = _unit_rows(_raw_vectors(index, r_rows)) @ _unit_rows(_raw_vectors(index, h_rows)).T  # [K, H] cosines
    out = []
    for k, row in enumerate(r_rows):
        s = np.where(h_rows == row, -np.inf, sims[k])  # [H]
        best = [j for j in np.argsort(-s, kind="stable")[:history] if s[j] > 0]
        out.append([
            {"item_id": known[j], "name": display_name(index, known[j]),
             "similarity": float(f"{s[j]:.{DECIMALS}g}")}  # significant digits: a small positive one is not 0.0
            for j in best
        ])
    return out


def explain_recommendations(
    rec: "Recommender", user_id: object, results: list[Result], history: int = DEFAULT_HISTORY
) -> list[Result]:
    """Attach ``{"attention", "history"}`` explanations to a user's recommendations (in place).

    Args:
        rec: the trained recommender the results came from.
        user_id: the user they were recommended to.
        results: :meth:`Recommender.recommend` results.
        history: history items named per result at most, default 3.

    Returns:
        ``results``, each with ``explanation`` set.

    Raises:
        MMRecError: as :func:`history_contributions`.
    """
    contrib = history_contributions(rec, user_id, [r.item_id for r in results], history)
    return _attach_history(rec.items, results, contrib)


def _attach_history(index: ItemIndex, results: list[Result], contrib: list[list[dict[str, Any]]]) -> list[Result]:
    """Set each result's ``{"attention", "history"}`` explanation (in place)."""
    for r, c in zip(results, contrib):
        r.explanation = {"attention": attention_weights(index, r.item_id), "history": c}
    return results


def explain_history(index: ItemIndex, history: Sequence[ItemId], results: list[Result],
                    explain_items: int = DEFAULT_HISTORY) -> list[Result]:
    """Attach ``{"attention", "history"}`` explanations to recommendations for a given history
    (:meth:`Recommender.recommend_history`; in place): as :func:`explain_recommendations`, the
    history items most similar to each result by the cosine of the index's vectors.

    Args:
        index: the index the results came from (content or trained).
        history: the history's item ids, all in ``index``.
        results: the recommendations.
        explain_items: history items named per result at most, default 3.

    Raises:
        MMRecError: ``explain_items < 1``.
    """
    explain_items = check_count(explain_items, "the number of history items to name")
    contrib = _items_like(index, list(history), [r.item_id for r in results], explain_items)
    return _attach_history(index, results, contrib)


# --- similar items -------------------------------------------------------------------------
def modality_similarity(index: ItemIndex, a: object, b: object) -> dict[str, float]:
    """Cosine of the two items' features in each modality both have (rounded), index order;
    measured from the modality's catalog mean when the index is (as the index's own scores)."""
    ra, rb = (index._pos[index.resolve_id(i)] for i in (a, b))
    out = {}
    for m in index.modalities:
        has = _has_modality(index, m, [ra, rb])
        if has.all():
            u = _unit_rows(_centred(index, m, [ra, rb]))  # [2, D_m]
            out[m] = round(float(u[0] @ u[1]), DECIMALS)
    return out


def explain_similar(index: ItemIndex, item_id: object, results: list[Result]) -> list[Result]:
    """Attach ``{"attention", "modality_similarity"}`` explanations to similar items (in place).

    Args:
        index: the index the results came from.
        item_id: the query item.
        results: :meth:`ItemIndex.similar` results.

    Returns:
        ``results``, each with ``explanation`` set.

    Raises:
        MMRecError: an unknown item.
    """
    query = index.resolve_id(item_id)
    for r in results:
        r.explanation = {
            "attention": attention_weights(index, r.item_id),
            "modality_similarity": modality_similarity(index, query, r.item_id),
        }
    return results


# --- one item ------------------------------------------------------------------------------
def modality_neighbours(index: ItemIndex, item_id: object, modality: str, k: int = 5) -> list[Result] | None:
    """The k items closest to an item in one modality alone, by exact cosine of their features
    (measured from the modality's catalog mean when the index is).

    Only items that have the modality are candidates; the item itself is excluded; ties keep
    index order. Scores are the cosines.

    Returns:
        the neighbours, best first, or ``None`` when the item lacks the modality.

    Raises:
        MMRecError: an unknown item or modality, ``k < 1``.
    """
    k = check_count(k)
    if modality not in index.features:
        raise MMRecError(f"this index has no {modality} modality (it has: {', '.join(index.modalities) or 'none'})")
    row = index._pos[index.resolve_id(item_id)]
    if not _has_modality(index, modality, [row])[0]:
        return None
    has, unit = _modality_units(index, modality)  # [N], [N, D_m]
    cos = unit @ unit[row]  # [N]
    cand = np.flatnonzero(has & (np.arange(len(has)) != row))
    top = cand[np.argsort(-cos[cand], kind="stable")[:k]]
    return [Result(index.items[i]["item_id"], float(cos[i]), index.items[i]["fields"]) for i in top]


@dataclass
class ItemExplanation:
    """What makes up one item's vector, and who its neighbours are in each modality and fused.

    Attributes:
        item_id: the item.
        fields: its display fields.
        attention: token -> attention weight (rounded).
        neighbours: modality -> its nearest neighbours in that modality alone (``None`` when the
            item lacks the modality), then ``"fused"`` -> the index's own similar items
            (``"fused (index)"`` when a modality is named ``fused``: :func:`fused_key`).
    """

    item_id: ItemId
    fields: dict[str, str]
    attention: dict[str, float]
    neighbours: dict[str, list[Result] | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            **shown_fields(self.fields, ("item_id", "attention", "neighbours")),
            "attention": self.attention,
            "neighbours": {m: None if rs is None else [r.to_dict() for r in rs] for m, rs in self.neighbours.items()},
        }


def explain_item(index: ItemIndex, item_id: object, k: int = 5) -> ItemExplanation:
    """An item's attention weights and its k nearest neighbours per modality and fused.

    Works on content indexes and trained directories alike: per-modality neighbours use the
    stored modality features, the fused ones the index (:meth:`ItemIndex.similar`).

    Raises:
        MMRecError: an unknown item, ``k < 1``.
    """
    k = check_count(k)
    iid = index.resolve_id(item_id)
    neighbours: dict[str, list[Result] | None] = {m: modality_neighbours(index, iid, m, k) for m in index.modalities}
    neighbours[fused_key(index)] = index.similar(iid, k)
    fields = index.items[index._pos[iid]]["fields"]
    return ItemExplanation(iid, dict(fields), attention_weights(index, iid), neighbours)


# --- text ----------------------------------------------------------------------------------
def format_attention(attention: dict[str, float]) -> str:
    """``text 0.62, id 0.38``."""
    return ", ".join(f"{t} {w:.2f}" for t, w in attention.items())


def _short(text: str, width: int = 40) -> str:
    from mmrec.display import one_line

    return one_line(text, width)


def why_line(explanation: dict[str, Any]) -> str:
    """One readable line for a result's explanation.

    ``text 0.62, id 0.38; like your 'Heat (1995)', 'Speed (1994)'`` for a recommendation,
    ``text 0.50, image 0.50; text sim 0.81, image sim 0.40`` for a similar item.
    """
    parts = [format_attention(explanation.get("attention", {}))]
    if "history" in explanation:
        names = ", ".join(f"'{_short(h['name'])}'" for h in explanation["history"])
        parts.append(f"like your {names}" if names else "no item of your history is alike")
    if "modality_similarity" in explanation:
        sims = explanation["modality_similarity"]
        parts.append(", ".join(f"{m} sim {s:.2f}" for m, s in sims.items()) or "no modality in common")
    return "; ".join(p for p in parts if p)
