"""Fine-tuning a trained model on a new catalog: ``mmrec finetune``.

A model trained on one catalog carries knowledge that does not depend on its item ids: the
per-modality projections and the attention fusion map content to the item space, and the
encoders (possibly fine-tuned) map raw text and images to content. :func:`finetune` moves
those onto a different catalog (different item ids, possibly different users):

* the new catalog is encoded with the **source directory's encoders** (the bundled fine-tuned
  ones when it has them), so feature widths and meaning match; ``.npy`` features must carry
  the source's modality names and widths;
* a new :class:`~fusion.FusedGraphModel` of the source's architecture is built for the new
  users and items, and every weight but the ID embeddings is copied (projections, fusion; the
  propagation has none);
* each new item starts where the **source model would place it by content**: its fused content
  comes through the copied projections and fusion (residual ID mode: plus a fresh small ID
  embedding; token mode: the ID token starts at the item's projected content);
* users whose id the source model knows keep their source embedding (``keep_users=True``, the
  default: on the ml100k-plus new-movie split it won on 3 of 3 seeds, test Recall@20 0.2090
  vs 0.1979 from scratch, while starting every user at random lost, 0.1786); other users start
  at random and are learned (graph propagation hands them their items' vectors from the first
  step; starting them at their items' mean measured worse). Pass ``keep_users=False`` when
  the two catalogs' user ids do not name the same people;
* training then continues on the new interactions with the same :class:`~mmrec.train.Trainer`
  and early stopping; encoders are tuned further when ``config.finetune`` says so.

What the new data may and may not do (each refused case raises :class:`ConfigError` saying what
to do instead):

* a modality the source model never had (a catalog with images for a text-only model, an
  unknown ``--features`` name) is an error: leave it out with ``ignore=`` /
  ``--ignore-modality``, or train from scratch with ``mmrec train`` to learn it;
* a source modality that the new data lacks entirely is **allowed**: it is masked for every
  item, exactly as for an item that lacks it in the source catalog (fusion was trained with
  random token dropout for this); at least one source modality must remain;
* a feature width that differs from the source's is an error (the projection weights cannot
  apply): compute the features with the source's encoder;
* the source must be a trained directory (not a content index) with content modalities: an
  ID-only model has nothing to transfer except hyper-parameters, so it is refused rather than
  silently trained from scratch (run ``mmrec train`` with its ``config.json`` values instead);
* a source held in memory (``fit`` without ``out``) whose encoders were tuned cannot be
  fine-tuned with frozen encoders: its tuned encoders were never saved, so the new model could
  not record them; save the source first, or tune the encoders again;
* architecture fields (``dim``, ``layers``, ``heads``, ``use_id``, ``use_content``,
  ``projection_hidden``, ``id_mode``: :data:`mmrec.config.ARCHITECTURE`) cannot change; every other training option defaults to the source's.
"""
from __future__ import annotations

import math

import copy
import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion.model import FusedGraphModel
from mmrec.catalog import Catalog, load_catalog
from mmrec.config import ARCHITECTURE, TrainConfig, config_changes
from mmrec.errors import ConfigError
from mmrec.interactions import check_columns
from mmrec.item_index import check_device, check_factory, check_out
from mmrec.pipeline import SKIP_WITH_FEATURES, Content, fit, load_content
from mmrec.recommender import Recommender
from mmrec.train import Trainer, TrainResult
from mmrec.typing import UserId

logger = logging.getLogger(__name__)

EMBEDDINGS = ("user_embedding.weight", "item_embedding.weight")
FRESH_SALT = 0x66696E65  # "fine": the fine-tuned model's own stream of fresh ID embeddings


def open_source(source: str | Path | Recommender, *, show_progress: bool = True) -> Recommender:
    """The source model of a fine-tuning run, refused when it has nothing to transfer.

    Raises:
        ConfigError: a content index (not trained), or an ID-only model.
    """
    rec = source if isinstance(source, Recommender) else Recommender.load(source, show_progress=show_progress)
    where = rec.items.directory or "the source"
    if not rec.trained:
        raise ConfigError(
            f"{where} is a content index (made by `mmrec index build`), not a trained model: there are no "
            f"weights to fine-tune. Train one with `mmrec train`, or train on the new data directly"
        )
    if not rec.model.modality_dims:
        raise ConfigError(
            f"{where} is an ID-only model (trained without content): its weights are per-item and per-user, so "
            f"nothing but its hyper-parameters would carry over to a new catalog. Train from scratch with "
            f"`mmrec train` (its settings are in {where}/config.json)"
        )
    return rec


def finetune_config(source: TrainConfig, config: TrainConfig | Mapping[str, Any] | None = None) -> TrainConfig:
    """The configuration of a fine-tuning run.

    Args:
        source: the source model's configuration.
        config: ``None`` (the source's), a mapping of fields to change, or a whole
            :class:`TrainConfig`; either way the architecture fields must equal the source's.

    Raises:
        ConfigError: an architecture field that differs from the source's.
    """
    if config is None:
        return source
    changes = config_changes(config)
    differ = [f"{k}={changes[k]!r} (source: {getattr(source, k)!r})"
              for k in ARCHITECTURE if k in changes and changes[k] != getattr(source, k)]
    if differ:
        raise ConfigError(
            f"fine-tuning keeps the source model's architecture, but {', '.join(differ)} was asked: the "
            f"transferred weights have the source's shapes. Leave these options out, or train from scratch "
            f"with `mmrec train`"
        )
    return dataclasses.replace(source, **changes)


def source_content(
    source: Recommender,
    catalog: str | Path | Catalog | None = None,
    features: Mapping[str, str | Path] | None = None,
    *,
    ignore: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    device: str = "cpu",
    **catalog_options: Any,
) -> Content:
    """The new catalog's content, encoded as the source model expects it (on ``device``).

    The catalog is read with the source's text and image fields unless ``catalog_options``
    say otherwise, and encoded with the source directory's encoders. Source modalities the new
    data lacks are present for no item (zero features, masked).

    Raises:
        ConfigError: see the module docstring.
    """
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)  # "text" is one modality, not four
    dims = dict(source.model.modality_dims)
    specs = source.items.manifest.get("encoders", {})
    pointless = sorted(set(ignore) - set(dims) - set(features or {}) - {"text", "image"})
    if pointless:  # most likely a typo: ignoring it would do nothing
        raise ConfigError(
            f"--ignore-modality {' '.join(pointless)}: neither the source model (modalities: "
            f"{', '.join(sorted(dims)) or 'none'}) nor the new data (a catalog's text and image, --features: "
            f"{', '.join(sorted(features or {})) or 'none given'}) has it"
        )
    features = {m: p for m, p in (features or {}).items() if m not in ignore}
    unknown = sorted(set(features) - set(dims))
    if unknown:
        raise ConfigError(_never_had(unknown, dims, "--features"))
    manifest = source.items.manifest
    read = {"text": bool(manifest.get("text_fields")), "image": bool(manifest.get("image_field"))}
    if catalog is not None and not isinstance(catalog, Catalog):
        defaults = {"text_fields": manifest.get("text_fields") or None, "image_field": manifest.get("image_field"),
                    "mask_bad_images": manifest.get("mask_bad_images", False)}
        opts = {k: v for k, v in defaults.items() if v} | catalog_options
        # The source's fields may be missing from the new catalog: that modality is then masked.
        lenient = [k for k in ("text_fields", "image_field") if k not in catalog_options]
        # An ignored modality is not encoded: its column is not checked (images not opened). Nor is one
        # the source read from its catalog and encoded none of (--text-encoder none / --image-encoder
        # none): `train` with those options would leave the new catalog's out, so a row needs the other.
        skipped = [m for m in ("text", "image") if m not in ignore and m not in dims and read[m]]
        # (Nor one --features supplies: its vectors come from the .npy, as `train` reads them.)
        encoded = [m for m in ("text", "image") if m not in ignore and m not in skipped and m not in features]
        # As `train`: with --features (or nothing the source could encode) a row needs no text or image.
        needed = not features and any(m in dims for m in encoded)
        catalog = load_catalog(catalog, show_progress=show_progress,
                               **({"optional": lenient, "encoded": encoded, "require_content": needed} | opts))
    loaded: dict[str, tuple[Any, dict]] = {}
    if catalog is not None:
        has = {"text": any(catalog.texts), "image": catalog.has_images}
        # A modality the source encoded from the catalog and a .npy for it too: as `train` refuses it,
        # one would be dropped silently. (One the source took from --features is read from the .npy.)
        clash = sorted(m for m, yes in has.items() if yes and m not in ignore and m in features and m in specs)
        if clash:
            raise ConfigError(
                f"modalities {clash} come both from the catalog {catalog.source} (encoded with the source model's "
                f"encoder) and from --features: leave out --features {clash[0]}=..., or give a catalog without "
                f"{' or '.join('text columns' if m == 'text' else 'an image column' for m in clash)} to use the "
                f"given features instead")
        wanted = [m for m, yes in has.items() if yes and m not in ignore and m not in features]
        # The source read a catalog with these fields and encoded none of them (--text-encoder none /
        # --image-encoder none): the new catalog's are left out as well, as `train` with those options would.
        skipped = [m for m in wanted if m not in dims and read[m]]
        if skipped:
            joined = " and ".join(skipped)
            logger.info("the source model was trained without its catalog's %s (encoder none): the new catalog's "
                        "%s %s not encoded either", joined, joined, "are" if len(skipped) > 1 else "is")
            wanted = [m for m in wanted if m not in skipped]
        never = [m for m in wanted if m not in dims]
        if never:
            raise ConfigError(_never_had(never, dims, f"the catalog {catalog.source}"))
        for m in wanted:
            if m not in specs:
                raise ConfigError(
                    f"the source model's '{m}' features were precomputed (--features), so its {m} encoder is "
                    f"unknown: pass --features {m}=PATH.npy computed the same way, or --ignore-modality {m}"
                )
            loaded[m] = (source.items.encoders.get(m), specs[m])
    widths = {m: _npy_width(p) for m, p in features.items()}  # from the headers, before the catalog is encoded
    wrong = [f"'{m}' ({features[m]}) has width {w}, the source model expects {dims[m]}"
             for m, w in widths.items() if w is not None and m in dims and w != dims[m]]
    if not wrong:
        content = load_content(catalog, features, cache_dir=cache_dir, show_progress=show_progress,
                               loaded_encoders=loaded, device=device)
        wrong = [f"'{m}' has width {x.shape[1]}, the source model expects {dims[m]}"
                 for m, x in content.features.items() if x.shape[1] != dims[m]]
    if wrong:
        raise ConfigError(
            f"the new features do not fit the source model: {'; '.join(wrong)}. Compute them with the encoder "
            f"the source was trained with, or train from scratch with `mmrec train`"
        )
    if not content.features:
        left_out = [m for m in dims if m in ignore]
        raise ConfigError(
            f"the new data has none of the source model's modalities {list(dims)}"
            + (f" (--ignore-modality left out {', '.join(left_out)})" if left_out else "")
            + ": nothing would carry over. Give a catalog or --features with at least one of them"
            + (", and do not ignore it" if left_out else "")
        )
    n = len(content.item_ids)
    missing = [m for m in dims if m not in content.features]
    ignored = [m for m in missing if m in ignore]
    if ignored:  # (it said the new data had none, of a modality the data has and the option left out)
        logger.info("--ignore-modality %s: masked for every item", " ".join(ignored))
    if set(missing) - set(ignored):
        logger.warning("the new data has no %s: masked for every item",
                       ", ".join(m for m in missing if m not in ignored))
    content.features = {m: content.features.get(m, np.zeros((n, dims[m]), np.float32)) for m in dims}
    content.present = {m: content.present.get(m, np.zeros(n, bool)) for m in dims}
    content.encoders = {m: dict(specs[m]) for m in dims if m in specs}
    content.encoder_root = source.items.directory
    if not source.config.use_id:
        empty = ~np.logical_or.reduce([content.present[m] for m in dims])
        if empty.any():
            ids = [content.item_ids[i] for i in np.flatnonzero(empty)[:10]]
            raise ConfigError(
                f"{int(empty.sum())} new items have none of the modalities {list(dims)} (first: {ids}), and the "
                f"source model has no ID embeddings (use_id off) to represent them: drop them from the catalog"
            )
    return content


def _npy_width(path: str | Path) -> int | None:
    """The column count of a 2-d ``.npy`` file, read from its header; ``None`` when it is no such
    file (:func:`mmrec.pipeline.load_npy_features` then says what is wrong with it)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            major, _ = fmt.read_magic(f)
            shape = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)[0]
    except (ValueError, OSError, EOFError):
        return None
    return int(shape[1]) if len(shape) == 2 else None


def _never_had(names: list[str], dims: Mapping[str, int], where: str) -> str:
    flags = " ".join(f"--ignore-modality {m}" for m in names)
    return (
        f"{where} has modalities {names} that the source model was never trained with (it has {list(dims)}): "
        f"pass {flags} to leave them out, or train from scratch with `mmrec train` to learn them"
    )


@torch.no_grad()
def transfer_weights(
    source: FusedGraphModel,
    target: FusedGraphModel,
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    *,
    user_rows: np.ndarray | None = None,
    batch_size: int = 4096,
    seed: int | None = None,
) -> None:
    """Start ``target`` (new users and items) from ``source`` (same architecture).

    Every parameter except the ID embeddings is copied. With ``id_mode="residual"`` the new
    items' ID embeddings keep their fresh ``N(0, 0.1^2)`` start: their layer-0 vector is already
    the source's fused content plus that small ID part (copying the content into the ID as
    well counted it twice: on the planted catalogs below, best valid Recall@20 0.5525 vs
    0.585). With ``id_mode="token"``, item ``n``'s ID token becomes the mean
    of its projected content tokens ``source.projections[m](features[m][n])`` over its present
    modalities: the ID token lives in the token space that fusion reads, and for an item with
    one modality the fused layer-0 vector is then exactly ``source.content_only`` (fusing two
    equal tokens gives what fusing one does), i.e. the item starts where the source model puts
    it by content. Items without any modality keep their random start. Users keep their random
    start (propagation hands them their items' vectors from the first step), except that
    ``user_rows[u] >= 0`` copies ``source.user_embedding[user_rows[u]]``. Finally the item and
    user ID embeddings are scaled by one factor so the items' mean norm is a fresh start's
    (``0.1 * sqrt(D)``), which keeps the embeddings' directions but not the fused layer-0
    vectors': their content tokens are not scaled, so in token mode the start is near
    ``source.content_only`` rather than equal to it (on a small random model, cosine 0.992 at
    worst).

    Measured on the planted catalogs of ``tests/mmrec/test_transfer.py`` (4 data seeds x 2
    training seeds, 8 epochs at lr 0.01, mean test Recall@20): this start 0.603; random ID
    tokens 0.590; the ``content_only`` vectors as ID tokens (fusion's output space, not its
    input) 0.513, worse on 8 of 8 runs; users started at the mean of their training items'
    ``content_only`` vectors 0.535, worse on 7 of 8. On a new catalog with the source's own users
    (3 interactions each), ``user_rows`` lifts 0.505 to 0.658, better on 8 of 8.

    Args:
        source: the trained model.
        target: a freshly built model for the new users and items.
        features: modality -> new items' features (every source modality).
        present: modality -> ``True`` where the item has it.
        user_rows: per new user, the source's row of the same user, ``-1`` if unknown.
        batch_size: items projected per batch.
        seed: when given, ``target``'s ID embeddings are first drawn afresh from a generator
            seeded with it and a salt of this function's own (:func:`fresh_generator`): a target
            built under the source's own seed drew the source's starting rows, which its
            trained rows still resemble, so new user or item ``i`` would start near the source's
            user or item ``i`` (another user, another item).

    Raises:
        ConfigError: ``target``'s weights do not have ``source``'s names and shapes.

    Shapes:
        features[m] (N, D_m), present[m] (N,), user_rows (U,)
    """
    if seed is not None:
        target.reset_embeddings(fresh_generator(seed))
    state = {k: v for k, v in source.state_dict().items() if k not in EMBEDDINGS}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(EMBEDDINGS):
        raise ConfigError(f"the target model does not match the source: missing {missing}, unexpected {unexpected}")
    was_training = source.training
    source.eval()
    device = source.user_embedding.weight.device
    if target.item_embedding is not None and target.id_mode == "token":
        n = target.num_items
        has = {m: present[m].to(device) for m in features}
        count = torch.zeros(n, device=device)  # [N] modalities present per item
        for m in features:
            count += has[m]
        rows = (count > 0).nonzero().flatten()  # [N']
        token = torch.zeros(n, target.dim, device=device)  # [N, D] mean projected content token
        for b in range(0, len(rows), batch_size):
            r = rows[b : b + batch_size]
            for m, x in features.items():
                x = x.to(device)[r].masked_fill(~has[m][r].unsqueeze(1), 0.0)  # [B, D_m]
                token[r] += source.projections[m](x) * has[m][r].unsqueeze(1)  # [B, D]
            token[r] /= count[r].unsqueeze(1)  # [B, D]
        items = target.item_embedding.weight
        items[rows.to(items.device)] = token[rows].to(items.device, items.dtype)
    source.train(was_training)
    if user_rows is not None:
        users = target.user_embedding.weight
        keep = np.flatnonzero(user_rows >= 0)
        known = source.user_embedding.weight[torch.from_numpy(user_rows[keep]).to(device)]  # [U', D]
        users[torch.from_numpy(keep).to(users.device)] = known.to(users.device, users.dtype)
    if target.item_embedding is not None:
        # Back to a fresh N(0, 0.1^2) start's scale, 0.1 sqrt(D), whatever id_init the model used
        # (directions kept): the trained source's projected tokens
        # are ~15x longer than N(0, 0.1^2) rows, and at that scale fine-tuning lost to training
        # from scratch (ml100k-plus new-movie split, 3 seeds: test Recall@20 0.149 vs 0.201;
        # rescaled 0.195, and 0.203 with the source's users kept; scripts/quality_cold.py).
        with torch.no_grad():
            items = target.item_embedding.weight
            factor = 0.1 * math.sqrt(target.dim) / float(items.norm(dim=1).mean().clamp(min=1e-12))
            items.mul_(factor)
            target.user_embedding.weight.mul_(factor)


def fresh_generator(seed: int) -> torch.Generator:
    """A CPU generator for a fine-tuned model's fresh ID embeddings: seeded from ``seed`` and a
    fixed salt, so its draws are not those ``seed`` gave the source model's embeddings."""
    state = np.random.SeedSequence([seed, FRESH_SALT]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))


def matching_users(source: Recommender, user_ids: Sequence[UserId]) -> np.ndarray:
    """``[U]`` source row of each user id (compared as text), ``-1`` for users it does not know."""
    pos = {str(u): i for i, u in enumerate(source.user_ids)}
    return np.array([pos.get(str(u), -1) for u in user_ids], dtype=np.int64)


def finetune(
    source: str | Path | Recommender,
    interactions: str | Path,
    *,
    catalog: str | Path | Catalog | None = None,
    features: Mapping[str, str | Path] | None = None,
    out: str | Path | None = None,
    config: TrainConfig | Mapping[str, Any] | None = None,
    split: str = "auto",
    rating_threshold: float | None = None,
    factory: str = "auto",
    overwrite: bool = False,
    keep_users: bool = True,
    ignore: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    skip_invalid: bool = False,
    **catalog_options: Any,
) -> tuple[Recommender, TrainResult, dict[str, float]]:
    """Fine-tune a trained model on a new catalog and (when ``out`` is given) write its directory.

    See the module docstring for what transfers and what is refused. The written directory is
    an ordinary trained directory (``Recommender.load``); its ``train_report.json`` adds
    ``start_valid``, the validation metrics of the transferred model before any step.

    Args:
        source: the trained directory (or an opened :class:`Recommender`) to start from.
        interactions: the new interaction file.
        catalog: the new items file or :class:`Catalog` (optional with ``features``).
        features: modality -> ``.npy`` file, one row per new item (the source's modality names).
        out: directory to write, ``None`` for in memory only; must differ from the source.
        config: ``None`` (the source's configuration), a mapping of fields to change, or a
            :class:`TrainConfig` with the source's architecture.
        split: as :func:`mmrec.pipeline.fit`.
        rating_threshold: keep ratings ``>=`` this as positives (default: every row; not taken
            from the source, whose ratings may use another scale: a warning says when the
            source had one).
        factory: FAISS factory for the trained item vectors.
        overwrite: replace an existing ``out``.
        keep_users: users whose id the source knows start from their source embedding (the same
            people on a new catalog), default on; off, every user starts at random.
        ignore: modalities of the new data to leave out (one name or several).
        cache_dir: feature cache for encoding the catalog.
        show_progress: progress bars.
        skip_invalid: as :func:`mmrec.pipeline.fit`: invalid catalog rows are left out (listed in
            ``out/skipped.jsonl``), and invalid interaction rows and those of the skipped items
            skipped (recorded, so ``evaluate`` reads the file as training did). Not with
            ``features`` beside a catalog.
        **catalog_options: ``text_fields``, ``image_field``, ``image_root``,
            ``mask_bad_images`` (default: the source's).

    Returns:
        ``(recommender, training result, test metrics)``, as :func:`mmrec.pipeline.fit`.

    Raises:
        ConfigError: the new data does not fit the source model (see the module docstring).
    """
    if skip_invalid and features and catalog is not None:
        raise ConfigError(SKIP_WITH_FEATURES)
    if skip_invalid and catalog is not None and not isinstance(catalog, Catalog):
        catalog_options["skip_invalid"] = True
    src = open_source(source, show_progress=show_progress)
    if out is not None and src.items.directory is not None and Path(out).resolve() == src.items.directory.resolve():
        raise ConfigError(f"--out {out} is the source directory: write the fine-tuned model somewhere else")
    src.items._refuse_cache_inside(cache_dir)  # (a folder there would block every later change of the source)
    check_out(out, overwrite, [src.items.directory, interactions,
                               catalog.source if isinstance(catalog, Catalog) else catalog,
                               *(features or {}).values(), catalog_options.get("image_root"), cache_dir])
    given = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
    try:
        cfg = finetune_config(src.config, config)
    except ConfigError as e:  # an inherited setting that clashes with a given one: say where it came from
        inherited = [f"--{f.name.replace('_', '-')} {getattr(src.config, f.name)}" for f in dataclasses.fields(TrainConfig)
                     if f.name not in given and f.name not in ARCHITECTURE and re.search(rf"\b{f.name}\b", str(e))]
        if not inherited:
            raise
        raise ConfigError(f"{e} ({', '.join(inherited)} from the source's config.json: give another value to "
                          f"override it)") from e
    if cfg.lr > src.config.lr:  # the transferred weights are a good start that a large step throws away
        logger.warning("fine-tuning at lr %g, above the source model's %g: a rate at or below the source's suits "
                       "fine-tuning (a larger one can leave the transferred start within an epoch)", cfg.lr,
                       src.config.lr)
    tuned = [m for m in src.items.encoders.spec if m in src.model.modality_dims and m not in ignore]
    if src.items.directory is None and src.config.finetune != "frozen" and cfg.finetune == "frozen" and tuned:
        # Its tuned encoders live only in memory: this run would encode with them but record the
        # untuned ones (the manifest's), so queries and `index add` would use other encoders.
        raise ConfigError(f"the source model tuned its {' and '.join(tuned)} encoder in memory (finetune "
                          f"{src.config.finetune!r}, fit without out=) and never saved it, so a frozen fine-tune "
                          "cannot record it: train the source with out=DIR and fine-tune from that directory, or "
                          "tune the encoders again here (finetune 'top:N' or 'full')")
    if src.config.cold_start > 0 and "cold_start" not in given:
        # An evaluation protocol of the source's data (items held out of training), as --split is: not inherited.
        logger.info("the source model held %g of its items out of training (--cold-start); every new item is "
                    "trained on unless --cold-start is given", src.config.cold_start)
        cfg = dataclasses.replace(cfg, cold_start=0.0)
    try:
        check_device(cfg.device)
    except ConfigError as e:
        if "device" in given:
            raise
        raise ConfigError(f"{e} (the device comes from the source's config.json: --device cpu overrides it)") from e
    if src.rating_threshold is not None and rating_threshold is None:
        # The threshold describes the new file's ratings, which may use another scale: not inherited.
        logger.warning("the source model was trained with rating threshold %g; the new interactions have none, "
                       "so every row is a positive (give --rating-threshold to apply one)", src.rating_threshold)
    check_columns(interactions, split=split, rating_threshold=rating_threshold)  # before the encoding below
    check_factory(factory, None)  # its form; enough items to train it is checked once they are known
    content = source_content(src, catalog, features, ignore=ignore, cache_dir=cache_dir,
                             show_progress=show_progress, device=cfg.device, **catalog_options)
    if cfg.finetune != "frozen":  # the tuner trains them in place: leave the source's own untouched
        content.encoder_objects = {m: copy.deepcopy(e) for m, e in content.encoder_objects.items()}

    def start(trainer: Trainer) -> dict[str, Any]:
        inter = trainer.data.inter
        rows = matching_users(src, inter.user_ids) if keep_users else None
        if rows is not None and not (rows >= 0).any():
            logger.info("0 of %d users keep their source embedding: no user id of the new data is the source's",
                        len(rows))
        elif rows is not None:
            # Matched by id alone: "u01" of two shops may be two people. Said where it decides the start.
            logger.warning("%d of %d users keep their source embedding, matched by id (pass --no-keep-users / "
                           "keep_users=False if these ids name other people in the new data)",
                           int((rows >= 0).sum()), len(rows))
        transfer_weights(src.model, trainer.model, trainer.features, trainer.present, user_rows=rows,
                         seed=trainer.cfg.seed)
        # A user the source never trained either keeps a random start: not counted as placed
        untrained = {str(u) for u in getattr(src, "untrained_users", [])}
        trainer.kept_users = None if rows is None else np.array(
            [r >= 0 and str(src.user_ids[r]) not in untrained for r in rows], dtype=bool)
        report: dict[str, Any] = {"source": str(src.items.directory or "")}
        if inter.split_mask("valid").any():  # (without validation rows, training has no early stopping either)
            valid = report["start_valid"] = trainer.validate("valid")
            trainer.start_valid = valid  # kept as the result if no epoch beats it
            logger.info("transferred model before training: valid recall@20 %.4f", valid["recall@20"])
        return report

    try:
        return fit(interactions, content=content, out=out, config=cfg, split=split, rating_threshold=rating_threshold,
                   factory=factory, overwrite=overwrite, show_progress=show_progress, before_training=start,
                   skip_invalid=skip_invalid)
    except ConfigError as e:  # an encoder mode the source was trained with, which this content cannot take
        if "finetune" in given or not str(e).startswith(f"finetune {cfg.finetune!r}"):
            raise
        raise ConfigError(f"{e} (--finetune {cfg.finetune} comes from the source's config.json: --finetune frozen "
                          "overrides it)") from e
