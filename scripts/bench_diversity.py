"""Accuracy against diversity of MMR re-ranking (``mmrec recommend --diversity W``) on ml100k-plus.

Trains the fused model once (seed 0, the settings validation chose in scripts/quality.py's
stage 3: lr 0.01, L2 1e-3, edge pruning 0.3, alignment weight 1.0), takes every test user's top
``--candidates`` items (training items masked, MMRec's convention, as in quality.py), re-ranks
them to 20 by maximal marginal relevance for each weight W (:mod:`mmrec.diversity`; W = 0 is the
plain ranking) and reports test Recall / NDCG @10/20, coverage, novelty and ``diversity@K``
measured two ways: over the trained item vectors (the similarity MMR trades against) and over
the text vectors (how different the listed films' descriptions are: a view MMR does not see),
plus the re-ranking time per user. Writes ``--out``/diversity.json and .md.

Usage::

    .venv/bin/python scripts/bench_diversity.py --weights 0 0.1 0.2 0.3 0.5 --candidates 100
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
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.diversity import mmr_rerank  # noqa: E402
from mmrec.metrics import evaluate_ranking, rank_topk  # noqa: E402
from machine import add_run_options, begin_run, feature_cache, update_results  # noqa: E402
from quality import fit_trainer, load_dataset  # noqa: E402

DATASET = "ml100k-plus"
CONFIG = dict(mask="train", lr=0.01, reg=1e-3, edge_dropout=0.3, align_weight=1.0, epochs=100, patience=10,
              batch_size=2048, seed=0)
KS = (10, 20)
SHOWN = ("recall@20", "ndcg@20", "diversity@20", "text_diversity@20", "coverage@20", "novelty@20")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# Diversity: MMR re-ranking of the top candidates (`mmrec recommend --diversity W`)", "",
             f"{results['dataset']}, fused model ({results['model']}), {results['users']} test users, top "
             f"{results['candidates']} candidates re-ranked to 20; training items masked.", "",
             "| W | " + " | ".join(SHOWN) + " | ms / user |", "|---:|" + "---:|" * (len(SHOWN) + 1)]
    for row in results["rows"]:
        lines.append(f"| {row['weight']:g} | " + " | ".join(f"{row[k]:.4f}" for k in SHOWN) + f" | {row['ms_per_user']:.2f} |")
    lines += ["", "`diversity@20`: mean 1 - cosine over the list's pairs of trained item vectors; `text_diversity@20`: "
              "the same over the text vectors. Every row re-ranks the same candidates of one trained model (seed 0), "
              f"in one run (training {results['train_seconds']:.0f}s, best epoch {results['best_epoch']}).", "",
              f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start), "
              f"torch {m['torch']} with {m['torch_threads']} thread(s).", "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.5], help="MMR weights W")
    p.add_argument("--candidates", type=int, default=100, help="candidates re-ranked per user (default 100)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_diversity.py", args, argv)
    with feature_cache(args.cache_dir) as cache:
        content, inter = load_dataset(Path(args.data), DATASET, cache)
    start = time.perf_counter()
    trainer, result = fit_trainer(content, inter, TrainConfig(**CONFIG))
    train_seconds = time.perf_counter() - start
    user_vecs, item_vecs, _ = trainer.vectors()
    print(f"trained: best epoch {result.best_epoch}, {train_seconds:.0f}s", flush=True)

    truth = inter.user_items("test")
    users = np.flatnonzero(np.diff(truth.indptr))
    candidates = rank_topk(lambda u: user_vecs[torch.as_tensor(u)] @ item_vecs.T, users, args.candidates,
                           inter.user_items("train"))  # [R, C]
    V = item_vecs.numpy()  # [N, D]
    U = user_vecs.numpy()
    text = content.features["text"]
    popularity = inter.item_popularity("train")
    rows = []
    for w in args.weights:
        top = np.full((len(users), max(KS)), -1, dtype=np.int64)  # [R, 20]
        t = time.perf_counter()
        for r, u in enumerate(users):
            cand = candidates[r][candidates[r] >= 0]
            picks = mmr_rerank(V[cand] @ U[u], V[cand], max(KS), w)
            top[r, : len(picks)] = cand[picks]
        ms = 1000 * (time.perf_counter() - t) / len(users)
        got = evaluate_ranking(top, truth[users], KS, num_items=inter.num_items, item_popularity=popularity,
                               item_vectors=V)
        by_text = evaluate_ranking(top, truth[users], KS, num_items=inter.num_items, item_vectors=text)
        row = {"weight": w, "ms_per_user": round(ms, 3)} | {k: round(float(v), 6) for k, v in got.items()}
        row |= {f"text_{k}": round(float(by_text[k]), 6) for k in by_text if k.startswith("diversity@")}
        rows.append(row)
        print(" ".join(f"{k} {row[k]:.4f}" for k in ("weight", *SHOWN)), flush=True)

    model_text = ", ".join(f"{k} {v}" for k, v in CONFIG.items() if k in ("lr", "reg", "edge_dropout", "align_weight"))
    results = {"dataset": DATASET, "model": model_text, "best_epoch": result.best_epoch,
               "train_seconds": round(train_seconds, 1), "users": int(len(users)), "candidates": args.candidates,
               "rows": rows, "machine": machine, "command": command}
    update_results(Path(args.out), "diversity", lambda old: results, markdown)


if __name__ == "__main__":
    main()
