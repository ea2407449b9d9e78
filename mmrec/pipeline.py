"""From files to a trained recommender directory: the ``mmrec train`` / ``evaluate`` jobs.

``fit`` reads a catalog (optional), precomputed ``.npy`` features (optional) and an interaction
file; encodes the catalog with frozen encoders (cached); splits; trains a
:class:`~fusion.FusedGraphModel`; reports test metrics; and writes one directory that both
serves (FAISS index of the trained item vectors) and reloads the model.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.fixed import modality_centers
from index.mips import MipsTransform
from mmrec.catalog import Catalog, load_catalog
from mmrec.coldstart import evaluate_cold, hold_out_items, warm_part, with_content
from mmrec.config import TrainConfig, config_changes
from mmrec.errors import ConfigError, DataError, MMRecError, Problem, check_count, missing_file
from mmrec.foldin import select_fold_in_reg
from mmrec.interactions import Interactions, check_columns, load_interactions
from mmrec.item_index import (
    ItemIndex,
    catalog_encoders,
    check_device,
    check_factory,
    check_out,
    encode_catalog,
    encoded_modalities,
    refuse_skipped_rows,
    same_device,
)
from mmrec.metrics import evaluate, score_users
from mmrec.recommender import Recommender, TrainedContent
from mmrec.split import ensure_split
from mmrec.train import TrainData, Trainer, TrainResult, build_model, seed_everything
from mmrec.typing import ItemId

logger = logging.getLogger(__name__)


SKIP_WITH_FEATURES = ("--skip-invalid cannot be used with --features beside a catalog: the feature files' rows "
                      "follow the catalog's, and skipping catalog rows would misalign them; fix the catalog, or "
                      "drop the rows from the catalog and the feature files alike")


@dataclass
class Content:
    """Item space and content features of a training run.

    Attributes:
        item_ids: the item space (catalog order, or ``0..N-1`` rows of ``.npy`` features, or
            ``None`` to take the interacted items).
        features: modality -> ``[N, D_m]`` float32.
        present: modality -> ``[N]`` bool.
        records: display fields per item.
        hashes: content hashes per item.
        encoders: manifest specs of the encoders used.
        catalog: the catalog, when one was given.
        encoder_objects: the loaded encoders (modality -> TextEncoder / ImageEncoder), reused
            when fine-tuning.
        encoder_root: the directory that ``bundled`` encoder specs are relative to (the source
            model when fine-tuning from one, see :mod:`mmrec.transfer`); their files are copied
            into the new directory so it stands alone.
    """

    item_ids: list | None
    features: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    records: list[dict[str, str]] | None
    hashes: list[dict[str, str]] | None
    encoders: dict[str, dict]
    catalog: Catalog | None = None
    encoder_objects: dict[str, Any] = field(default_factory=dict)
    encoder_root: Path | None = None
    feature_files: list[str] = field(default_factory=list)  # the .npy files read, named in errors


def load_npy_features(specs: Mapping[str, str | Path], num_items: int | None) -> dict[str, np.ndarray]:
    """Read ``name -> path.npy`` features, one row per item (row i = item i, as in MMRec)."""
    out = {}
    for name, path in specs.items():
        path = Path(path)
        if not path.is_file():
            raise missing_file(path, f"feature file for modality '{name}'")
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # pickled objects, a text file, a truncated array
            reason = str(e).split(". ")[0]  # numpy's advice on unpickling does not apply here
            raise DataError(path, [Problem(None, None, f"feature file for modality '{name}' is not a numeric "
                                                       f".npy array ({reason})")]) from e
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":  # (timedelta64 counts as a number to numpy)
            what = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(path, [Problem(None, None, f"feature file for modality '{name}' holds {what}, "
                                                       "not real numbers")])
        if x.ndim != 2:
            raise DataError(path, [Problem(None, None, f"features must be 2-d [items, width], got shape {x.shape}")])
        if 0 in x.shape:  # (an empty index was built, or every catalog row had "no content")
            raise DataError(path, [Problem(None, None, f"feature file for modality '{name}' is empty: shape {x.shape} "
                                                       "[items, width]")])
        if num_items is not None and len(x) != num_items:
            raise DataError(path, [Problem(None, None, f"{len(x)} rows, but the catalog has {num_items} items")])
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
            x32 = x.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(x32).all(axis=1))
        if len(bad):
            raise DataError(path, [Problem(int(r) + 1, None, "non-finite feature value (or one beyond float32's "
                                                             "range, 3.4e38)") for r in bad[:20]])
        with np.errstate(over="ignore"):  # (LayerNorm and the cosine square them: NaN, read as a too high --lr)
            bad = np.flatnonzero(~np.isfinite(np.einsum("ij,ij->i", x32, x32)))
        if len(bad):
            raise DataError(path, [Problem(int(r) + 1, None, "feature values too large: the row's squared length "
                                                             "passes float32's range (3.4e38); scale the features "
                                                             "down") for r in bad[:20]])
        out[name] = x32
    return out


def npy_present(x: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the rows of precomputed features that hold a value (an all-zero row is a missing one)."""
    return np.abs(x).sum(axis=1) > 0


def read_catalog(path: str | Path, features: Mapping[str, Any], encoded: Sequence[str], show_progress: bool = True,
                 **catalog_options: Any) -> Catalog:
    """A catalog file read to be encoded beside ``features``: a row needs content in an ``encoded``
    modality unless features give it its content (images are checked only when encoded), and with
    features no row may be skipped, as feature row ``i`` is the file's row ``i``."""
    catalog_options.setdefault("require_content", not features)
    catalog = load_catalog(path, show_progress=show_progress, encoded=list(encoded), **catalog_options)
    if features:
        refuse_skipped_rows(catalog.source, catalog.skipped)
    return catalog


def load_content(
    catalog: str | Path | Catalog | None,
    features: Mapping[str, str | Path] | None,
    *,
    text_encoder: str | Path = "default",
    image_encoder: str | Path | None = "default",
    image_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    loaded_encoders: Mapping[str, tuple[Any, dict]] | None = None,
    device: str = "cpu",
    max_length: int = 256,
    batch_size: int | None = None,
    allow_download: bool = False,
    **catalog_options: Any,
) -> Content:
    """Catalog + encoders (frozen, cached) and/or ``.npy`` features -> :class:`Content`.

    ``loaded_encoders`` (modality -> (encoder, manifest spec)) replaces ``text_encoder`` /
    ``image_encoder``: the catalog is encoded with those (fine-tuning reuses the source
    model's encoders), each only where the catalog has that modality. The encoders run on
    ``device`` (given ones on another device are copied there). ``max_length``,
    ``batch_size`` and ``allow_download`` are the new encoders' options, as for
    :func:`mmrec.item_index.catalog_encoders`.
    """
    features = dict(features or {})
    if catalog is not None and not isinstance(catalog, Catalog):
        encoded = catalog_options.pop("encoded", list(loaded_encoders) if loaded_encoders is not None
                                      else encoded_modalities(text_encoder, image_encoder))
        catalog = read_catalog(catalog, features, encoded, show_progress, **catalog_options)
    # Checked before the encoders load and encode (a wrong row count cost the whole catalog's encode first).
    npy = load_npy_features(features, len(catalog.item_ids) if catalog is not None else None)
    feats, present, hashes, specs, records, item_ids = {}, {}, None, {}, None, None
    encoders: dict[str, Any] = {}
    if catalog is not None and loaded_encoders is not None:
        has = {"text": any(catalog.texts), "image": catalog.has_images}
        # A given encoder (another model's) is copied to another device, never moved from under it.
        encoders = {m: e if same_device(e.device, device) else copy.deepcopy(e).to(device)
                    for m, (e, _) in loaded_encoders.items() if has.get(m)}
        specs = {m: dict(s) for m, (_, s) in loaded_encoders.items() if has.get(m)}
    elif catalog is not None:
        encoders, specs = catalog_encoders(catalog, text_encoder, image_encoder, image_weights,
                                           max_length=max_length, batch_size=batch_size,
                                           allow_download=allow_download, show_progress=show_progress,
                                           device=device)
    if catalog is not None:
        clash = set(encoders) & set(features)
        if clash:
            raise ConfigError(f"modalities {sorted(clash)} come both from the catalog and from --features: rename "
                              f"the features (--features NAME=...), or turn the catalog's encoder off "
                              f"(--text-encoder none / --image-encoder none) to use the given features instead")
        feats, present, hashes = encode_catalog(catalog, encoders, cache_dir)
        records, item_ids = catalog.records, list(catalog.item_ids)
    if npy:
        if item_ids is None:
            sizes = {len(x) for x in npy.values()}
            if len(sizes) != 1:
                counts = ", ".join(f"{features[m]} ({m}): {len(x)}" for m, x in npy.items())
                raise ConfigError(f"feature files have different row counts, one row an item: {counts}")
            item_ids = list(range(sizes.pop()))
        for m, x in npy.items():
            feats[m], present[m] = x, npy_present(x)
    return Content(item_ids, feats, present, records, hashes, specs, catalog, encoders,
                   feature_files=[str(f) for f in features.values()])


def interactions_for(content: Content, path: str | Path, *, split: str, seed: int,
                     rating_threshold: float | None = None, on_invalid: str = "error") -> Interactions:
    """The interactions over ``content``'s items, split. With ``on_invalid="skip"``, invalid rows
    and the rows of catalog rows skipped as invalid (``Catalog.skipped_ids``) are skipped and
    counted (``report``) instead of failing."""
    space = "the catalog" if content.catalog is not None or content.item_ids is None else (
        f"the feature files' rows (item ids 0..{len(content.item_ids) - 1})")
    skipped = _catalog_skipped(content)
    options: dict[str, Any] = {"unknown_items": "skip", "skippable": skipped} if on_invalid == "skip" and skipped else {}
    inter = load_interactions(path, item_ids=content.item_ids, rating_threshold=rating_threshold,
                              on_invalid=on_invalid, item_space=space, **options)
    if options and inter.report.get("unknown_items"):
        logger.warning("%s: skipped %d row(s) of items skipped from the catalog as invalid",
                       path, inter.report["unknown_items"])
    return ensure_split(inter, split, seed, source=path)


def _catalog_skipped(content: Content) -> list[ItemId]:
    """The ids of the catalog rows skipped as invalid (those with a readable id)."""
    return [i for i in (content.catalog.skipped_ids if content.catalog is not None else []) if i is not None]


def _popularity_reference(inter: Interactions, held_out: np.ndarray | None, config: TrainConfig) -> dict[str, Any]:
    """Validation and test metrics of ranking every user's unknown items by their training
    popularity (ties by index), masked as the model's are: the floor a model should clear. Logged,
    with a warning when the trained model's best validation Recall@20 does not clear it (on very
    sparse data, 1-3 rows a user, a review measured a model at 0.145 test Recall@20 against 0.206)."""
    n = inter.num_items
    counts = np.bincount(inter.items[inter.split_mask("train")], minlength=n).astype(np.float32)  # [N]
    if held_out is not None:
        counts[held_out] = -np.inf  # (not candidates, as for the model)

    def scores(users: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.tile(counts, (len(users), 1)))  # [B, N], a new tensor each call

    out = {}
    for split in ("valid", "test"):
        if inter.split_mask(split).any():
            out[split] = evaluate(scores, inter, split=split, mask=config.mask, ks=(10, 20),
                                  batch_size=config.eval_batch_size, fresh_scores=True, novelty=False,
                                  candidates=None if held_out is None else n - int(held_out.sum()))
    if out:
        logger.info("popularity ranking (for reference): %s", ", ".join(
            f"{split} recall@20 {m['recall@20']:.4f}" for split, m in out.items()))
    return out


def _say_untrained_users(inter: Interactions, kept: np.ndarray | None) -> list[Any]:
    """Warn about the users with no training interaction (a given split with users only in its
    validation or test rows; --cold-start's held-out items): their vectors stay as they start,
    drawn at random (recommendations by chance), or, fine-tuning, the source model's (``kept``).

    Returns:
        the ids of the users whose vectors stay as drawn.
    """
    untrained = np.bincount(inter.users[inter.split_mask("train")], minlength=len(inter.user_ids)) == 0
    kept = untrained & kept if kept is not None else np.zeros_like(untrained)
    drawn = np.flatnonzero(untrained & ~kept)
    where = ("every row of theirs is a validation or test row, one below the rating threshold, or one of an item "
             "--cold-start held out")
    if len(drawn):
        logger.warning("%d of %d users have no training interaction (%s): their vectors stay as drawn, so their "
                       "recommendations are chance, and they are still evaluated (recommend --history places such a "
                       "user by their items)", len(drawn), len(inter.user_ids), where)
    if kept.any():
        logger.info("%d of %d users have no training interaction (%s) and keep their source embedding: they are "
                    "placed by what the source model learned of them", int(kept.sum()), len(inter.user_ids), where)
    return [inter.user_ids[u] for u in drawn]


def _check_content_options(options: Mapping[str, Any], content: Content | None) -> None:
    """Refuse a keyword of :func:`fit` that neither :func:`load_content` nor
    :func:`~mmrec.catalog.load_catalog` takes: without a catalog to read (features alone, ID-only)
    it was dropped without a word, a training setting given beside ``config`` included (``device``
    and ``batch_size`` as well, though the encoders take them too). With ``content`` already
    loaded, none is used: any is refused.

    Raises:
        TypeError: as Python's own for an unexpected keyword, naming ``config`` for a training setting.
    """
    settings = {f.name for f in dataclasses.fields(TrainConfig)}  # (device, batch_size: config's, not the encoders')
    known = set(inspect.signature(load_content).parameters) | set(inspect.signature(load_catalog).parameters)
    known -= settings | {"catalog", "features", "path", "catalog_options", "show_progress"}  # (fit's own)
    for name in options:
        if name not in known:
            raise TypeError(f"fit() got an unexpected keyword argument {name!r}"
                            + (f": a training setting, given in config (config={{{name!r}: ...}})"
                               if name in settings else ""))
    if content is not None and options:
        raise TypeError(f"fit() got {', '.join(map(repr, options))}, which say how a catalog is read and encoded, "
                        "with content already loaded: give them to load_content")


def fit(
    interactions: str | Path,
    *,
    catalog: str | Path | Catalog | None = None,
    features: Mapping[str, str | Path] | None = None,
    out: str | Path | None = None,
    config: TrainConfig | Mapping[str, Any] = TrainConfig(),
    split: str = "auto",
    rating_threshold: float | None = None,
    factory: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
    content: Content | None = None,
    before_training: Callable[[Trainer], dict[str, Any] | None] | None = None,
    skip_invalid: bool = False,
    **content_options: Any,
) -> tuple[Recommender, TrainResult, dict[str, float]]:
    """Train a recommender and (when ``out`` is given) write its directory.

    Args:
        interactions: interaction file (``user_id``, ``item_id``, optional ``rating``,
            ``timestamp``, ``split``).
        catalog: items file or :class:`Catalog` (optional when ``features`` are given, and
            for ID-only training).
        features: modality name -> ``.npy`` file of precomputed features, one row per item.
        out: directory to write, ``None`` for in memory only.
        config: the training configuration, or a mapping of the :class:`TrainConfig` fields to
            change from their defaults (``{"epochs": 50}``).
        split: ``auto`` (the file's split column, else random 80/10/10), ``given``,
            ``random`` or ``temporal``.
        rating_threshold: keep ratings ``>=`` this as positives (default: every row).
        factory: FAISS factory for the trained item vectors.
        overwrite: replace an existing ``out``.
        content: already loaded content (skips the catalog / feature loading).
        before_training: called with the :class:`Trainer` once the model is built, before the
            first step (fine-tuning from another model sets the weights here, see
            :func:`mmrec.transfer.finetune`); a dict it returns joins ``train_report.json``.
        skip_invalid: leave invalid catalog rows out (listed in ``out/skipped.jsonl``), and
            skip invalid interaction rows and the rows of those items (counted in
            ``train_report.json``'s ``data``), instead of failing. Not with ``features`` beside a
            catalog: their rows follow the catalog's, which skipping would misalign.
        **content_options: how the catalog is read and encoded, as :func:`load_content` and
            :func:`~mmrec.catalog.load_catalog` take them (``text_encoder``, ``image_encoder``,
            ``cache_dir``, ``max_length``, ``text_fields``, ``image_field``, ``image_root``,
            ``mask_bad_images``, ...; not with ``content``). Any other keyword is a ``TypeError``
            (a training setting, ``device`` and ``batch_size`` included, goes in ``config``).

    Returns:
        ``(recommender, training result, test metrics)``.
    """
    _check_content_options(content_options, content)
    if not isinstance(config, TrainConfig):
        config = TrainConfig(**config_changes(config))
    check_out(out, overwrite, [interactions, catalog.source if isinstance(catalog, Catalog) else catalog,
                               *(features or {}).values(), *(content_options.get(k) for k in (
                                   "image_root", "cache_dir", "text_encoder", "image_encoder", "image_weights"))])
    check_device(config.device)
    # The form, before encoding; enough items to train it is checked below, once the items are known.
    check_factory(factory, None)
    if skip_invalid and features and catalog is not None:
        raise ConfigError(SKIP_WITH_FEATURES)
    if config.finetune != "frozen" and not config.use_content:  # (below for no content at all, before the encoding)
        raise ConfigError(f"finetune {config.finetune!r} tunes the catalog's text and image encoders, and use_content "
                          "is off (ID embeddings only): leave the finetune option out")
    if content is None:  # the catalog is encoded on the training device
        # What the interaction file's header already refuses, before the (slow) encoding (content
        # given: its caller's, as finetune checks before encoding the new catalog).
        check_columns(interactions, split=split, rating_threshold=rating_threshold)
        if skip_invalid and catalog is not None and not isinstance(catalog, Catalog):
            content_options["skip_invalid"] = True
        content = load_content(catalog, features, show_progress=show_progress, device=config.device,
                               **content_options)
    tuner = None
    if config.finetune != "frozen" and not content.features:  # (it was recorded in config.json, changing nothing)
        raise ConfigError(f"finetune {config.finetune!r} tunes the catalog's text and image encoders, and this model "
                          "has no content (ID embeddings only): leave the finetune option out")
    if config.finetune != "frozen":  # (use_content is on: refused above otherwise)
        from mmrec.encoder_tuning import EncoderTuner

        tuner = EncoderTuner(content, config, show_progress=show_progress)
    inter = interactions_for(content, interactions, split=split, seed=config.seed, rating_threshold=rating_threshold,
                             on_invalid="skip" if skip_invalid else "error")
    logger.info("%r", inter)
    # The rule that made the split, for `evaluate` (auto resolves by this file's split column, which another file may lack).
    split = inter.report["split"]["method"] if "split" in inter.report else "given"
    item_ids = content.item_ids if content.item_ids is not None else list(inter.item_ids)
    n = len(item_ids)
    dims = {m: int(x.shape[1]) for m, x in content.features.items()} if config.use_content else {}
    # Seeded here, after the content: encoding draws from torch's generator (a DataLoader takes a
    # seed from it), and only on a feature-cache miss, so seeding earlier made the model depend on
    # what the cache held.
    seed_everything(config.seed)
    model = build_model(config, inter.num_users, n, dims)
    if config.untrained_via_content and not dims:
        raise ConfigError("untrained_via_content places items by their content, and the items have none (no text, "
                          "image or --features): leave it out")
    placed = with_content({m: content.present[m] for m in dims}, n) if dims else np.ones(n, bool)  # [N]
    held_out = None
    if config.cold_start > 0:
        if not dims:
            raise ConfigError("the cold-start protocol needs content (a catalog or --features): ID-only items "
                              "held out of training have no vector")
        # Only items content can place: one without it would have nothing to be ranked by.
        held_out = hold_out_items(inter, config.cold_start, config.seed, placed)
        logger.info("cold-start protocol: %d of %d items held out of training%s", int(held_out.sum()), n,
                    f" (of the {int(placed.sum())} with content)" if not placed.all() else "")
    try:  # the items indexed first: those trained on
        check_factory(factory, n - (int(held_out.sum()) if held_out is not None else 0))
    except ConfigError as e:
        if held_out is None:
            raise
        raise ConfigError(f"{e} (the {n - int(held_out.sum())} items left to index after --cold-start held "
                          f"{int(held_out.sum())} of the {n} out)") from None
    train_inter = warm_part(inter, held_out) if held_out is not None else inter
    train_degree = np.bincount(train_inter.items[train_inter.split_mask("train")], minlength=n)
    has_id = torch.from_numpy(train_degree > 0) if dims else None
    # Neither content nor a training edge (or, without ID embeddings, no content): nothing to place them by.
    orphans = np.flatnonzero(~placed & ((train_degree == 0) | (not config.use_id)))
    if len(orphans):
        # (finetune passes its content without the files: it named the source as "None")
        source = ", ".join(str(f) for f in (features or {}).values()) or ", ".join(content.feature_files) or str(
            getattr(content.catalog, "source", None) or catalog or "the content")
        why = ("and no training interaction, so the model has nothing to place it by" if config.use_id else
               "and the model has no ID embeddings (use_id off), so it has nothing to place it by")
        raise DataError(source, [Problem(None, None, (
            f"item {item_ids[i]!r} has no content (every modality missing: {', '.join(dims)}) {why}; give it "
            "features, or leave it out")) for i in orphans])
    no_edges = int(((train_degree == 0) & (True if held_out is None else ~held_out)).sum())  # held out: not trained
    if no_edges and dims and config.untrained_via_content:
        logger.info("%d items have no training interaction: indexed through the content path, as index add places "
                    "new items (untrained_via_content)", no_edges)
    elif no_edges and dims:
        logger.info("%d items have no training interaction: learned from content alone, they rank low for users "
                    "(drawn as negatives, chosen by none); --untrained-via-content indexes them as `mmrec index add` "
                    "places new items, by their content's trained neighbours", no_edges)
    data = TrainData(
        train_inter,
        {m: torch.from_numpy(content.features[m]) for m in dims},
        {m: torch.from_numpy(content.present[m]) for m in dims},
        has_id,
        negatives=None if held_out is None else ~held_out,
    )
    trainer = Trainer(model, data, config, tuner=tuner, show_progress=show_progress)
    before = before_training(trainer) if before_training is not None else None
    untrained_users = _say_untrained_users(train_inter, trainer.kept_users)
    result = trainer.fit()
    user_vecs, item_vecs, attention = (t.cpu().numpy() for t in trainer.vectors())
    features_now = {m: trainer.features[m].cpu().numpy() for m in dims}  # fine-tuned encoders change them
    model.cpu()  # what follows (and the returned Recommender) places items and queries on the CPU, as a loaded one
    # Items held out of training (the cold-start protocol) enter the index the way items added
    # later do: through the content path, on the trained score scale. Catalog items without
    # training edges keep the vectors the model was validated with (their content through the
    # trained projections, no graph edges): the training data is evidence that few users want
    # them, and served through the calibrated path they took a third of the top-20 slots while
    # holding 2% of the test rows (README, fine-tuning onto a new catalog); untrained_via_content
    # sends them through it all the same, for sparse data where no interaction means no data.
    via_content = held_out.copy() if dims and held_out is not None else np.zeros(n, dtype=bool)
    if dims and config.untrained_via_content:  # (on sparse data they took 15 of 18,860 top-20 slots; re-added, 509)
        via_content |= (train_degree == 0) & placed
    train_rows = train_inter.split_mask("train")
    # New items borrow from the indexed items nearest by content, measured from the catalog's modality means.
    centers = modality_centers(features_now, {m: content.present[m] for m in dims})
    vectorizer = TrainedContent(model, MipsTransform(1.0), 1.0, config.cold_neighbours,
                                config.cold_neighbour_weight, centers)  # scale and norm bound are set just below
    warm_pos = np.flatnonzero(~via_content)  # indexed with their trained vectors
    present_dims = {m: np.asarray(content.present[m], bool) for m in dims}
    # Content-path items borrow from, and the scale is calibrated on, the items trained on edges.
    pool_pos = np.flatnonzero((train_degree > 0) & placed)  # an item without content is no content neighbour
    pool = ({m: x[pool_pos] for m, x in features_now.items()}, {m: x[pool_pos] for m, x in present_dims.items()},
            item_vecs[pool_pos]) if dims else None
    # The scale is calibrated on those items sent through the same path (leave-one-out: an item
    # may not borrow from itself), at most CALIBRATION_ITEMS of them.
    calib = pool_pos if len(pool_pos) <= CALIBRATION_ITEMS else np.sort(
        np.random.default_rng(config.seed).choice(pool_pos, CALIBRATION_ITEMS, replace=False))
    # With one item to borrow from, leaving it out would leave none: the scale would be measured on
    # the bare content path and applied to vectors blended with that item (hundreds of times too long).
    calib_content = vectorizer.content_vectors(
        {m: x[calib] for m, x in features_now.items()}, {m: x[calib] for m, x in present_dims.items()},
        pool, exclude=np.searchsorted(pool_pos, calib) if len(pool_pos) > 1 else None,
    ) if dims and len(calib) else None
    calibrate = np.zeros(n, dtype=bool)
    calibrate[calib] = True
    vectorizer.cold_scale = cold_scale = content_scale(
        model, features_now, content.present, item_vecs, calibrate, config.layers, user_vecs,
        (train_inter.users[train_rows], train_inter.items[train_rows]), content=calib_content)
    cold_pos = np.flatnonzero(via_content)
    cold_vecs = vectorizer.content_vectors(
        {m: x[cold_pos] for m, x in features_now.items()}, {m: x[cold_pos] for m, x in present_dims.items()}, pool
    ) if len(cold_pos) else item_vecs[:0]  # [C, D]
    # The MIPS norm bound covers the content-path rows too (a longer row would be shrunk).
    served = np.concatenate([item_vecs[~via_content], cold_vecs])
    with np.errstate(over="ignore"):
        if not np.isfinite(np.linalg.norm(served, axis=1)).all():
            # finite weights, too long for float32 norms (an lr of 1e30 kept an epoch of 1e30 weights): it said
            # "ValueError: max_norm must be a positive finite number, got inf" from the index code
            raise MMRecError(f"training diverged: the kept vectors are too long for float32 (their norms overflow); "
                             f"lower the learning rate (--lr, now {config.lr:g})")
    vectorizer.mips = mips = MipsTransform.fit(served)
    known = inter.known_items()  # [U, N] CSR of ones (positives and pairs rated below a threshold): never recommended back
    records = content.records or [{} for _ in range(n)]
    hashes = content.hashes or [{} for _ in range(n)]
    items = ItemIndex.from_features(
        [item_ids[i] for i in warm_pos],
        {m: x[warm_pos] for m, x in features_now.items()},
        {m: x[warm_pos] for m, x in present_dims.items()},
        [records[i] for i in warm_pos],
        factory=factory,
        encoders={m: s for m, s in content.encoders.items() if m in dims},
        hashes=[hashes[i] for i in warm_pos],
        vectors=mips.items(item_vecs[warm_pos]),
        vectorizer=vectorizer,
        centers=centers,
        attention=attention[warm_pos],
        show_progress=show_progress,
        kind="trained",
        text_fields=content.catalog.text_fields if content.catalog else [],
        image_field=content.catalog.image_field if content.catalog else None,
        mask_bad_images=bool(content.catalog and content.catalog.mask_bad_images),
        source=str(interactions),
        # Modalities no item had (a fine-tuning's --ignore-modality, or new data without them):
        # items added later are not given them either.
        masked=[m for m in dims if not np.asarray(content.present[m], bool).any()],
    )
    items.pool = train_degree[warm_pos] > 0  # what items added later borrow from, as the cold items here
    items.kept = np.ones(len(warm_pos), bool)  # what an update leaves its trained vector (the cold items: placed again)
    if len(cold_pos):
        items.add_features(
            [item_ids[i] for i in cold_pos], {m: x[cold_pos] for m, x in features_now.items()},
            {m: x[cold_pos] for m, x in present_dims.items()}, [records[i] for i in cold_pos],
            [hashes[i] for i in cold_pos], save=False, vectors=mips.items(cold_vecs),
        )
    order = np.array([items._pos[i] for i in item_ids])  # index rows in item-space order
    index_vecs = torch.from_numpy(mips.original(items.vectors[order]))  # [N, D]
    # The test metrics of what is served: the index's vectors; `mmrec evaluate` on the same file
    # reproduces them. Held-out items are evaluated apart (below): neither truth nor candidates
    # here, or a held-out item a user did interact with would count against the model as a miss.
    test = evaluate(partial(score_users, user_vecs, index_vecs, held_out), train_inter, split="test",
                    mask=config.mask, ks=(10, 20), batch_size=config.eval_batch_size, fresh_scores=True,
                    candidates=None if held_out is None else len(held_out) - int(held_out.sum()),
                    ) if train_inter.split_mask("test").any() else {}
    if test:
        logger.info("test recall@20 %.4f ndcg@20 %.4f", test["recall@20"], test["ndcg@20"])
    moved = via_content if held_out is None else via_content & ~held_out  # placed otherwise than trained
    if moved.any() and result.best_valid:
        # Validation as served (what `mmrec evaluate --split valid` reproduces, and what the
        # popularity check below compares), not as the training vectors had it.
        result.trained_valid = result.best_valid
        result.best_valid = evaluate(
            partial(score_users, user_vecs, index_vecs, held_out), train_inter, split="valid", mask=config.mask,
            ks=(10, 20), batch_size=config.eval_batch_size, fresh_scores=True,
            candidates=None if held_out is None else len(held_out) - int(held_out.sum()))
        logger.info("validation recall@20 %.4f as served, with the %d items without training interactions placed "
                    "by content (%.4f as trained)", result.best_valid["recall@20"], int(moved.sum()),
                    result.trained_valid["recall@20"])
    if held_out is not None:
        test["cold"] = evaluate_cold(torch.from_numpy(user_vecs), index_vecs, inter, held_out,
                                     batch_size=config.eval_batch_size)
        logger.info("cold-start items: test recall@20 %.4f ndcg@20 %.4f", test["cold"]["recall@20"],
                    test["cold"]["ndcg@20"])
    popularity = _popularity_reference(train_inter, held_out, config)
    result.popularity = popularity
    if "valid" in popularity and result.best_valid and result.best_valid["recall@20"] < popularity["valid"]["recall@20"]:
        logger.warning("the model's best validation recall@20 %.4f is below the popularity ranking's %.4f: on this "
                       "data its user vectors add nothing over what is most popular (few interactions a user?); "
                       "more data per user, or serving the most popular items to such users, would do better",
                       result.best_valid["recall@20"], popularity["valid"]["recall@20"])
    # The ridge of `recommend --history`'s fold-in, chosen on validation (mmrec.foldin).
    fold_in_reg, fold_in_valid, fold_in_users = select_fold_in_reg(
        index_vecs.numpy(), train_inter, excluded=held_out, mask=config.mask, seed=config.seed,
        batch_size=config.eval_batch_size)
    if content.encoder_objects:
        # Queries in memory use the encoders the features came from: tuned ones, and a source model's
        # stored in its directory, which this index, with none of its own until saved, cannot name
        # (a fine-tune with out=None answered text queries "stored in the model directory, which is unknown").
        items.encoders._loaded.update({m: e for m, e in content.encoder_objects.items() if m in dims})
        items.encoders.to(config.device)  # where they are (and where any other one would load)
    rec = Recommender(items, model.eval(), config, inter.user_ids, user_vecs, known, item_ids,
                      cold_items=[item_ids[i] for i in np.flatnonzero(held_out)] if held_out is not None else [],
                      split_rule=split, rating_threshold=rating_threshold, fold_in_reg=fold_in_reg,
                      liked=inter.user_items("all") if inter.seen is not None and len(inter.seen[0]) else None,
                      skip_invalid=skip_invalid, skipped_items=_catalog_skipped(content) if skip_invalid else [],
                      items_from_interactions=content.item_ids is None, untrained_users=untrained_users)
    if out is not None:
        extra = {
            "num_users": inter.num_users,
            "num_items": n,
            "modality_dims": dims,
            "mips_max_norm": mips.max_norm,
            "cold_scale": cold_scale,
            "cold_neighbours": config.cold_neighbours,
            "cold_neighbour_weight": config.cold_neighbour_weight,
            "split": split,
            "split_keys": "pairs",  # absent from directories trained with the older row-order keys
            "rating_threshold": rating_threshold,
            "cold_items": [item_ids[i] for i in np.flatnonzero(held_out)] if held_out is not None else [],
            "fold_in_reg": fold_in_reg,
            # How the interaction file was read, so that `evaluate` on it drops the same rows
            # before rebuilding the split: invalid rows, and those of catalog rows skipped as invalid.
            "skip_invalid": skip_invalid,
            "skipped_items": rec.skipped_items,
            # No catalog and no feature files: the items are the interacted ones (see evaluate_directory).
            "items_from_interactions": rec.items_from_interactions,
            "untrained_users": untrained_users,  # recommend warns for them
        }
        report = {"best_epoch": result.best_epoch, "valid": result.best_valid, "test": test, "popularity": popularity,
                  **({"valid_trained": result.trained_valid} if result.trained_valid is not None else {}),
                  "seconds_per_epoch": result.seconds_per_epoch, "history": result.history, "data": inter.report,
                  "fold_in": {"reg": fold_in_reg, "valid_recall@20": fold_in_valid, "users": fold_in_users}}
        report |= before or {}
        attach = _with_bundled_encoders(rec.attach_files(extra, tuner), items.manifest, content.encoder_root)

        def write(tmp: Path) -> list[str]:  # the report is an attachment: checksummed, kept by add/remove
            (tmp / "train_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
            return attach(tmp) + ["train_report.json"]

        items.save(out, overwrite=overwrite, attach=write, skipped=content.catalog)
    return rec, result, test


def _with_bundled_encoders(write: Callable[[Path], list[str]], manifest: dict[str, Any],
                           root: Path | None) -> Callable[[Path], list[str]]:
    """``write`` plus a copy of every bundled encoder it did not write itself (from ``root``).

    A model fine-tuned from a directory with tuned encoders keeps using them; copying makes the
    new directory independent of the old one.
    """

    def wrapped(tmp: Path) -> list[str]:
        files = list(write(tmp))
        for modality, spec in manifest["encoders"].items():  # read after write: a tuner updates it
            if not spec.get("bundled") or (tmp / spec["model"]).exists():
                continue
            if root is None or not (root / spec["model"]).is_dir():
                raise ConfigError(f"the {modality} encoder is bundled in a model directory that is not available")
            shutil.copytree(root / spec["model"], tmp / spec["model"])
            files += sorted(str(p.relative_to(tmp)) for p in (tmp / spec["model"]).rglob("*") if p.is_file())
        return files

    return wrapped


CALIBRATION_ITEMS = 10_000  # warm items sent through the content path to calibrate its scale


@torch.no_grad()
def content_scale(
    model: Any, features: dict[str, np.ndarray], present: dict[str, np.ndarray], item_vecs: np.ndarray,
    trained: np.ndarray, layers: int, user_vecs: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    content: np.ndarray | None = None,
) -> float:
    """The factor putting content-only item vectors on the score scale of trained ones.

    Score-matched (with ``user_vecs`` and the training ``pairs``): ``sum u.v_i / sum u.c_i``
    over the training pairs ``(u, i)`` of trained items, with ``v_i`` the trained and ``c_i`` the
    content-only vector, so a content-only item scores with its users what trained items do on
    average. Otherwise (or when that sum is not positive) norm-matched: ``median ||v_i|| /
    median ||c_i||`` over trained items; ``1 / (L + 1)`` for ID-only models or when no item
    trained.

    Measured on the ml100k-plus cold-start split with cold and warm items ranked together
    (scripts/quality_cold.py, residual model, 65% of the truth on cold items): score-matched
    (1.08) mixed Recall@20 0.1696, cold items 78% of the top 20; unscaled 0.1707 / 68%;
    norm-matched (0.41) 0.1190 / 0.9%; least squares (0.35) 0.1174 / 0.3%; ``1/(L+1)`` 0.1170 /
    0.04%. The norm-matched rule had ranked best with the earlier token-mode model; with the
    residual model it all but hid new items, so ``fit`` now uses the score-matched one. With the
    neighbour blend that ``fit`` ships (variant c of that script): factor 2.91, mixed Recall@20
    0.1992, cold items 62% of the top 20.

    ``content``: the ``trained`` rows' content-path vectors when that path is not plain
    ``content_only`` (``fit`` passes them blended with their neighbours, leave-one-out).
    """
    if not features or not trained.any():
        return 1.0 / (layers + 1)
    rows = np.flatnonzero(trained)
    if content is None:
        model.eval()
        with torch.no_grad():
            content = model.content_only(
                {m: torch.from_numpy(x[rows]) for m, x in features.items()},
                {m: torch.from_numpy(np.asarray(present[m][rows], bool)) for m in features},
            ).cpu().numpy()  # [N', D]
    if user_vecs is not None and pairs is not None:
        users, items = pairs
        keep = trained[items]
        users, items = users[keep], items[keep]
        where = np.full(len(trained), -1)
        where[rows] = np.arange(len(rows))
        num = float(np.einsum("pd,pd->", user_vecs[users], item_vecs[items], dtype=np.float64))
        den = float(np.einsum("pd,pd->", user_vecs[users], content[where[items]], dtype=np.float64))
        if den > 0 and num > 0:
            return num / den
    num = float(np.median(np.linalg.norm(item_vecs[rows], axis=1)))
    den = float(np.median(np.linalg.norm(content, axis=1)))
    return num / den if den > 0 else 1.0 / (layers + 1)


def without_items_from(inter: Interactions, first: int) -> tuple[Interactions, int, int]:
    """``inter`` less the rows (and below-threshold pairs) of items at positions ``first`` and
    beyond, in the item space of the first ``first`` items; with how many rows went and how many
    users lost every row.
    """
    keep = inter.items < first  # [E]
    seen = inter.seen
    if seen is not None:
        seen = (seen[0][seen[1] < first], seen[1][seen[1] < first])
    had = np.bincount(inter.users, minlength=inter.num_users) > 0
    kept = replace(inter.rows(keep), item_ids=inter.item_ids[:first], seen=seen)
    left = np.bincount(kept.users, minlength=kept.num_users) > 0
    return kept, int((~keep).sum()), int((had & ~left).sum())


def evaluate_directory(
    rec: Recommender | str | Path,
    interactions: str | Path,
    *,
    split: str | None = None,
    mask: str | None = None,
    how: str | None = None,
    ks: int | tuple[int, ...] = (10, 20),
    cold_start: bool = False,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Full-ranking metrics of a trained directory (a :class:`Recommender`, or its path) on an
    interaction file (``show_progress``: a progress bar over the batches of users scored).

    The item space is the index's current items: rows of other items (removed from the index
    since training) are skipped and counted (``rows_skipped``). ``users_skipped`` counts the
    users of the file left out: those the model does not know (``users_unknown``) and those
    whose every row was such an item (``users_only_removed_items``). For a model trained with
    held-out items (``cold_start``), their rows are left out of the ordinary evaluation, as at
    training time (``rows_of_held_out_items``), and so are the items themselves as candidates,
    so the training report's test metrics are reproduced; ``cold_start=True`` evaluates them.
    The split is rebuilt as at training time (same rule, seed and rating threshold; ``how``
    overrides the rule) on every row of the file, those of removed items included, which are
    dropped after it: on the training file it is the training split, and a random split
    (:func:`mmrec.split.split_random`) of another file keeps each pair the user also had in the
    training file where training put it, as long as the user's rows are the same. ``diversity@K`` is measured with the index's
    item vectors. ``split`` defaults to ``"test"`` and ``mask`` to the training config's. With
    ``cold_start``, the items held out of training are ranked (from their content-path index
    vectors) for the users who interacted with them, their rows of every split, every other
    known item masked (:mod:`mmrec.coldstart`): ``split`` and ``mask`` do not apply (a
    ``ConfigError`` when given), and the result has no such keys.
    """
    if isinstance(rec, (str, Path)):  # a directory, as Recommender.load takes it
        rec = Recommender.load(rec, show_progress=show_progress)
    if not rec.trained:
        raise MMRecError("evaluation needs a trained directory (made by `mmrec train`)")
    if split not in (None, "valid", "test"):
        raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    try:  # each a count (a whole number, not a bool), as k is everywhere
        checked = tuple(check_count(k, "ks") for k in ks)
    except MMRecError:
        checked = ()
    if not checked:
        raise ConfigError(f"ks must be whole numbers >= 1 (10, or (10, 20)), got {ks!r}")
    ks = checked
    if cold_start and (split is not None or mask is not None):
        raise ConfigError("cold-start evaluation ranks the held-out items' rows of every split, with every other "
                          "known item masked: split and mask do not apply")
    if batch_size is None:  # users scored at once: the model's validation batches
        batch_size = rec.config.eval_batch_size
    elif batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    item_ids = rec.items.ids
    # Items the model was trained on and that were removed since are skipped (counted), after the
    # split: dropped before it, they would move their users' other rows between the splits (rows
    # the model trained on would then be evaluated). An id the model never knew is an error
    # naming the row (a typo, or another catalog's file).
    indexed = set(item_ids)
    removed = [i for i in rec.train_item_ids if i not in indexed]
    # A model trained with --skip-invalid read its file so: invalid rows, and the rows of catalog
    # rows skipped as invalid, went before the split; they go here too (and are counted).
    options: dict[str, Any] = {}
    if rec.skip_invalid:
        options["on_invalid"] = "skip"
        if rec.skipped_items:
            options |= {"unknown_items": "skip", "skippable": rec.skipped_items}
    # A model whose items came from the interactions has no item rated only below its threshold:
    # such rows go as below it (with a catalog, an unknown id is a typo, whatever its rating).
    loaded = load_interactions(interactions, item_ids=item_ids + removed, rating_threshold=rec.rating_threshold,
                               item_space="the index nor among the items the model was trained on",
                               unknown_below_threshold=rec.items_from_interactions, **options)
    invalid = int(loaded.report.get("invalid", 0)) + int(loaded.report.get("unknown_items", 0))
    if loaded.report.get("unknown_items"):  # (the invalid rows have their own warning from the loader)
        logger.warning("%s: skipped %d row(s) of items skipped from the catalog as invalid at training time "
                       "(--skip-invalid)", interactions, loaded.report["unknown_items"])
    if how is None and rec.split_rule == "given" and loaded.split is None:
        raise MMRecError(f"{interactions} has no split column, and the model was trained on the split its training "
                         "file gave: evaluate on a file with the split column, or choose a rule (--split-rule random "
                         "or temporal)")
    inter = ensure_split(loaded, how or rec.split_rule, rec.config.seed, option="--split-rule", keys=rec.split_keys,
                         source=interactions)
    inter, gone, emptied = without_items_from(inter, len(item_ids))
    if gone:
        logger.warning("%d rows of %s are items not in the index (removed since training?): skipped; %d users "
                       "had no other rows", gone, interactions, emptied)
    # Unknown users go before the held-out items' rows: one whose rows were all of them went uncounted.
    rows = np.array([rec._user_pos_str.get(str(u), -1) for u in inter.user_ids])
    has_rows = np.bincount(inter.users, minlength=inter.num_users) > 0  # those left with none are counted above
    unknown = int(((rows < 0) & has_rows).sum())
    if unknown:
        logger.warning("%d users of %s are unknown to the model: skipped", unknown, interactions)
        keep = rows[inter.users] >= 0
        inter = inter.rows(keep)
    cold = np.isin(np.array(item_ids, dtype=object), np.array(rec.cold_items, dtype=object))
    held_rows = 0
    if rec.cold_items and not cold_start:  # as at training time: held-out items are evaluated apart
        held_rows = int(cold[inter.items].sum())
        inter = warm_part(inter, cold)  # and are not candidates either (score_users)
    item_vecs = torch.from_numpy(rec.items.vectorizer.mips.original(rec.items.vectors))  # [N, D]
    user_vecs = torch.from_numpy(rec.user_vectors)

    def score(users: np.ndarray) -> torch.Tensor:
        r = rows[users]
        s = score_users(user_vecs, item_vecs, cold if rec.cold_items else None, np.maximum(r, 0))  # [B, N]
        s[torch.from_numpy(r < 0)] = float("-inf")
        return s

    out = {"users_skipped": unknown + emptied, "users_unknown": unknown, "users_only_removed_items": emptied,
           "rows_skipped": gone}
    if invalid:
        out["rows_invalid_skipped"] = invalid
    if held_rows:
        out["rows_of_held_out_items"] = held_rows
    if cold_start:
        if not rec.cold_items:
            raise MMRecError("this model was trained without held-out items: train with --cold-start FRACTION")
        if not cold.any():  # (it said "no user has a truth item: nothing to evaluate")
            raise MMRecError(f"none of the {len(rec.cold_items)} items training held out is in the index any more "
                             "(index remove): nothing to evaluate with --cold-start")
        model_rows = torch.from_numpy(rows.clip(min=0))  # unknown users' rows were dropped above
        return {"cold_start": True, **out, **evaluate_cold(user_vecs[model_rows], item_vecs, inter, cold, ks=ks,
                                                           batch_size=batch_size)}
    split = split or "test"
    out = {"split": split, "mask": mask or rec.config.mask, **out}
    if not inter.split_mask(split).any():
        counts = ", ".join(f"{name} {int(inter.split_mask(name).sum())}" for name in ("train", "valid", "test"))
        raise MMRecError(f"{interactions}: no {split} rows to evaluate (rows by split, after the skips above: "
                         f"{counts}); choose another --split")
    return out | evaluate(score, inter, split=split, mask=mask or rec.config.mask, ks=ks,
                          item_vectors=item_vecs.numpy(), batch_size=batch_size, progress=show_progress,
                          fresh_scores=True, candidates=len(cold) - int(cold.sum()) if rec.cold_items else None)
