"""Recommendation quality on the real benchmark sets: fused model vs ID-only LightGCN vs content index.

For each dataset under ``--data`` (default ``../shared/data``, see its README) this trains, on the
dataset's GIVEN train/valid/test split and with the same budget (grid, epochs, patience, batch):

* ``fused``      -- the full model: content modalities + ID token, attention fusion, LightGCN
  propagation (``TrainConfig()``);
* ``id-only``    -- plain LightGCN by the same code (``TrainConfig(use_content=False)``);
* ``content-index`` -- no training: the fixed modality combination of the item's features
  (``fusion.fixed.combine_modalities``, each modality measured from its catalog mean, as
  ``mmrec index build`` does); a user is the mean of its training items' vectors,
  every item is ranked by inner product, training items masked.

Every model is scored by ``mmrec.metrics.evaluate`` (full ranking). The headline numbers use
``mask="train"`` (MMRec's convention, that of the published numbers); ``mask="all"`` numbers
(train + valid masked when testing) are reported beside them, and so are each model's test hits
in the top 20 by the item's number of training interactions (:data:`DEGREE_EDGES`).
Hyper-parameters are chosen on VALIDATION Recall@20 with seed 0 only (every grid point is
recorded in the JSON); the chosen
configuration is then trained with every ``--seeds`` seed (seed 0 reuses the grid run, which is
the same deterministic run) and test metrics are reported as mean and std over seeds.

Datasets: ``ml100k-plus`` (text: title, genres, summary, cast, director, encoded by the packaged
MiniLM through the feature cache), ``tiktok`` (image + audio ``.npy`` features), ``amazon-baby``
(no features: the ID-only model is checked against the published LightGCN numbers).

Results are merged into ``--out``/quality.json (one entry per dataset, each with the command that
produced it) and quality.md is rewritten from the merged JSON, so datasets can run as separate
processes. The exact command behind every stored entry is written beside its table in
quality.md (and listed in README.md); from the project root, for example::

    # the main tiktok entry
    .venv/bin/python scripts/quality.py --datasets tiktok --grid-lr 0.01 0.005 --grid-reg 1e-4 \
        --grid-item-graph-k 10 --grid-edge-dropout 0 0.3 0.5 --patience 10 --epochs 60 --seeds 0 1 2
    # a quick look: one seed, TrainConfig's defaults, every dataset
    .venv/bin/python scripts/quality.py --seeds 0 --verbose

On a shared CPU, ``--threads 1`` (the default) is faster than oversubscribing cores; ``--jobs N`` trains
N runs at once in forked processes (the numbers are those of one process, only timings differ).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusion.fixed import combine_modalities, modality_centers  # noqa: E402
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.errors import ConfigError  # noqa: E402
from mmrec.interactions import Interactions  # noqa: E402
from mmrec.item_index import check_device  # noqa: E402
from mmrec.metrics import evaluate, evaluate_ranking, rank_split  # noqa: E402
from mmrec.pipeline import Content, interactions_for, load_content  # noqa: E402
from mmrec.train import Trainer, TrainData, build_model, seed_everything  # noqa: E402
from machine import METRICS, add_run_options, command_line, describe_machine, feature_cache, mean_std, pick_metrics, update_results  # noqa: E402  (scripts/machine.py)

MODELS = ("fused", "id-only", "content-index")

DATASETS: dict[str, dict[str, Any]] = {
    "ml100k-plus": {
        "interactions": "ml100k-plus/interactions.tsv",
        "catalog": "ml100k-plus/items.csv",
        "text_fields": ["title", "genres", "summary", "cast", "director"],
        "published": {
            "source": "data README (MMRec toolbox logs; posters + plots, so not identical inputs)",
            "FREEDOM": {"recall@10": 0.1291, "recall@20": 0.2263, "ndcg@20": 0.3151},
            "MGCN": {"recall@20": 0.2248},
            "LATTICE": {"recall@20": 0.2150},
            "BM3": {"recall@20": 0.1863},
        },
    },
    "tiktok": {
        "interactions": "tiktok/interactions.tsv",
        "features": {"image": "tiktok/image_feat.npy", "audio": "tiktok/audio_feat.npy"},
        "published": {
            "source": "data README (DiffMM paper, their protocol)",
            "MF-BPR": {"recall@20": 0.0346, "ndcg@20": 0.0130},
            "LightGCN": {"recall@20": 0.0653, "ndcg@20": 0.0282},
            "LATTICE": {"recall@20": 0.0843, "ndcg@20": 0.0367},
            "BM3": {"recall@20": 0.0957, "ndcg@20": 0.0404},
            "DiffMM": {"recall@20": 0.1129, "ndcg@20": 0.0456},
        },
    },
    "amazon-baby": {
        "interactions": "amazon-baby/interactions.tsv",
        "published": {
            "source": "data README (MMRec protocol: full ranking, train items masked)",
            "MF-BPR": {"recall@20": 0.0575, "ndcg@20": 0.0249},
            "LightGCN": {"recall@10": 0.0479, "recall@20": 0.0754, "ndcg@10": 0.0257, "ndcg@20": 0.0328},
            "FREEDOM (image+text)": {"recall@20": 0.0992},
        },
        # The id-only model must land within this relative distance of published LightGCN.
        "lightgcn_tolerance": 0.03,
    },
}


# ----------------------------------------------------------------------------------- helpers
def load_dataset(root: Path, name: str, cache_dir: Path) -> tuple[Content, Interactions]:
    spec = DATASETS[name]
    catalog = root / spec["catalog"] if "catalog" in spec else None
    features = {m: root / p for m, p in spec.get("features", {}).items()}
    options: dict[str, Any] = {}
    if catalog is not None:
        options = {"text_fields": spec["text_fields"], "image_encoder": None, "cache_dir": cache_dir}
    content = load_content(catalog, features or None, show_progress=False, **options)
    inter = interactions_for(content, root / spec["interactions"], split="given", seed=0)
    return content, inter


# Fused-model settings with a --grid-<field> option, expanded in this order (outermost last).
FUSED_GRIDS: dict[str, tuple[type, str]] = {
    "content_gain": (float, "initial scales of the content projections"),
    "item_graph_k": (int, "content kNN item-item graph sizes (0 = off)"),
    "align_weight": (float, "weights of the content-to-graph alignment loss"),
    "finetune": (str, "encoder modes (frozen, top:N, full; mmrec.encoder_tuning)"),
    "encoder_lr_scale": (float, "encoder learning rates, as fractions of lr, when fine-tuning"),
    "content_lr_scale": (float, "learning rates of the content projections and attention, as fractions of lr"),
}


# ------------------------------------------------------------------------------ the models
def fit_trainer(content: Content, inter: Interactions, cfg: TrainConfig) -> tuple[Trainer, Any]:
    """Train by the pipeline's own model/trainer; returns the trainer (at its best epoch) and its result."""
    seed_everything(cfg.seed)
    n = inter.num_items
    dims = {m: int(x.shape[1]) for m, x in content.features.items()} if cfg.use_content else {}
    model = build_model(cfg, inter.num_users, n, dims)
    # As mmrec.pipeline.fit: items without a training interaction are fused from content alone.
    train_degree = np.bincount(inter.items[inter.split_mask("train")], minlength=n)
    has_id = torch.from_numpy(train_degree > 0) if dims else None
    data = TrainData(
        inter,
        {m: torch.from_numpy(content.features[m]) for m in dims},
        {m: torch.from_numpy(content.present[m]) for m in dims},
        has_id,
    )
    tuner = None
    if dims and cfg.finetune != "frozen":  # as mmrec.pipeline.fit: the catalog's encoders train with the model
        from mmrec.encoder_tuning import EncoderTuner

        # The tuner trains its encoders in place: each run starts from a fresh copy of the
        # loaded ones, so no grid point or seed inherits another's tuned weights.
        fresh = dataclasses.replace(content, encoder_objects=copy.deepcopy(content.encoder_objects))
        tuner = EncoderTuner(fresh, cfg, show_progress=False)
    trainer = Trainer(model, data, cfg, tuner=tuner, show_progress=False)
    return trainer, trainer.fit()


# Item bands by training interactions, [0, 20), [20, 80), [80, inf): where in the catalog a
# model's test hits are (content can only matter where the ID embedding knows the item little).
DEGREE_EDGES = (20, 80)


def hits_by_degree(topk: np.ndarray, truth: sp.csr_matrix, degree: np.ndarray,
                   edges: tuple[int, ...] = DEGREE_EDGES) -> dict[str, dict[str, int]]:
    """Held-out rows and those found in the lists, per band of the row's item's training degree.

    Args:
        topk: ranked item indices per user (``-1`` for empty slots), as from ``rank_topk``.
        truth: the same users' held-out items, row-aligned with ``topk``.
        degree: training interactions of each item.
        edges: the band boundaries, increasing: bands ``[0, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``.

    Returns:
        ``{"[0,20)": {"rows": R, "hits": H}, ...}``, one key a band, in order.

    Shapes:
        topk (R, K), truth (R, N), degree (N,)
    """
    truth = sp.csr_matrix(truth, copy=True)
    truth.sum_duplicates()
    truth.eliminate_zeros()  # as evaluate_ranking: a stored zero is no held-out item
    if topk.shape[0] != truth.shape[0]:
        raise ValueError(f"topk has {topk.shape[0]} rows, truth {truth.shape[0]}")
    rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))  # [P] one per held-out pair
    items = truth.indices
    hit = (topk[rows] == items[:, None]).any(axis=1)  # [P]
    band = np.searchsorted(np.asarray(edges), degree[items], side="right")  # [P] 0..len(edges)
    bounds = (0, *edges, None)
    return {f"[{lo},{'inf' if hi is None else hi})": {"rows": int((band == b).sum()), "hits": int(hit[band == b].sum())}
            for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))}


def report_test_split(score: Callable[[np.ndarray], torch.Tensor], inter: Interactions) -> dict[str, Any]:
    """A scorer's test metrics with either mask, and (mask="train") its top-20 hits by item degree,
    counted on the very lists the headline metrics score (one ranking, :func:`mmrec.metrics.rank_split`)."""
    top20, truth = rank_split(score, inter, "test", "train", 20)
    degree = inter.item_popularity("train")
    test = evaluate_ranking(top20, truth, (10, 20), num_items=inter.num_items, item_popularity=degree)
    return {
        "test": pick_metrics(test),
        "test_mask_all": pick_metrics(evaluate(score, inter, split="test", mask="all")),
        "test_hits_by_degree": hits_by_degree(top20, truth, degree),
    }


def train_one(content: Content, inter: Interactions, cfg: TrainConfig) -> dict[str, Any]:
    """One training run (:func:`fit_trainer`); valid and test metrics, both masks."""
    start = time.perf_counter()
    trainer, result = fit_trainer(content, inter, cfg)
    users, items, _ = trainer.vectors()

    def score(u: np.ndarray) -> torch.Tensor:
        return users[torch.as_tensor(u, device=users.device)] @ items.T  # [B, N]

    return {
        "seed": cfg.seed,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "valid": pick_metrics(result.best_valid),
        **report_test_split(score, inter),
        "valid_curve": [round(h["valid_recall@20"], 5) for h in result.history if "valid_recall@20" in h],
    }


# The data the worker processes of run_all train on: set before the pool forks, so it is shared
# copy-on-write instead of pickled into every task.
_WORKER_DATA: dict[str, Any] = {}


def _train_in_worker(cfg: TrainConfig) -> dict[str, Any]:
    return train_one(_WORKER_DATA["content"], _WORKER_DATA["inter"], cfg)


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_all(content: Content, inter: Interactions, cfgs: list[TrainConfig], jobs: int = 1) -> Iterator[dict[str, Any]]:
    """:func:`train_one` for each config, yielded in the order given.

    With ``jobs > 1`` the runs go to that many forked worker processes (CPU only), one torch
    thread each: a forked child that starts OpenMP threads after its parent used several hangs
    (GNU OpenMP), so the caller keeps its own torch to one thread too. A run is seeded from its
    config alone, so its numbers are those of the same run in one process; only the timings
    differ.
    """
    if jobs <= 1 or len(cfgs) <= 1:
        for cfg in cfgs:
            yield train_one(content, inter, cfg)
        return
    if any(cfg.device != "cpu" for cfg in cfgs):
        raise ConfigError("--jobs above 1 runs on the CPU only: one process per device is the way on a GPU")
    _WORKER_DATA.update(content=content, inter=inter)
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(cfgs)), mp_context=multiprocessing.get_context("fork"),
                               initializer=_one_thread)
    try:
        futures = [pool.submit(_train_in_worker, cfg) for cfg in cfgs]
        for future in futures:
            yield future.result()
    finally:
        # A run that failed, or a caller that stopped reading, leaves the queued runs unstarted.
        pool.shutdown(wait=True, cancel_futures=True)
        _WORKER_DATA.clear()


def content_index(content: Content, inter: Interactions) -> dict[str, Any]:
    """The untrained content index as a recommender: user = mean of its training items' vectors.

    Item vectors are those of ``mmrec index build``: each modality measured from its catalog mean.
    """
    start = time.perf_counter()
    names = sorted(content.features)
    vecs = combine_modalities(content.features, content.present, order=names,
                              centers=modality_centers(content.features, content.present))  # [N, sum D_m]
    train = inter.user_items("train").astype(np.float32)  # [U, N]
    counts = np.maximum(np.asarray(train.sum(axis=1)).ravel(), 1.0)
    users = torch.from_numpy(np.asarray(sp.diags(1.0 / counts) @ train @ vecs, dtype=np.float32))  # [U, sum D_m]
    items = torch.from_numpy(vecs)

    def score(u: np.ndarray) -> torch.Tensor:
        return users[torch.as_tensor(u)] @ items.T  # [B, N]

    out = {
        "modalities": names,
        "valid": pick_metrics(evaluate(score, inter, split="valid", mask="train")),
        **report_test_split(score, inter),
    }
    out["wall_seconds"] = round(time.perf_counter() - start, 1)
    return out


# The two models: the same code, with and without the content tokens.
KINDS: dict[str, dict[str, Any]] = {"id-only": {"use_content": False}, "fused": {"use_content": True}}


def base_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig options every run of both models shares (MMRec's train-only mask)."""
    return {"mask": "train", "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
            "eval_every": 1, "id_init": args.id_init, "reg_form": args.reg_form, "device": args.device}


def shared_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points both models are tried at: learning rate x L2, then edge pruning, then weight
    averaging (each given option multiplies, the later ones outermost)."""
    grid = [{"lr": lr, "reg": reg} for lr in args.grid_lr for reg in args.grid_reg]
    if args.grid_edge_dropout:  # a graph regulariser
        grid = [{**g, "edge_dropout": d} for d in args.grid_edge_dropout for g in grid]
    if args.grid_ema:  # weight averaging
        grid = [{**g, "ema": d} for d in args.grid_ema for g in grid]
    return grid


def grid_points(kind: str, grid: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One model's grid: the shared ``grid`` points, times the fused-only options for ``fused``.

    A frozen encoder has no learning rate, so fused points that differ only in
    ``encoder_lr_scale`` while ``finetune`` is frozen run once, without it.
    """
    if kind != "fused":
        return list(grid)
    # TrainConfig's ID dropout is 0 (it was 0.3 when the stored '(id_dropout grid)' entry ran 0.3 against 0):
    # the grid adds the other value.
    points = grid + ([{**g, "id_dropout": ID_DROPOUT_TRIED} for g in grid] if args.grid_id_dropout else [])
    if args.fused_id_mode:
        points = [{**p, "id_mode": mode} for mode in args.fused_id_mode for p in points]
    for field in FUSED_GRIDS:
        values = getattr(args, f"grid_{field}")
        if values:
            points = [{**p, field: v} for v in values for p in points]
    unique: dict[str, dict[str, Any]] = {}
    for point in points:
        if point.get("finetune", "frozen") == "frozen":
            point = {k: v for k, v in point.items() if k != "encoder_lr_scale"}
        unique.setdefault(json.dumps(point, sort_keys=True), point)
    return list(unique.values())


# ------------------------------------------------------------------------------- one dataset
def run_dataset(name: str, args: argparse.Namespace, cache_dir: Path, save: Callable[[dict], None]) -> dict:
    """Content index, then each model's grid (first seed), then the other seeds, model by model.

    ``save`` receives the entry after every run, so an interrupted run still leaves every
    measured number on disk (``"complete": false`` until the end).
    """
    spec = DATASETS[name]
    t0 = time.perf_counter()
    if "catalog" not in spec and any(m != "frozen" for m in args.grid_finetune or ()):
        raise SystemExit(f"{name}: --grid-finetune {' '.join(args.grid_finetune)} needs a dataset encoded from a "
                         f"catalog; {name} has only precomputed features (leave it out of --datasets)")
    content, inter = load_dataset(Path(args.data), name, cache_dir)
    entry: dict[str, Any] = {
        "command": args.command,
        "note": args.note,
        "device": args.device,
        "complete": False,
        "machine_at_start": describe_machine(),
        "data": {"users": inter.num_users, "items": inter.num_items, "split": inter.split_counts(),
                 "modalities": {m: int(x.shape[1]) for m, x in content.features.items()}},
        "load_seconds": round(time.perf_counter() - t0, 1),
        "published": spec["published"],
        "grid": {},
        "selected": {},
        "runs": {},
        "summary": {},
    }
    print(f"[{name}] {inter} modalities {entry['data']['modalities']} (loaded in {entry['load_seconds']}s)",
          flush=True)

    def checkpoint() -> None:
        for kind, runs in entry["runs"].items():
            parts = {part: {m: mean_std([r[part][m] for r in runs]) for m in METRICS}
                     for part in ("test", "test_mask_all", "valid")}
            if kind != "content-index":
                parts |= {"seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in runs]),
                          "best_epoch": [r["best_epoch"] for r in runs], "seeds": [r["seed"] for r in runs]}
            if all("test_hits_by_degree" in r for r in runs):  # entries stored before it have none
                parts["test_hits_by_degree"] = {
                    band: {"rows": cell["rows"], "hits": mean_std([r["test_hits_by_degree"][band]["hits"] for r in runs])}
                    for band, cell in runs[0]["test_hits_by_degree"].items()}
            entry["summary"][kind] = parts
        entry["checks"] = checks(name, entry)
        entry["machine_at_end"] = describe_machine()
        entry["total_seconds"] = round(time.perf_counter() - t0, 1)
        save(entry)

    if content.features:
        entry["runs"]["content-index"] = [content_index(content, inter)]
        checkpoint()

    base = base_options(args)
    kinds = dict(KINDS)
    if not content.features:
        kinds.pop("fused")  # nothing to fuse: only the backbone check
    grid = shared_grid(args)
    chosen = {}
    todo = [(kind, point) for kind in kinds for point in grid_points(kind, grid, args)]
    # closing(): the worker pool shuts down when a loop ends or raises, not when the generator is collected.
    with contextlib.closing(run_all(content, inter, [TrainConfig(**base, **kinds[kind], **point, seed=args.seeds[0])
                                                     for kind, point in todo], args.jobs)) as runs:
        for (kind, point), run in zip(todo, runs):
            tried = entry["grid"].setdefault(kind, [])
            tried.append({"config": point, **{k: run[k] for k in ("valid", "best_epoch", "epochs_run",
                                                                  "seconds_per_epoch", "valid_curve")}})
            print(f"[{name}] {kind} grid {point}: valid R@20 {run['valid']['recall@20']:.4f} "
                  f"best epoch {run['best_epoch']}/{run['epochs_run']} {run['seconds_per_epoch']}s/epoch", flush=True)
            if run["valid"]["recall@20"] > max((t["valid"]["recall@20"] for t in tried[:-1]), default=-1.0):
                chosen[kind] = point
                entry["selected"][kind] = dataclasses.asdict(TrainConfig(**base, **kinds[kind], **point))
                entry["runs"][kind] = [run]  # the chosen point's seed-0 run is its first seed
            checkpoint()
    todo = [(seed, kind) for seed in args.seeds[1:] for kind in kinds]
    with contextlib.closing(run_all(content, inter, [TrainConfig(**base, **kinds[kind], **chosen[kind], seed=seed)
                                                     for seed, kind in todo], args.jobs)) as runs:
        for (seed, kind), run in zip(todo, runs):
            entry["runs"][kind].append(run)
            print(f"[{name}] {kind} seed {seed}: test R@20 {run['test']['recall@20']:.4f} "
                  f"N@20 {run['test']['ndcg@20']:.4f}", flush=True)
            checkpoint()
    entry["complete"] = True
    checkpoint()
    return entry


ID_DROPOUT_TRIED = 0.3  # --grid-id-dropout's second value, beside TrainConfig's default 0
SIGNIFICANCE = 0.05  # a fused-vs-ID-only gap counts when Welch's p is below this


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that two sets of seed runs share a mean (None below 2 each)."""
    if min(len(a), len(b)) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def checks(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    s = entry["summary"]
    out: dict[str, Any] = {}
    if "fused" in s and "id-only" in s:
        for m in ("recall@20", "ndcg@20"):
            fc, ic = s["fused"]["test"][m], s["id-only"]["test"][m]
            f, i = fc["mean"], ic["mean"]
            # A gap below the larger seed std (measured only with >= 2 seeds each) is not a result.
            noise = max(fc["std"], ic["std"]) if min(fc["n"], ic["n"]) > 1 else None
            p = welch_p([r["test"][m] for r in entry["runs"]["fused"]], [r["test"][m] for r in entry["runs"]["id-only"]])
            # "beats" = ahead on the mean and significantly so (Welch p < 0.05): a mean ahead by noise
            # is not counted, nor one the seeds cannot test (fewer than 2 a model: not met).
            out[f"fused_beats_id_only_{m}"] = {
                "fused": f, "id_only": i, "relative_gain": (f - i) / i, "ahead": f > i,
                "met": f > i and p is not None and p < SIGNIFICANCE,
                "seeds": [fc["n"], ic["n"]], "gap_within_seed_std": None if noise is None else abs(f - i) <= noise,
                "welch_p": None if p is None else float(f"{p:.3g}")}  # stored to 3 digits, judged unrounded
    tol = DATASETS[name].get("lightgcn_tolerance")
    if tol is not None:
        ref = DATASETS[name]["published"]["LightGCN"]
        for m, r in ref.items():
            got = s["id-only"]["test"][m]["mean"]
            out[f"id_only_vs_published_lightgcn_{m}"] = {
                "ours": got, "published": r, "relative_diff": (got - r) / r, "met": abs(got - r) / r <= tol}
    return out


# ----------------------------------------------------------------------------------- output
def fmt(cell: dict[str, float] | None, digits: int = 4) -> str:
    if cell is None:
        return "-"
    if cell["n"] > 1:
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def model_label(kind: str, sel: dict[str, Any] | None) -> str:
    """``fused (lr 0.01, reg 0.0001, ...)``: the selected settings, non-default extras included."""
    if sel is None:
        return kind
    parts = [f"lr {sel['lr']}", f"reg {sel['reg']}"]
    if kind == "fused":
        parts += [f"id_dropout {sel['id_dropout']}", f"id_mode {sel.get('id_mode', 'token')}",
                  f"content_gain {sel.get('content_gain', 1.0)}"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    fused_only = ("item_graph_k", "align_weight", "finetune", "encoder_lr_scale", "content_lr_scale") \
        if kind == "fused" else ()
    for field in fused_only + ("edge_dropout", "ema", "id_init", "reg_form"):
        if sel.get(field, defaults[field]) != defaults[field]:
            parts.append(f"{field} {sel[field]}")
    return f"{kind} ({', '.join(parts)})"


def hits_table(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: each model's test hits by item degree band (none for entries without them)."""
    kinds = [k for k in MODELS if "test_hits_by_degree" in summary.get(k, {})]
    if not kinds:
        return []
    bands = summary[kinds[0]]["test_hits_by_degree"]
    lines = ["", "Test rows found in the top 20 (training items masked), by their item's training interactions:", "",
             "| model | " + " | ".join(f"{band} ({cell['rows']} rows)" for band, cell in bands.items()) + " |",
             "|---|" + "---:|" * len(bands)]
    for kind in kinds:
        cells = summary[kind]["test_hits_by_degree"]
        lines.append(f"| {kind} | " + " | ".join(fmt(cells[band]["hits"], digits=1) for band in bands) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Recommendation quality on the given splits", ""]
    lines += ["Test metrics, full ranking over all items, training items masked (`mask=\"train\"`, the MMRec",
              "convention of the published numbers); mean ± sample std (n - 1) over seeds (n = number of seeds).",
              "Hyper-parameters selected on validation Recall@20 only (grid and every point in quality.json).",
              "Each dataset's command is given below it (less --out, --cache-dir and --note, which change no number).", ""]
    for name, e in results["datasets"].items():
        m = e["machine_at_start"]
        status = "" if e.get("complete", True) else " (INTERRUPTED: partial, only the runs listed)"
        lines += [f"## {name}{status}", "",
                  f"{e['data']['users']} users, {e['data']['items']} items, split {e['data']['split']}, "
                  f"modalities {e['data']['modalities'] or 'none'}.", "",
                  "| model | R@10 | R@20 | N@10 | N@20 | R@20 (mask all) | N@20 (mask all) | seeds | best epoch | s/epoch |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for kind in MODELS:
            s = e["summary"].get(kind)
            if s is None:
                continue
            t, a = s["test"], s["test_mask_all"]
            sel = e["selected"].get(kind)
            label = model_label(kind, sel)
            spe = f"{s['seconds_per_epoch']['mean']:.1f}" if "seconds_per_epoch" in s else "-"
            epochs = ", ".join(str(x) for x in s.get("best_epoch", [])) or "-"
            lines.append(f"| {label} | {fmt(t['recall@10'])} | {fmt(t['recall@20'])} | {fmt(t['ndcg@10'])} | "
                         f"{fmt(t['ndcg@20'])} | {fmt(a['recall@20'])} | {fmt(a['ndcg@20'])} | "
                         f"{t['recall@20']['n']} | {epochs} | {spe} |")
        lines += hits_table(e["summary"])
        pub = {k: v for k, v in e["published"].items() if k != "source"}
        lines += ["", "Published (" + e["published"]["source"] + "): " + "; ".join(
            f"{k} " + ", ".join(f"{mm} {vv}" for mm, vv in v.items()) for k, v in pub.items()) + ".", ""]
        for key, c in e["checks"].items():
            if c["met"]:
                verdict = "met"
            elif c.get("ahead") and "welch_p" in c and c["welch_p"] is None:
                verdict = "NOT met: ahead, untested (fewer than 2 seeds a model, or no spread)"
            elif c.get("ahead"):
                verdict = f"NOT met: ahead by noise (p >= {SIGNIFICANCE})"
            else:
                verdict = "NOT met"
            detail = ", ".join(f"{k} {v:.3g}" if k == "welch_p" and v is not None else f"{k} {v:.4f}"
                               if isinstance(v, float) else f"{k} {v}" for k, v in c.items() if k not in ("met", "ahead"))
            lines.append(f"- {key}: **{verdict}** ({detail})")
        gpu = f", GPU {m['gpu']} (training on {e['device']})" if m.get("gpu") else ""
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start){gpu}, "
                  f"torch {m['torch']} with {m['torch_threads']} thread(s). Total {e['total_seconds']:.0f}s.", "",
                  f"Command: `{e['command']}`", ""] + ([f"Note: {e['note']}", ""] if e.get("note") else [])
    return "\n".join(lines)


def merge_and_write(out_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """Merge one dataset's entry into quality.json and rewrite quality.md (datasets may run in parallel)."""
    order = {d: i for i, d in enumerate(DATASETS)}  # datasets in README order, tagged variants after theirs

    def update(results: dict[str, Any] | None) -> dict[str, Any]:
        datasets = (results or {"datasets": {}})["datasets"] | {name: entry}
        return {"datasets": dict(sorted(datasets.items(), key=lambda kv: (order[kv[0].split(" ")[0]], kv[0])))}

    update_results(out_dir, "quality", update, markdown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``sys.argv[1:]`` when ``argv`` is None)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds; the first one selects the grid point")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs per run")
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience (evaluations; default 20, TrainConfig's)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--id-init", choices=["normal", "xavier"], default="normal",
                   help="ID embedding initialisation of both models (TrainConfig.id_init; xavier with --reg-form norm "
                        "is MMRec's LightGCN recipe)")
    p.add_argument("--reg-form", choices=["squared", "norm"], default="squared",
                   help="regulariser of both models (TrainConfig.reg_form)")
    p.add_argument("--grid-lr", nargs="+", type=float, default=[0.01], help="learning rates tried")
    p.add_argument("--grid-reg", nargs="+", type=float, default=[1e-4], help="L2 weights tried")
    p.add_argument("--grid-id-dropout", action="store_true",
                   help=f"also try the fused model with id_dropout {ID_DROPOUT_TRIED} (besides TrainConfig's 0)")
    p.add_argument("--fused-id-mode", nargs="+", choices=["token", "residual"], default=None,
                   help="how the fused model's ID joins the content (TrainConfig.id_mode), each tried in the grid "
                        "(default: TrainConfig's)")
    for field, (kind, what) in FUSED_GRIDS.items():
        p.add_argument(f"--grid-{field.replace('_', '-')}", nargs="+", type=kind, default=None,
                       help=f"{what} tried for the fused model (TrainConfig.{field}; default: TrainConfig's)")
    p.add_argument("--grid-ema", nargs="+", type=float, default=None,
                   help="decays per step of the weights' moving average tried for BOTH models (TrainConfig.ema; "
                        "0: off; default: TrainConfig's)")
    p.add_argument("--grid-edge-dropout", nargs="+", type=float, default=None,
                   help="fractions of training edges pruned per epoch tried for BOTH models (TrainConfig.edge_dropout; "
                        "default: TrainConfig's)")
    p.add_argument("--device", default="cpu", help="torch device of both models' training (TrainConfig.device)")
    p.add_argument("--jobs", type=int, default=1,
                   help="training runs at once, each in its own process with one thread (CPU, --threads 1 only; "
                        "default 1); every number but the timings is the same as with 1")
    add_run_options(p)
    p.add_argument("--tag", default="", help="store the results as '<dataset> <tag>' (a variant beside the main entry)")
    p.add_argument("--verbose", action="store_true", help="log every epoch")
    p.add_argument("--note", default=None, help="free text stored with each dataset's entry (e.g. runs made outside it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and (args.device != "cpu" or args.threads != 1)):
        # Forked workers that start OpenMP threads after the parent used its own pool hang (GNU OpenMP).
        raise SystemExit(f"--jobs {args.jobs}: give 1 or more, and more than 1 only on the CPU with --threads 1 "
                         f"(one process per device is the way on a GPU)")
    try:
        check_device(args.device)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    for kind, flags in KINDS.items():
        for point in grid_points(kind, shared_grid(args), args):  # every point checked before any work
            try:
                TrainConfig(**base_options(args), **flags, **point)
            except ConfigError as e:
                raise SystemExit(f"{kind} grid point {point}: {e}") from None
    args.command = command_line("quality.py", argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.verbose:
        logging.getLogger("mmrec.train").setLevel(logging.INFO)  # one line per epoch
    with feature_cache(args.cache_dir) as cache:
        for name in args.datasets:
            key = f"{name} {args.tag}" if args.tag else name
            entry = run_dataset(name, args, cache, lambda e, k=key: merge_and_write(Path(args.out), k, e))
            print(f"[{name}] done in {entry['total_seconds']:.0f}s: {json.dumps(entry['checks'])}", flush=True)


if __name__ == "__main__":
    main()
