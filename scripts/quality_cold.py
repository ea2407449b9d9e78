"""Cold-start and fine-tuning quality on the real benchmark sets (issue 4).

Three parts, each runnable as its own process (results merge into one JSON under a lock):

``cold:ml100k-plus`` / ``cold:tiktok`` -- the cold-start protocol of :mod:`mmrec.coldstart`
on the dataset's GIVEN split: ``TrainConfig(cold_start=0.2, seed=s)`` holds 20% of the items
out of training; ``mmrec.pipeline.fit`` adds them through the trained content path and ranks
them for the users who interacted with them. Beside every trained variant:

* ``random``        -- uniform random ranking of the cold items: the EXACT expected value
  (recall@K = min(K, C) / C, ndcg@K = (|T| / C) * sum_{r<=min(K,C)} 1/log2(r+1) / IDCG(|T|),
  averaged over users), checked against the mean of ``--random-draws`` seeded random scorings;
* ``content-index`` -- no training: each item is ``fusion.fixed.combine_modalities`` of its
  features (each modality less its catalog mean and L2-normalised, as ``mmrec index build``;
  equal weights, row renormalised to unit norm); a
  user is the plain mean of its warm training items' vectors (no renormalisation: a positive
  factor per user does not change that user's ranking); cold items are scored by inner product
  through ``mmrec.coldstart.evaluate_cold``;
* trained variants (on TrainConfig's architecture: residual ID, content_gain 0.01): ``a`` no
  token dropout and no alignment; ``b`` dropouts (modality 0.1, ID 0.3); ``c`` those dropouts +
  ``align_weight`` 0.1 and 1.0; ``d`` modality dropout 0.1 + ``align_weight`` 0.1 without ID
  dropout (TrainConfig's defaults: cold items blended with their 10 nearest warm items'
  vectors); ``e`` = ``d`` with the content path alone (``cold_neighbours=0``).

Selection uses validation data only. The held-out items are split (seeded) into two halves:
``cold-valid`` items (used for selection) and ``cold-test`` items (never used for selection);
training is identical either way (both halves are held out). The variant chosen is the one with
the best cold-valid Recall@20 among the variants whose warm validation Recall@20 is at least 98%
of variant ``a``'s. Reported for every variant: warm test metrics (the usual test split, warm
items; ``mask="train"``), the issue's cold metric on ALL held-out items (``fit``'s
``test["cold"]``) and the same metric on the cold-test half alone. A model trained without a
cold split (the chosen variant's knobs) is scored on the same warm test rows to show what the
cold split itself costs (it also trains on 20% more items, so it is not a pure ablation).

``cold_scale``: ``fit`` scales content-only vectors by a norm-matched factor (median trained
warm-item norm / median content-only warm-item norm, ``mmrec.pipeline.content_scale``). Ranking
cold items among themselves is invariant to that factor (checked here), so the part also ranks
cold and warm items TOGETHER (``mixed``: truth = the user's warm test rows + cold rows;
``cold-in-mixed``: truth = cold rows only, warm items still candidates) with the factor as
shipped, with factor 1 and with ``1/(L+1)`` (where an edgeless item lands after layer-mean
propagation), by rescaling the index rows of the cold items (a monkeypatch of the numbers, not of
the library).

``finetune:ml100k-plus`` -- items split by ``release_date`` (year < 1995 = source, >= 1995 =
target; an item without a date is dropped). The source model is trained on the old movies'
interactions (given split, seed 0); the target keeps all its valid/test rows but a seeded 20%
of its training rows. ``mmrec.transfer.finetune(source -> target)`` is compared with
``mmrec.pipeline.fit`` from scratch on the same target files with the same configuration
(epochs, patience, lr, seed): test Recall@20 / NDCG@20 on the target's test split.

Commands (from the project root; each part can run in its own process)::

    .venv/bin/python scripts/quality_cold.py --parts cold:ml100k-plus --variants a b c0.1 d0.1 e --cache-dir CACHE
    .venv/bin/python scripts/quality_cold.py --parts cold:tiktok --variants a b c0.1 d0.1 e --patience 10
    .venv/bin/python scripts/quality_cold.py --parts finetune:ml100k-plus --ft-seeds 0 1 2 --ft-variant d0.1 \
        --ft-arms scratch finetune finetune-keep-users --cache-dir CACHE

``--cache-dir`` keeps MiniLM features of the catalog between runs (encoding it takes minutes on
a busy CPU). ``--threads 1`` (default) is faster than oversubscribing a shared CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusion.fixed import combine_modalities, modality_centers  # noqa: E402
from mmrec.coldstart import cold_part, evaluate_cold, hold_out_items, with_content, warm_part  # noqa: E402
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.interactions import TEST, TRAIN, VALID, Interactions  # noqa: E402
from mmrec.metrics import evaluate, rank_topk  # noqa: E402
from mmrec.pipeline import Content, fit, interactions_for, load_content  # noqa: E402
from machine import METRICS, add_run_options, command_line, describe_machine, feature_cache, mean_std, pick_metrics, update_results  # noqa: E402  (scripts/machine.py)

TEXT_FIELDS = ["title", "genres", "summary", "cast", "director"]

DATASETS: dict[str, dict[str, Any]] = {
    "ml100k-plus": {"interactions": "ml100k-plus/interactions.tsv", "catalog": "ml100k-plus/items.csv"},
    "tiktok": {"interactions": "tiktok/interactions.tsv",
               "features": {"image": "tiktok/image_feat.npy", "audio": "tiktok/audio_feat.npy"}},
}
PARTS = ("cold:ml100k-plus", "cold:tiktok", "finetune:ml100k-plus")
VARIANTS: dict[str, dict[str, float]] = {
    "a: no dropout": {"modality_dropout": 0.0, "id_dropout": 0.0, "align_weight": 0.0},
    "b: dropouts": {"modality_dropout": 0.1, "id_dropout": 0.3, "align_weight": 0.0},
    "c: dropouts + align 0.1": {"modality_dropout": 0.1, "id_dropout": 0.3, "align_weight": 0.1},
    "c: dropouts + align 1.0": {"modality_dropout": 0.1, "id_dropout": 0.3, "align_weight": 1.0},
    "d: modality dropout + align 0.1": {"modality_dropout": 0.1, "id_dropout": 0.0, "align_weight": 0.1},
    "e: d, content path alone (no neighbour blend)": {"modality_dropout": 0.1, "id_dropout": 0.0, "align_weight": 0.1,
                                                      "cold_neighbours": 0},
}
VARIANT_KEYS = {name.split(":")[0] + (name.split("align ")[1] if "align" in name else ""): name for name in VARIANTS}
WARM_TOLERANCE = 0.02  # warm Recall@20 may drop by at most 2% relative (the issue)


# ----------------------------------------------------------------------------------- helpers
def pick(metrics: dict[str, float]) -> dict[str, float]:
    return pick_metrics(metrics, users=True)


def load_dataset(root: Path, name: str, cache_dir: Path) -> Content:
    spec = DATASETS[name]
    if "catalog" in spec:
        return load_content(root / spec["catalog"], None, text_fields=TEXT_FIELDS, image_encoder=None,
                            cache_dir=cache_dir, show_progress=False)
    return load_content(None, {m: root / p for m, p in spec["features"].items()}, show_progress=False)


def base_config(args: argparse.Namespace, seed: int, **changes: Any) -> TrainConfig:
    return TrainConfig(**{"mask": "train", "lr": args.lr, "epochs": args.epochs, "patience": args.patience,
                          "batch_size": args.batch_size, "seed": seed} | changes)


def index_vectors(rec: Any, item_ids: list) -> torch.Tensor:
    """``[N, D]`` vectors the index scores with, in item-space order (as ``fit`` builds them)."""
    order = np.array([rec.items._pos[i] for i in item_ids])
    return torch.from_numpy(rec.items.vectorizer.mips.original(rec.items.vectors[order]))  # [N, D]


def relabel(inter: Interactions, keep: np.ndarray, split: np.ndarray) -> Interactions:
    return inter.rows(keep, split.astype(np.int8))


# ------------------------------------------------------------------------- cold baselines
def random_exact(inter: Interactions, cold: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of the cold items (exact, per user then mean)."""
    truth = cold_part(inter, cold).user_items("test")
    sizes = np.diff(truth.indptr)
    sizes = sizes[sizes > 0].astype(np.float64)  # |T| per evaluated user
    c = int(cold.sum())
    out: dict[str, float] = {"num_users": len(sizes)}
    for k in ks:
        kk = min(k, c)
        disc = 1.0 / np.log2(np.arange(2, kk + 2))  # [kk]
        idcg = np.array([disc[: int(min(t, kk))].sum() for t in sizes])
        out[f"recall@{k}"] = kk / c
        out[f"ndcg@{k}"] = float(np.mean(sizes / c * disc.sum() / idcg))
    return out


def random_drawn(inter: Interactions, cold: np.ndarray, draws: int) -> dict[str, float]:
    """Mean over ``draws`` seeded uniform random scorings (a check of :func:`random_exact`)."""
    warm = torch.from_numpy(~cold)
    runs = []
    for seed in range(draws):
        g = torch.Generator().manual_seed(seed)

        def score(users: np.ndarray) -> torch.Tensor:
            s = torch.rand(len(users), len(cold), generator=g)  # [B, N]
            s[:, warm] = float("-inf")
            return s

        runs.append(evaluate(score, cold_part(inter, cold), split="test", mask="all", ks=(10, 20)))
    return {k: float(np.mean([r[k] for r in runs])) for k in METRICS}


def content_index(content: Content, inter: Interactions, held: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Untrained content vectors: items = fixed combination (each modality measured from its catalog
    mean, as ``mmrec index build``), users = mean of warm training items."""
    names = sorted(content.features)
    centers = modality_centers(content.features, content.present)
    items = combine_modalities(content.features, content.present, order=names, centers=centers)  # [N, sum D_m], unit rows
    train = warm_part(inter, held).user_items("train").astype(np.float32)  # [U, N]
    counts = np.maximum(np.asarray(train.sum(axis=1)).ravel(), 1.0)  # [U]
    users = np.asarray(train @ items, dtype=np.float32) / counts[:, None].astype(np.float32)  # [U, sum D_m]
    return torch.from_numpy(users), torch.from_numpy(items)


def cold_sets(inter: Interactions, held: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """All held-out items, and their seeded halves: cold-valid (selection) and cold-test."""
    idx = np.flatnonzero(held)
    perm = np.random.default_rng(10_000 + seed).permutation(idx)
    valid = np.zeros_like(held)
    valid[perm[: len(idx) // 2]] = True
    return {"all": held, "valid": valid, "test": held & ~valid}


def cold_metrics(users: torch.Tensor, items: torch.Tensor, inter: Interactions,
                 sets: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {name: pick(evaluate_cold(users, items, inter, c)) for name, c in sets.items()}


def mixed_metrics(users: torch.Tensor, items: torch.Tensor, inter: Interactions, held: np.ndarray) -> dict[str, Any]:
    """Cold and warm items ranked together (what a served index does), every non-history item a candidate.

    History = warm train + warm valid rows (masked); ``mixed`` truth = warm test rows + every
    cold-item row; ``cold_in_mixed`` truth = the cold-item rows only (warm test rows masked).
    """
    is_cold = held[inter.items]
    keep = np.ones(len(inter), dtype=bool)
    split_mixed = np.where(is_cold, TEST, inter.split)
    split_cold = np.where(is_cold, TEST, np.where(inter.split == TEST, VALID, inter.split))

    def score(u: np.ndarray) -> torch.Tensor:
        return users[torch.as_tensor(u)] @ items.T  # [B, N]

    mixed = relabel(inter, keep, split_mixed)
    only = relabel(inter, keep, split_cold)
    out = {"mixed": pick(evaluate(score, mixed, split="test", mask="all")),
           "cold_in_mixed": pick(evaluate(score, only, split="test", mask="all"))}
    test_users = np.unique(mixed.users[mixed.split == TEST])
    exclude = mixed.user_items(["train", "valid"])
    top = rank_topk(score, test_users, 20, exclude)  # [R, 20]
    out["cold_share_top20"] = round(float(held[top[top >= 0]].mean()), 6)
    out["cold_share_truth"] = round(float(is_cold[mixed.split == TEST].mean()), 6)
    return out


# ------------------------------------------------------------------------------ cold part
def run_cold(name: str, args: argparse.Namespace, cache_dir: Path, save: Callable[[dict], None]) -> dict:
    t0 = time.perf_counter()
    root = Path(args.data)
    path = root / DATASETS[name]["interactions"]
    content = load_dataset(root, name, cache_dir)
    seed = args.seeds[0]
    inter = interactions_for(content, path, split="given", seed=seed)
    held = hold_out_items(inter, args.cold_fraction, seed, with_content(content.present, inter.num_items))  # fit's draw
    sets = cold_sets(inter, held, seed)
    entry: dict[str, Any] = {
        "command": args.command, "complete": False, "machine_at_start": describe_machine(),
        "data": {"users": inter.num_users, "items": inter.num_items, "split": inter.split_counts(),
                 "modalities": {m: int(x.shape[1]) for m, x in content.features.items()},
                 "cold_items": {k: int(v.sum()) for k, v in sets.items()},
                 "cold_rows": int(held[inter.items].sum())},
        "load_seconds": round(time.perf_counter() - t0, 1),
        "settings": {"lr": args.lr, "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
                     "mask": "train", "cold_start": args.cold_fraction, "seed": seed},
        "baselines": {}, "variants": {}, "selection": None, "checks": {},
    }
    print(f"[{name}] {inter}, cold items {entry['data']['cold_items']} (loaded in {entry['load_seconds']}s)",
          flush=True)

    def checkpoint() -> None:
        entry["checks"] = cold_checks(entry)
        entry["machine_at_end"] = describe_machine()
        entry["total_seconds"] = round(time.perf_counter() - t0, 1)
        save(entry)

    if args.reference_only:  # add the reference to the entry already in --out (same data and seed)
        path_json = Path(args.out) / "quality_cold.json"
        entry = json.loads(path_json.read_text())["parts"][f"cold:{name}"]
        entry["reference_command"] = args.command
        t0 -= entry.get("total_seconds", 0.0)
    else:
        t = time.perf_counter()
        exact = {k: random_exact(inter, c) for k, c in sets.items()}
        drawn = random_drawn(inter, held, args.random_draws)
        entry["baselines"]["random"] = {"how": "exact expected value; 'drawn_all' = mean of seeded random scorings",
                                        "cold": {k: pick(v) for k, v in exact.items()},
                                        "drawn_all": {k: round(v, 6) for k, v in drawn.items()},
                                        "draws": args.random_draws}
        users, items = content_index(content, inter, held)
        entry["baselines"]["content-index"] = {"cold": cold_metrics(users, items, inter, sets),
                                               "seconds": round(time.perf_counter() - t, 1)}
        print(f"[{name}] random cold R@20 {exact['all']['recall@20']:.4f} (drawn {drawn['recall@20']:.4f}); "
              f"content-index cold R@20 {entry['baselines']['content-index']['cold']['all']['recall@20']:.4f}", flush=True)
        checkpoint()

        for key in args.variants:
            vname = VARIANT_KEYS[key]
            entry["variants"][vname] = train_cold_variant(name, content, path, inter, held, sets,
                                                          base_config(args, seed, cold_start=args.cold_fraction,
                                                                      **VARIANTS[vname]))
            entry["selection"] = select(entry)
            checkpoint()

    chosen = entry["selection"]["chosen"] if entry["selection"] else None
    if chosen is not None and not args.skip_reference:
        entry["reference_no_cold_split"] = train_reference(name, content, path, inter, held,
                                                           base_config(args, seed, **VARIANTS[chosen]), chosen)
    entry["complete"] = True
    checkpoint()
    return entry


def train_cold_variant(name: str, content: Content, path: Path, inter: Interactions, held: np.ndarray,
                       sets: dict[str, np.ndarray], cfg: TrainConfig) -> dict[str, Any]:
    start = time.perf_counter()
    rec, result, test = fit(path, content=content, config=cfg, split="given", show_progress=False)
    wall = time.perf_counter() - start
    users = torch.from_numpy(np.asarray(rec.user_vectors, np.float32))
    items = index_vectors(rec, content.item_ids)  # cold rows = content-only x cold_scale
    cold = cold_metrics(users, items, inter, sets)
    # fit's own number and ours come from the same vectors: they must agree (ours are rounded to 6 places).
    agree = all(abs(cold["all"][k] - test["cold"][k]) <= 1e-6 for k in METRICS)
    scale = float(rec.items.vectorizer.cold_scale)  # what fit ships (norm-matched)
    unscaled = items.clone()
    unscaled[torch.from_numpy(held)] /= scale  # cold rows without the shipped factor
    isolated = unscaled.clone()
    isolated[torch.from_numpy(held)] /= cfg.layers + 1  # an edgeless node's layer mean
    cold_unscaled = cold_metrics(users, unscaled, inter, {"all": held})["all"]
    # Norm-matched factor: the median norm of the warm items' trained vectors over the median norm
    # of their content-only vectors (a calibration from training items only).
    warm = torch.from_numpy(~held)
    with torch.no_grad():
        content_only = rec.model.eval().content_only(
            {m: torch.from_numpy(x) for m, x in content.features.items()},
            {m: torch.from_numpy(x) for m, x in content.present.items()})  # [N, D]
    matched = float(items[warm].norm(dim=1).median() / content_only[warm].norm(dim=1).median())
    calibrated = items.clone()
    calibrated[torch.from_numpy(held)] = content_only[torch.from_numpy(held)] * matched
    # Two more calibrations from warm training data only: least squares s = <c, v> / <c, c> over
    # warm items, and score matching s = sum u.v_i / sum u.c_i over the training pairs.
    c_w, v_w = content_only[warm], items[warm]
    least_squares = float((c_w * v_w).sum() / (c_w * c_w).sum())
    tr = inter.split == TRAIN
    tu, ti = torch.from_numpy(inter.users[tr]), torch.from_numpy(inter.items[tr])
    tr_keep = ~torch.from_numpy(held)[ti]
    tu, ti = tu[tr_keep], ti[tr_keep]
    score_matched = float((users[tu] * items[ti]).sum() / (users[tu] * content_only[ti]).sum())
    extra_scales = {}
    for label, factor in (("least-squares", least_squares), ("score-matched", score_matched)):
        scaled = items.clone()
        scaled[torch.from_numpy(held)] = content_only[torch.from_numpy(held)] * factor
        extra_scales[f"content path alone, {label} ({factor:.4f})"] = mixed_metrics(users, scaled, inter, held)
    run = {
        "config": {k: getattr(cfg, k) for k in ("modality_dropout", "id_dropout", "align_weight", "cold_neighbours")},
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "seconds_per_epoch": round(result.seconds_per_epoch, 2), "wall_seconds": round(wall, 1),
        "valid_warm": pick(result.best_valid),
        "test_warm": pick(test),
        "cold": cold,
        "cold_matches_fit": agree,
        "cold_all_unscaled": cold_unscaled,
        "cold_scale_invariant": all(abs(cold_unscaled[k] - cold["all"][k]) <= 1e-6 for k in METRICS),
        "mixed": {f"as shipped (x{scale:.4f})": mixed_metrics(users, items, inter, held),
                  "shipped path, x1/(L+1)": mixed_metrics(users, isolated, inter, held),
                  "shipped path, unscaled": mixed_metrics(users, unscaled, inter, held)} | extra_scales,
        "norm_matched_scale": round(matched, 5),
        "shipped_scale": round(scale, 5),
        "mixed_norm_matched": mixed_metrics(users, calibrated, inter, held),
        "valid_curve": [round(h["valid_recall@20"], 5) for h in result.history if "valid_recall@20" in h],
    }
    print(f"[{name}] {run['config']}: warm valid R@20 {run['valid_warm']['recall@20']:.4f} "
          f"test R@20 {run['test_warm']['recall@20']:.4f}; cold-valid R@20 {cold['valid']['recall@20']:.4f} "
          f"cold R@20 {cold['all']['recall@20']:.4f} N@20 {cold['all']['ndcg@20']:.4f}; "
          f"best epoch {run['best_epoch']}/{run['epochs_run']}, {wall:.0f}s", flush=True)
    return run


def train_reference(name: str, content: Content, path: Path, inter: Interactions, held: np.ndarray,
                    cfg: TrainConfig, variant: str) -> dict[str, Any]:
    """The chosen variant's knobs without a cold split, scored on the same warm test rows.

    Its cold items are trained items (the users' training interactions with them are known to
    it), so they are excluded from its candidates: the warm rows are ranked among warm items.
    """
    start = time.perf_counter()
    rec, result, test = fit(path, content=content, config=cfg, split="given", show_progress=False)
    users = torch.from_numpy(np.asarray(rec.user_vectors, np.float32))
    items = index_vectors(rec, content.item_ids)

    cold = torch.from_numpy(held)

    def score(u: np.ndarray) -> torch.Tensor:
        s = users[torch.as_tensor(u)] @ items.T  # [B, N]
        s[:, cold] = float("-inf")  # warm candidates only: this model knows the users' cold items
        return s

    warm_test = evaluate(score, warm_part(inter, held), split="test", mask="train", ks=(10, 20))
    run = {"variant": variant, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
           "seconds_per_epoch": round(result.seconds_per_epoch, 2),
           "wall_seconds": round(time.perf_counter() - start, 1),
           "valid_all_items": pick(result.best_valid), "test_all_items": pick(test),
           "test_warm_rows": pick(warm_test)}
    print(f"[{name}] no cold split ({variant}): test R@20 on the warm rows {warm_test['recall@20']:.4f}, "
          f"on all rows {test['recall@20']:.4f}", flush=True)
    return run


def select(entry: dict[str, Any]) -> dict[str, Any] | None:
    """Best cold-valid Recall@20 among variants within 2% of variant a's warm validation Recall@20."""
    runs = entry["variants"]
    ref_name = next((v for v in runs if v.startswith("a")), None)
    if ref_name is None:
        return None
    floor = (1 - WARM_TOLERANCE) * runs[ref_name]["valid_warm"]["recall@20"]
    allowed = [v for v, r in runs.items() if r["valid_warm"]["recall@20"] >= floor]
    chosen = max(allowed, key=lambda v: runs[v]["cold"]["valid"]["recall@20"])
    return {"rule": "max cold-valid Recall@20 s.t. warm valid Recall@20 >= 0.98 x variant a's",
            "warm_valid_floor": round(floor, 6), "allowed": allowed, "chosen": chosen}


def cold_checks(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sel = entry.get("selection")
    if not sel:
        return out
    run = entry["variants"][sel["chosen"]]
    base = entry["baselines"]["content-index"]["cold"]
    rnd = entry["baselines"]["random"]["cold"]
    for half in ("all", "test"):
        for m in ("recall@20", "ndcg@20"):
            t, c = run["cold"][half][m], base[half][m]
            out[f"trained_beats_content_index_cold_{half}_{m}"] = {
                "trained": t, "content_index": c, "random": rnd[half][m], "relative_gain": (t - c) / c, "met": t > c}
    a = next(v for v in entry["variants"] if v.startswith("a"))
    for m in ("recall@20",):
        w, r = run["test_warm"][m], entry["variants"][a]["test_warm"][m]
        out[f"warm_drop_vs_a_{m}"] = {"chosen": w, "a": r, "relative_change": (w - r) / r,
                                      "met": (w - r) / r >= -WARM_TOLERANCE}
        ref = entry.get("reference_no_cold_split")
        if ref:
            r2 = ref["test_warm_rows"][m]
            out[f"warm_drop_vs_no_cold_split_{m}"] = {"chosen": w, "no_cold_split": r2, "relative_change": (w - r2) / r2,
                                                      "met": (w - r2) / r2 >= -WARM_TOLERANCE}
    return out


# -------------------------------------------------------------------------- fine-tuning part
def release_year(text: str) -> int | None:
    """``01-Jan-95`` -> 1995 (MovieLens dates are all 19xx), ``01-Jan-1995`` -> 1995, '' -> None."""
    m = re.fullmatch(r"\s*\d{1,2}-[A-Za-z]{3}-(\d{2}|\d{4})\s*", text or "")
    if not m:
        return None
    y = int(m.group(1))
    return y if y >= 100 else 1900 + y


def write_transfer_files(root: Path, tmp: Path, seeds: list[int], fraction: float, cutoff: int) -> dict[str, Any]:
    """Source / target catalogs and interaction files (one target file per seed) under ``tmp``."""
    with open(root / "ml100k-plus/items.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    years = {r["item_id"]: release_year(r["release_date"]) for r in rows}
    side = {i: (None if y is None else "source" if y < cutoff else "target") for i, y in years.items()}
    for part in ("source", "target"):
        with open(tmp / f"{part}_items.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(r for r in rows if side[r["item_id"]] == part)
    with open(root / "ml100k-plus/interactions.tsv", encoding="utf-8") as f:
        head = f.readline()
        lines = f.readlines()
    cols = head.rstrip("\n").split("\t")
    item_col, split_col = cols.index("item_id"), cols.index("split")
    parsed = [ln.rstrip("\n").split("\t") for ln in lines]
    src = [ln for ln, p in zip(lines, parsed) if side.get(p[item_col]) == "source"]
    tgt = [(ln, p[split_col]) for ln, p in zip(lines, parsed) if side.get(p[item_col]) == "target"]
    (tmp / "source_inter.tsv").write_text(head + "".join(src))
    train_idx = np.array([i for i, (_, s) in enumerate(tgt) if s == "train"])
    kept = {}
    for seed in seeds:
        keep = np.random.default_rng(seed).choice(train_idx, size=int(round(fraction * len(train_idx))), replace=False)
        keep_set = set(keep.tolist())
        out = [ln for i, (ln, s) in enumerate(tgt) if s != "train" or i in keep_set]
        (tmp / f"target_inter_{seed}.tsv").write_text(head + "".join(out))
        kept[seed] = len(keep)
    undated = [i for i, s in side.items() if s is None]
    return {"cutoff_year": cutoff, "items": {p: sum(1 for s in side.values() if s == p) for p in ("source", "target")},
            "undated_items_dropped": undated,
            "rows_dropped_undated": sum(1 for p in parsed if side.get(p[item_col]) is None),
            "source_rows": len(src),
            "target_rows_by_split": {s: sum(1 for _, x in tgt if x == s) for s in ("train", "valid", "test")},
            "target_train_rows_kept": kept, "train_fraction": fraction}


@contextlib.contextmanager
def rescaled_start(active: bool, entry: dict[str, Any]):
    """Monkeypatch (this process only) of ``mmrec.transfer.transfer_weights``: after the transfer,
    scale the new ID and user embeddings by one factor so that the items' mean row norm equals
    that of a fresh ``N(0, 0.1^2)`` start (``0.1 * sqrt(D)``). Directions are kept."""
    import mmrec.transfer as transfer

    original = transfer.transfer_weights

    def patched(source, target, *a, **kw):  # type: ignore[no-untyped-def]
        original(source, target, *a, **kw)
        with torch.no_grad():
            items = target.item_embedding.weight
            norm = float(items.norm(dim=1).mean())
            factor = 0.1 * math.sqrt(target.dim) / norm
            items.mul_(factor)
            target.user_embedding.weight.mul_(factor)
        entry.setdefault("rescaled_start", []).append({"mean_item_norm_before": round(norm, 4),
                                                       "factor": round(factor, 5)})
        entry["rescaled_start"] = entry["rescaled_start"][-12:]

    if active:
        transfer.transfer_weights = patched
    try:
        yield
    finally:
        transfer.transfer_weights = original


def run_finetune(args: argparse.Namespace, cache_dir: Path, save: Callable[[dict], None]) -> dict:
    from mmrec.transfer import finetune  # being finished concurrently: imported only here

    t0 = time.perf_counter()
    root = Path(args.data)
    entry: dict[str, Any] = {"command": args.command, "complete": False, "machine_at_start": describe_machine(),
                             "settings": {"lr": args.lr, "epochs": args.epochs, "patience": args.patience,
                                          "batch_size": args.batch_size, "mask": "train",
                                          "dropouts": VARIANTS[VARIANT_KEYS[args.ft_variant]]},
                             "transfer_module_sha256": hashlib.sha256(
                                 (Path(__file__).resolve().parents[1] / "mmrec/transfer.py").read_bytes()).hexdigest(),
                             "runs": [], "summary": {}, "checks": {}}

    def checkpoint() -> None:
        runs = entry["runs"]
        for kind in args.ft_arms:
            if runs:
                entry["summary"][kind] = {m: mean_std([r[kind]["test"][m] for r in runs]) for m in METRICS}
        entry["checks"] = {}
        for kind in args.ft_arms:
            if kind == "scratch" or not runs or "scratch" not in entry["summary"]:
                continue
            f, sc = entry["summary"][kind]["recall@20"]["mean"], entry["summary"]["scratch"]["recall@20"]["mean"]
            entry["checks"][f"{kind}_beats_scratch_recall@20"] = {
                kind: f, "scratch": sc, "relative_gain": (f - sc) / sc, "met": f > sc,
                "seeds_won": sum(r[kind]["test"]["recall@20"] > r["scratch"]["test"]["recall@20"] for r in runs),
                "seeds": len(runs)}
        entry["machine_at_end"] = describe_machine()
        entry["total_seconds"] = round(time.perf_counter() - t0, 1)
        save(entry)

    knobs = VARIANTS[VARIANT_KEYS[args.ft_variant]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        entry["data"] = write_transfer_files(root, tmp, args.ft_seeds, args.ft_fraction, args.ft_cutoff)
        print(f"[finetune] {json.dumps(entry['data'])[:400]}", flush=True)
        t = time.perf_counter()
        src_cfg = base_config(args, args.ft_source_seed, **knobs)
        source, src_result, src_test = fit(tmp / "source_inter.tsv", catalog=tmp / "source_items.csv", config=src_cfg,
                                           split="given", show_progress=False, text_fields=TEXT_FIELDS,
                                           image_encoder=None, cache_dir=cache_dir)
        entry["source"] = {"seed": args.ft_source_seed, "best_epoch": src_result.best_epoch,
                           "epochs_run": len(src_result.history), "valid": pick(src_result.best_valid),
                           "test": pick(src_test), "wall_seconds": round(time.perf_counter() - t, 1)}
        print(f"[finetune] source: test R@20 {src_test['recall@20']:.4f}, best epoch {src_result.best_epoch}", flush=True)
        checkpoint()
        target = load_content(tmp / "target_items.csv", None, text_fields=TEXT_FIELDS, image_encoder=None,
                              cache_dir=cache_dir, show_progress=False)
        def arm(kind: str, seed: int, lr: float) -> dict[str, Any]:
            inter_path = tmp / f"target_inter_{seed}.tsv"
            cfg = base_config(args, seed, **knobs | {"lr": lr})
            t = time.perf_counter()
            report: dict[str, Any] = {}
            if kind == "scratch":
                _, res, test = fit(inter_path, content=target, config=cfg, split="given", show_progress=False)
            else:
                out = tmp / f"{kind}_{seed}_{lr}"
                changes = {k: getattr(cfg, k) for k in ("lr", "epochs", "patience", "batch_size", "mask", "seed")}
                with rescaled_start("rescaled" in kind, entry):
                    _, res, test = finetune(source, inter_path, catalog=tmp / "target_items.csv", out=out,
                                            config=changes, split="given", cache_dir=cache_dir, show_progress=False,
                                            keep_users=kind.endswith("keep-users"))
                report = json.loads((out / "train_report.json").read_text())
            got = {"lr": lr, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                   "valid": pick(res.best_valid), "test": pick(test),
                   "valid_curve": [round(h["valid_recall@20"], 5) for h in res.history if "valid_recall@20" in h],
                   "wall_seconds": round(time.perf_counter() - t, 1)}
            if "start_valid" in report:
                got["start_valid"] = pick(report["start_valid"])
            print(f"[finetune] {kind} seed {seed} lr {lr}: valid R@20 {got['valid']['recall@20']:.4f} "
                  f"test R@20 {got['test']['recall@20']:.4f} N@20 {got['test']['ndcg@20']:.4f} "
                  f"(best epoch {got['best_epoch']}/{got['epochs_run']})"
                  + (f", before training valid R@20 {got['start_valid']['recall@20']:.4f}" if "start_valid" in got
                     else ""), flush=True)
            return got

        # Each arm picks its learning rate on the first seed's VALIDATION Recall@20 (same grid, same budget).
        first = args.ft_seeds[0]
        entry["grid"], chosen = {}, {}
        for kind in args.ft_arms:
            entry["grid"][kind] = [arm(kind, first, lr) for lr in args.ft_lrs]
            best = max(entry["grid"][kind], key=lambda g: g["valid"]["recall@20"])
            chosen[kind] = best
            checkpoint()
        entry["selected_lr"] = {k: v["lr"] for k, v in chosen.items()}
        for seed in args.ft_seeds:
            run: dict[str, Any] = {"seed": seed}
            for kind in args.ft_arms:
                run[kind] = chosen[kind] if seed == first else arm(kind, seed, chosen[kind]["lr"])
            entry["runs"].append(run)
            checkpoint()
    entry["complete"] = True
    checkpoint()
    return entry


# ----------------------------------------------------------------------------------- output
def f4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def cold_markdown(part: str, e: dict[str, Any]) -> list[str]:
    d, s = e["data"], e["settings"]
    lines = [f"## Cold start: {part.split(':')[1]}" + ("" if e.get("complete") else " (INTERRUPTED: partial)"), "",
             f"{d['users']} users, {d['items']} items, modalities {d['modalities']}; given split {d['split']}; "
             f"{d['cold_items']['all']} items held out ({d['cold_rows']} interactions), halved into "
             f"{d['cold_items']['valid']} cold-valid (selection) + {d['cold_items']['test']} cold-test items. "
             f"Seed {s['seed']}, lr {s['lr']}, <= {s['epochs']} epochs, patience {s['patience']}, "
             f"batch {s['batch_size']}, warm metrics with mask=\"{s['mask']}\".", "",
             "| model | warm valid R@20 | cold-valid R@20 | warm test R@20 | warm test N@20 | cold R@20 | cold N@20 "
             "| cold-test half R@20 | cold-test half N@20 | best epoch | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rnd, ci = e["baselines"].get("random"), e["baselines"].get("content-index")
    for label, cold in (("random (exact expectation)", rnd and rnd["cold"]),
                        ("content index, untrained", ci and ci["cold"])):
        if cold:
            lines.append(f"| {label} | - | {f4(cold['valid']['recall@20'])} | - | - | {f4(cold['all']['recall@20'])} | "
                         f"{f4(cold['all']['ndcg@20'])} | {f4(cold['test']['recall@20'])} | "
                         f"{f4(cold['test']['ndcg@20'])} | - | - |")
    chosen = (e.get("selection") or {}).get("chosen")
    for v, r in e["variants"].items():
        c = r["cold"]
        mark = " **(chosen)**" if v == chosen else ""
        lines.append(f"| {v}{mark} | {f4(r['valid_warm']['recall@20'])} | {f4(c['valid']['recall@20'])} | "
                     f"{f4(r['test_warm']['recall@20'])} | {f4(r['test_warm']['ndcg@20'])} | {f4(c['all']['recall@20'])} | "
                     f"{f4(c['all']['ndcg@20'])} | {f4(c['test']['recall@20'])} | {f4(c['test']['ndcg@20'])} | "
                     f"{r['best_epoch']}/{r['epochs_run']} | {r['wall_seconds']:.0f} |")
    ref = e.get("reference_no_cold_split")
    if ref:
        lines.append(f"| no cold split ({ref['variant']}), warm test rows | - | - | "
                     f"{f4(ref['test_warm_rows']['recall@20'])} | {f4(ref['test_warm_rows']['ndcg@20'])} | - | - | - | - | "
                     f"{ref['best_epoch']}/{ref['epochs_run']} | {ref['wall_seconds']:.0f} |")
    if rnd:
        lines += ["", f"Random: exact expectation; the mean of {rnd['draws']} seeded random scorings gives cold R@20 "
                      f"{f4(rnd['drawn_all']['recall@20'])}, N@20 {f4(rnd['drawn_all']['ndcg@20'])}."]
    if e["variants"]:
        lines += ["", "Cold and warm items ranked together (every non-history item a candidate): the cold index vectors "
                      "as `fit` ships them (content path blended with neighbours where cold_neighbours > 0, times the "
                      "score-matched factor), the same path times 1/(L+1) or unscaled, and the plain content-only path "
                      "times the least-squares, score-matched and norm-matched (median |trained warm vector| / median "
                      "|content-only warm vector|) factors (ranking among cold items alone is the same for any factor: "
                      "checked per variant). Truth here is the warm test rows plus "
                      "every cold-item row, hence the large cold share of truth:", "",
                  "| model | scale | mixed R@20 | cold-in-mixed R@20 | cold share of top-20 | cold share of truth |",
                  "|---|---|---:|---:|---:|---:|"]
        for v, r in e["variants"].items():
            scales = dict(r["mixed"])
            if "mixed_norm_matched" in r:
                scales[f"content path alone, norm-matched ({r['norm_matched_scale']:.4f})"] = r["mixed_norm_matched"]
            for scale, m in scales.items():
                lines.append(f"| {v} | {scale} | {f4(m['mixed']['recall@20'])} | {f4(m['cold_in_mixed']['recall@20'])} | "
                             f"{f4(m['cold_share_top20'])} | {f4(m['cold_share_truth'])} |")
    if e.get("selection"):
        lines += ["", f"Selection ({e['selection']['rule']}): {chosen}."]
    lines.append("")
    for key, c in e.get("checks", {}).items():
        detail = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items() if k != "met")
        lines.append(f"- {key}: **{'met' if c['met'] else 'NOT met'}** ({detail})")
    return lines


def finetune_markdown(e: dict[str, Any]) -> list[str]:
    d, s = e.get("data", {}), e["settings"]
    lines = ["## Fine-tuning: ml100k-plus, movies before 1995 -> movies from 1995"
             + ("" if e.get("complete") else " (INTERRUPTED: partial)"), ""]
    if d:
        lines += [f"Source: {d['items']['source']} movies released before {d['cutoff_year']} ({d['source_rows']} "
                  f"interactions, given split). Target: {d['items']['target']} movies; its valid/test rows "
                  f"{d['target_rows_by_split']['valid']}/{d['target_rows_by_split']['test']} all kept, "
                  f"{d['target_train_rows_kept']} of its {d['target_rows_by_split']['train']} training rows kept "
                  f"(seeded {d['train_fraction']:.0%}). Undated items dropped: {d['undated_items_dropped']}. "
                  f"Same configuration for every arm: lr chosen per arm (below), <= {s['epochs']} epochs, patience "
                  f"{s['patience']}, dropouts {s['dropouts']}, mask=\"{s['mask']}\"; the source is trained with lr "
                  f"{s['lr']}.", ""]
    if "source" in e:
        src = e["source"]
        lines += [f"Source model (seed {src['seed']}): test R@20 {f4(src['test']['recall@20'])} on the old movies, "
                  f"best epoch {src['best_epoch']}/{src['epochs_run']}, {src['wall_seconds']:.0f}s.", ""]
    if e.get("grid"):
        lines += ["Learning rate chosen per arm on validation Recall@20 (first seed): " + "; ".join(
            f"{kind}: " + ", ".join(f"lr {g['lr']} -> valid {g['valid']['recall@20']:.4f}" for g in grid)
            for kind, grid in e["grid"].items()) + f" (chosen {e.get('selected_lr', {})}).", ""]
    lines += ["| arm | seed | lr | test R@20 | test N@20 | valid R@20 | valid R@20 before training | best epoch | "
              "seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    arms = list(e.get("summary", {})) or ["scratch", "finetune"]
    for kind in arms:
        for r in e["runs"]:
            x = r[kind]
            start = x["start_valid"]["recall@20"] if x.get("start_valid") else None
            lines.append(f"| {kind} | {r['seed']} | {x['lr']} | {f4(x['test']['recall@20'])} | "
                         f"{f4(x['test']['ndcg@20'])} | {f4(x['valid']['recall@20'])} | {f4(start)} | "
                         f"{x['best_epoch']}/{x['epochs_run']} | {x['wall_seconds']:.0f} |")
        if kind in e.get("summary", {}):
            sm = e["summary"][kind]
            lines.append(f"| **{kind}** | mean ± std | | **{sm['recall@20']['mean']:.4f} ± {sm['recall@20']['std']:.4f}** | "
                         f"{sm['ndcg@20']['mean']:.4f} ± {sm['ndcg@20']['std']:.4f} | | | | |")
    if e.get("rescaled_start"):
        seen = sorted({(r["mean_item_norm_before"], r["factor"]) for r in e["rescaled_start"]})
        lines += ["", "finetune-rescaled (a monkeypatch in this script, not library code): the transferred ID and user "
                      "embeddings are multiplied by one factor so that the items' mean norm is a fresh N(0, 0.1^2) "
                      "start's (0.1 x sqrt(D)); mean item norm before -> factor: "
                      + ", ".join(f"{n} -> {f}" for n, f in seen) + ". keep-users: `finetune(keep_users=True)` (the "
                      "same MovieLens users start from their source embeddings)."]
    lines.append("")
    for key, c in e.get("checks", {}).items():
        detail = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items() if k != "met")
        lines.append(f"- {key}: **{'met' if c['met'] else 'NOT met'}** ({detail})")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Cold-start and fine-tuning quality", "",
             "Test metrics; hyper-parameters and the variant chosen on validation data only (see "
             "scripts/quality_cold.py for the protocol; every number is in quality_cold.json).", ""]
    for part, e in results["parts"].items():
        lines += cold_markdown(part, e) if part.startswith("cold:") else finetune_markdown(e)
        m = e["machine_at_start"]
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start, "
                      f"{e.get('machine_at_end', m)['load_average']} at end), torch {m['torch']} with "
                      f"{m['torch_threads']} thread(s). Total {e.get('total_seconds', 0):.0f}s.", "",
                  f"Command: `{e['command']}`" + (f"; reference: `{e['reference_command']}`"
                                                    if e.get("reference_command") else ""), ""]
    return "\n".join(lines)


def merge_and_write(out_dir: Path, part: str, entry: dict[str, Any]) -> None:
    """Merge one part's entry into quality_cold.json and rewrite quality_cold.md."""
    def update(results: dict[str, Any] | None) -> dict[str, Any]:
        parts = (results or {"parts": {}})["parts"] | {part: entry}
        return {"parts": {k: parts[k] for k in PARTS if k in parts}}

    update_results(out_dir, "quality_cold", update, markdown)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--variants", nargs="+", default=list(VARIANT_KEYS), choices=list(VARIANT_KEYS),
                   help="cold-start variants: a (no dropout), b (dropouts), c0.1 / c1.0 (dropouts + align)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="cold-start seed (the first one is used)")
    p.add_argument("--cold-fraction", type=float, default=0.2)
    p.add_argument("--random-draws", type=int, default=5, help="seeded random scorings checking the exact value")
    p.add_argument("--skip-reference", action="store_true", help="no model without a cold split")
    p.add_argument("--reference-only", action="store_true",
                   help="only (re)train the no-cold-split reference into the part's entry already in --out")
    p.add_argument("--ft-seeds", nargs="+", type=int, default=[0, 1, 2], help="target subsample + training seeds")
    p.add_argument("--ft-source-seed", type=int, default=0)
    p.add_argument("--ft-fraction", type=float, default=0.2, help="share of the target's training rows kept")
    p.add_argument("--ft-cutoff", type=int, default=1995, help="source = movies released before this year")
    p.add_argument("--ft-variant", default="b", choices=list(VARIANT_KEYS), help="dropout/align knobs of both arms")
    p.add_argument("--ft-arms", nargs="+", default=["scratch", "finetune"],
                   choices=["scratch", "finetune", "finetune-rescaled", "finetune-keep-users",
                            "finetune-rescaled-keep-users"],
                   help="finetune-rescaled: transferred ID/user embeddings rescaled to a fresh start's norm; "
                        "keep-users: finetune(keep_users=True), users start from their source embedding")
    p.add_argument("--ft-lrs", nargs="+", type=float, default=[0.01, 0.001],
                   help="learning rates each fine-tuning arm chooses from on validation")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2048)
    add_run_options(p)
    args = p.parse_args(argv)
    args.command = command_line("quality_cold.py", argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    with feature_cache(args.cache_dir) as cache:
        for part in args.parts:
            save = lambda e, n=part: merge_and_write(Path(args.out), n, e)  # noqa: E731
            if part.startswith("cold:"):
                entry = run_cold(part.split(":")[1], args, cache, save)
            else:
                entry = run_finetune(args, cache, save)
            print(f"[{part}] done in {entry['total_seconds']:.0f}s: {json.dumps(entry['checks'])}", flush=True)


if __name__ == "__main__":
    main()
