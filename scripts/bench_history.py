"""Recommendations for users the model never trained on, from their history alone.

``Recommender.recommend_history`` (``mmrec recommend --history ...``) turns a list of item ids
into a user vector. This script measures how good that user is, on ``--data`` (default
``../shared/data``), with the datasets' given splits:

* a seeded 20% of the users (drawn among those with a training interaction) are held out of
  training entirely (seed ``s`` picks the users and seeds the training); the model is trained
  on the other users' interactions;
* each held-out user is then placed from their training-split items only, by each method below,
  and ranked against every item (their history masked) for their validation and test items;
* ``trained with these users`` is the reference: the same model trained on every user, scored
  by the held-out users' own trained vectors (what refitting the model would give).

Methods: ``fold-in`` (least squares against every item vector, ``fusion.foldin.HistoryFoldIn``,
the default for trained directories) with the ridge that ``mmrec train`` picks
(``mmrec.foldin.select_fold_in_reg``, on the kept users' validation split: what a trained
directory serves) and with the fixed default ridge; its whole ``alpha`` x ``reg`` grid, scored on
the held-out users, is kept in the JSON; ``mean`` (the mean of the history's item vectors);
the untrained content index (mean of the history's centred content vectors, ``mmrec index
build``'s default, and fold-in over those vectors); and popularity (training interactions of the
other users). Item vectors are the trainer's (``fit`` serves the same for every item with a
training interaction). The models are
the fused and ID-only LightGCN at the points ``scripts/quality.py`` chose on validation. The
fold-in's cost is timed too: the Gram matrix (once per item set) and one user's solve.

    .venv/bin/python scripts/bench_history.py --datasets ml100k-plus --seeds 0 1 2 --cache-dir ~/.cache/mmrec/features
    .venv/bin/python scripts/bench_history.py --datasets tiktok --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusion.fixed import combine_modalities, modality_centers  # noqa: E402
from fusion.foldin import HistoryFoldIn, history_mean  # noqa: E402
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.foldin import DEFAULT_FOLD_IN_REG, FOLD_IN_REGS, select_fold_in_reg  # noqa: E402
from mmrec.interactions import Interactions  # noqa: E402
from mmrec.metrics import evaluate  # noqa: E402
from machine import add_run_options, begin_run, feature_cache, mean_std, pick_metrics, update_results  # noqa: E402
from quality import fit_trainer, load_dataset  # noqa: E402

HELD_OUT = 0.2  # fraction of users never trained on
# The points scripts/quality.py chose on validation (README, Recommendation quality).
BASE = {"mask": "train", "batch_size": 2048, "eval_every": 1, "patience": 10}
MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "ml100k-plus": {
        "fused": {"lr": 0.01, "reg": 1e-3, "edge_dropout": 0.3, "align_weight": 1.0, "content_gain": 0.1,
                  "epochs": 100},
        "id-only": {"use_content": False, "lr": 0.01, "reg": 1e-3, "edge_dropout": 0.3, "epochs": 100},
    },
    "tiktok": {
        "fused": {"lr": 0.005, "reg": 1e-4, "item_graph_k": 10, "edge_dropout": 0.3, "epochs": 60},
        "id-only": {"use_content": False, "lr": 0.01, "reg": 1e-4, "edge_dropout": 0.3, "epochs": 60},
    },
}
GRID_ALPHA = (0.3, 1.0, 3.0)  # the ridges: mmrec.foldin.FOLD_IN_REGS
SPLITS = ("valid", "test")


def split_users(inter: Interactions, seed: int) -> tuple[Interactions, Interactions, np.ndarray]:
    """(interactions of the kept users, of the held-out users, the held-out users' indices).

    Held-out users are drawn among those with a training interaction: a history to place them by.
    """
    rng = np.random.default_rng(1000 + seed)
    eligible = np.flatnonzero(np.bincount(inter.users[inter.split_mask("train")], minlength=inter.num_users) > 0)
    held = np.zeros(inter.num_users, bool)
    held[rng.choice(eligible, int(round(HELD_OUT * inter.num_users)), replace=False)] = True

    def subset(keep: np.ndarray) -> Interactions:
        rows = keep[inter.users]
        old = np.flatnonzero(keep)
        new_index = np.full(inter.num_users, -1)
        new_index[old] = np.arange(len(old))
        return Interactions([inter.user_ids[i] for i in old], inter.item_ids, new_index[inter.users[rows]],
                            inter.items[rows], split=inter.split[rows])

    return subset(~held), subset(held), np.flatnonzero(held)


def metrics_of(users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, inter: Interactions) -> dict:
    """Valid and test metrics of ``inter``'s users scored ``users @ items.T`` (history masked)."""
    u = torch.as_tensor(np.asarray(users, np.float32))
    v = torch.as_tensor(np.asarray(items, np.float32))
    return {s: pick_metrics(evaluate(lambda b: u[torch.as_tensor(b)] @ v.T, inter, split=s, mask="train",
                                     ks=(10, 20))) for s in SPLITS}


def histories(inter: Interactions) -> list[np.ndarray]:
    """Each user's training-split items."""
    m = inter.user_items("train").tocsr()
    return [m.indices[m.indptr[u] : m.indptr[u + 1]] for u in range(m.shape[0])]


def place_users(items: np.ndarray, hist: list[np.ndarray], held: Interactions, kept: Interactions | None,
                seed: int) -> dict[str, Any]:
    """Metrics of the fold-in and of the mean against ``items``. With ``kept`` (a trained model):
    the fold-in at the ridge ``fit`` would choose on the kept users' validation split (what a
    trained directory serves), at the fixed default ridge, and over the whole grid."""
    out: dict[str, Any] = {}
    reg = DEFAULT_FOLD_IN_REG
    if kept is not None:
        reg, tried, _ = select_fold_in_reg(items, kept, mask="train", seed=seed)
    t = time.perf_counter()
    fold = HistoryFoldIn(items, reg=reg)
    gram_s = time.perf_counter() - t
    t = time.perf_counter()
    users = fold(hist)
    name = "fold-in, ridge chosen on validation" if kept is not None else "fold-in"
    out[name] = metrics_of(users, items, held)
    out[name]["seconds"] = {"gram": round(gram_s, 4),
                            "per_user_ms": round(1e3 * (time.perf_counter() - t) / len(hist), 4)}
    if kept is not None:
        out[name]["reg"], out[name]["valid_recall@20_of_kept_users"] = reg, tried
        out[f"fold-in, ridge {DEFAULT_FOLD_IN_REG}"] = metrics_of(
            fold.with_settings(reg=DEFAULT_FOLD_IN_REG)(hist), items, held)
        out["fold-in grid"] = [
            {"alpha": a, "reg": r, **metrics_of(fold.with_settings(alpha=a, reg=r)(hist), items, held)}
            for a in GRID_ALPHA for r in FOLD_IN_REGS
        ]
    out["mean"] = metrics_of(history_mean(items, hist), items, held)
    return out


def run_seed(name: str, content: Any, inter: Interactions, seed: int, epochs: int | None) -> dict[str, Any]:
    kept, held, held_rows = split_users(inter, seed)
    hist = histories(held)
    run: dict[str, Any] = {"seed": seed, "held_out_users": held.num_users, "methods": {}}
    pop = np.bincount(kept.items[kept.split_mask("train")], minlength=inter.num_items).astype(np.float32)
    run["methods"]["popularity"] = metrics_of(np.ones((held.num_users, 1)), pop[:, None], held)
    if content.features:
        vecs = combine_modalities(content.features, content.present, order=sorted(content.features),
                                  centers=modality_centers(content.features, content.present), renormalize=False)
        placed = place_users(vecs, hist, held, None, seed)
        run["methods"]["content index, mean"] = placed["mean"]
        run["methods"][f"content index, fold-in, ridge {DEFAULT_FOLD_IN_REG}"] = placed["fold-in"]
    for kind, point in MODELS[name].items():
        if kind == "fused" and not content.features:
            continue
        cfg = TrainConfig(**BASE, **(point | ({"epochs": epochs} if epochs else {})), seed=seed)
        t = time.perf_counter()
        trainer, result = fit_trainer(content, kept, cfg)
        _, items, _ = trainer.vectors()
        placed = place_users(items.cpu().numpy().astype(np.float64), hist, held, kept, seed)
        run["methods"] |= {f"{kind}, {m}": v for m, v in placed.items()}
        run[f"{kind} best epoch"] = result.best_epoch
        chosen = placed["fold-in, ridge chosen on validation"]
        print(f"[{name} seed {seed}] {kind} trained without them in {time.perf_counter() - t:.0f}s: fold-in "
              f"(ridge {chosen['reg']}) test R@20 {chosen['test']['recall@20']:.4f}, mean "
              f"{placed['mean']['test']['recall@20']:.4f}", flush=True)
        trainer, _ = fit_trainer(content, inter, cfg)
        users, items, _ = trainer.vectors()
        ref = metrics_of(users[torch.from_numpy(held_rows)], items, held)
        run["methods"][f"{kind}, trained with these users"] = ref
        print(f"[{name} seed {seed}] {kind} trained with them: test R@20 {ref['test']['recall@20']:.4f}", flush=True)
    return run


def timing(n: int = 100_000, d: int = 64, history: int = 50) -> dict[str, Any]:
    """Fold-in cost on random vectors: the Gram matrix of ``n`` items, one user's solve."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, d))
    t = time.perf_counter()
    fold = HistoryFoldIn(v)
    gram = time.perf_counter() - t
    rows = [rng.choice(n, history, replace=False) for _ in range(200)]
    t = time.perf_counter()
    fold(rows)
    return {"items": n, "dim": d, "history": history, "gram_seconds": round(gram, 4),
            "per_user_ms": round(1e3 * (time.perf_counter() - t) / len(rows), 4)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = [m for m in runs[0]["methods"] if not m.endswith("grid")]
    return {m: {s: {k: mean_std([r["methods"][m][s][k] for r in runs]) for k in ("recall@20", "ndcg@20")}
                for s in SPLITS} for m in names}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# History recommendations for users never trained on (`scripts/bench_history.py`)", "",
             f"Machine: {results['machine'].get('cpu', '?')}; commands: see each dataset.", ""]
    for name, entry in results["datasets"].items():
        runs = entry["runs"]
        lines += [f"## {name}", "", f"`{entry['command']}`", "",
                  f"{runs[0]['held_out_users']} held-out users per seed, seeds {[r['seed'] for r in runs]} "
                  f"(mean ± std over seeds).", "",
                  "| method | valid R@20 | test R@20 | test N@20 |", "|---|---:|---:|---:|"]
        for m, cell in entry["summary"].items():
            def f(s: str, k: str) -> str:
                c = cell[s][k]
                return f"{c['mean']:.4f} ± {c['std']:.4f}" if c["n"] > 1 else f"{c['mean']:.4f}"
            lines.append(f"| {m} | {f('valid', 'recall@20')} | {f('test', 'recall@20')} | {f('test', 'ndcg@20')} |")
        for kind in ("fused", "id-only"):
            key = f"{kind}, fold-in, ridge chosen on validation"
            if key in runs[0]["methods"]:
                lines.append(f"\n{kind}: ridge chosen on the kept users' validation split, per seed: "
                             f"{[r['methods'][key]['reg'] for r in runs]}")
        grid = [(kind, g) for kind in ("fused", "id-only") for g in runs[0]["methods"].get(f"{kind}, fold-in grid", [])]
        if grid:
            lines += ["", f"Fold-in grid on the held-out users, seed {runs[0]['seed']} (alpha 1.0 is the default):", "",
                      "| model | alpha | reg | valid R@20 | test R@20 |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {kind} | {g['alpha']} | {g['reg']} | {g['valid']['recall@20']:.4f} | "
                      f"{g['test']['recall@20']:.4f} |" for kind, g in grid]
        cost = [(m, runs[0]["methods"][m]["seconds"]) for m in runs[0]["methods"] if "seconds" in runs[0]["methods"][m]]
        lines += [""] + [f"- {m}: Gram matrix {c['gram']} s, {c['per_user_ms']} ms per user (seed {runs[0]['seed']})"
                         for m, c in cost] + [""]
    t = results.get("timing")
    if t:
        lines += ["## Fold-in cost at scale", "",
                  f"{t['items']:,} random items x {t['dim']} dims: Gram matrix {t['gram_seconds']} s (once per item "
                  f"set), {t['per_user_ms']} ms per user with a {t['history']}-item history.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--datasets", nargs="+", default=["ml100k-plus"], choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="cap every training at this many epochs (a quick look)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_history.py", args, argv)
    out: dict[str, Any] = {}
    with feature_cache(args.cache_dir) as cache:
        for name in args.datasets:
            content, inter = load_dataset(Path(args.data), name, cache)
            runs = [run_seed(name, content, inter, s, args.epochs) for s in args.seeds]
            out[name] = {"command": command, "runs": runs, "summary": summarize(runs)}
    cost = timing()

    def update(old: dict[str, Any] | None) -> dict[str, Any]:
        merged = old or {"datasets": {}}
        merged["datasets"].update(out)
        merged["machine"] = machine
        merged["timing"] = cost
        return merged

    update_results(Path(args.out), "history", update, markdown)
    print(markdown({"datasets": out, "machine": machine, "timing": cost}))


if __name__ == "__main__":
    main()
