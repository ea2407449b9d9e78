"""Search-knob tuning: what ``mmrec index tune`` buys on an approximate index, measured side by side.

Builds ``bench_serve.py``'s synthetic directory (an ID-only model on random interactions,
``--items`` x ``--users``, one epoch; ``--factory auto`` picks an IVF index above 100k items),
then measures, in one run and one process, the index's default search setting and, for each
``--recall`` target, the setting ``Recommender.tune_search`` picks (``mmrec index tune``; measured
on its own sample of 2000 items and 2000 users, seed 0, and not saved):

* recall@10 against the exact ranking of the same vectors (``bench_serve``'s brute-force
  oracles): ``recommend`` for ``--users-checked`` users and ``similar_many`` for
  ``--items-checked`` items, both drawn with seed 1, independently of the tuning's sample (they
  may share some queries with it);
* p50 / p99 / mean milliseconds of one ``recommend`` and one ``similar`` call (``--requests``
  calls each after a first, one at a time).

Writes ``--out``/tune.json and tune.md.

Usage::

    .venv/bin/python scripts/bench_tune.py
    .venv/bin/python scripts/bench_tune.py --items 20000 --users 2000 --factory IVF64,Flat --requests 50
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.pipeline import fit  # noqa: E402
from mmrec.recommender import Recommender  # noqa: E402
from bench_serve import (K, add_synthetic_options, directory_heading, exact_recall,  # noqa: E402
                         exact_similar_recall, machine_note, time_calls, write_synthetic)
from machine import add_run_options, begin_run, update_results  # noqa: E402


def build(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The synthetic directory under ``work`` (as bench_serve builds it, with ``--factory``)."""
    start = time.perf_counter()
    inter = write_synthetic(work / "synthetic.tsv", args.items, args.users, args.per_user, seed=0)
    fit(inter, out=work / "model", config=TrainConfig(epochs=1, patience=1, seed=0), split="random",
        factory=args.factory, show_progress=False)
    return work / "model", {"model": "ID-only", "epochs": 1, "build_seconds": round(time.perf_counter() - start, 1)}


def measure(rec: Recommender, users: list, items: list, requests: int) -> dict[str, Any]:
    """Recall against the exact ranking and latency of ``recommend`` and ``similar`` at the current setting."""
    return {
        "recommend_recall@10_vs_exact": round(exact_recall(rec, users), 4),
        "similar_recall@10_vs_exact": round(exact_similar_recall(rec, items), 4),
        "recommend": time_calls(lambda i: rec.recommend(users[i % len(users)], K), requests),
        "similar": time_calls(lambda i: rec.similar(items[i % len(items)], K), requests),
    }


def run(directory: Path, targets: list[float], users_checked: int, items_checked: int, requests: int) -> dict[str, Any]:
    """The default setting, then each target's tuned setting, measured on the same queries."""
    rec = Recommender.load(directory, show_progress=False)
    index = rec.items.index
    if index.knob is None:
        raise SystemExit(f"{directory} has a {index.factory} index: exact search, nothing to tune "
                         f"(use more than 100k items or --factory IVF...,Flat / HNSW...)")
    rng = np.random.default_rng(1)  # drawn independently of tune_search's own sample (seed 0)
    users = [rec.user_ids[i] for i in rng.choice(len(rec.user_ids), min(users_checked, len(rec.user_ids)), replace=False)]
    ids = rec.items.ids
    items = [ids[i] for i in rng.choice(len(ids), min(items_checked, len(ids)), replace=False)]
    default = getattr(index, index.knob)
    settings: list[dict[str, Any]] = [{"setting": "default", "value": default} | measure(rec, users, items, requests)]
    print(f"  default {index.knob} {default}: {settings[-1]}", flush=True)
    for target in targets:
        rec.set_search(default, save=False)
        start = time.perf_counter()
        report = rec.tune_search(target, K, save=False)
        tune_s = time.perf_counter() - start
        settings.append({"setting": f"tuned for {target}", "value": report["value"], "tune_seconds": round(tune_s, 1),
                         "sweeps": report["sweeps"]} | measure(rec, users, items, requests))
        print(f"  recall {target}: {index.knob} {report['value']} ({tune_s:.1f}s): "
              f"{ {k: v for k, v in settings[-1].items() if k != 'sweeps'} }", flush=True)
    return {"items": len(rec.items), "users": len(rec.user_ids), "factory": index.factory, "knob": index.knob,
            "users_checked": len(users), "items_checked": len(items), "settings": settings}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Search-knob tuning (`scripts/bench_tune.py`)", "",
             "Recall@10 against the exact ranking of the same vectors (brute force; known items / the item itself "
             "excluded) on queries drawn independently of the tuning's sample (seed 1 against 0), and one call's latency, at the index's default "
             "setting and at the setting `mmrec index tune --recall R` picks; all in one run.", ""]
    for name, d in results["directories"].items():
        lines += [directory_heading(name, d), "",
                  f"Checked on {d['users_checked']:,} users and {d['items_checked']:,} items.", "",
                  f"| setting | {d['knob']} | recommend recall@10 | similar recall@10 | recommend p50 / p99 ms | "
                  "similar p50 / p99 ms | tuning s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for s in d["settings"]:
            r, q = s["recommend"], s["similar"]
            lines.append(f"| {s['setting']} | {s['value']} | {s['recommend_recall@10_vs_exact']:.4f} | "
                         f"{s['similar_recall@10_vs_exact']:.4f} | {r['p50_ms']:.3f} / {r['p99_ms']:.3f} | "
                         f"{q['p50_ms']:.3f} / {q['p99_ms']:.3f} | {s.get('tune_seconds', '-')} |")
        lines += ["", machine_note(d), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_synthetic_options(p)
    p.add_argument("--factory", default="auto", help="FAISS factory of the directory (default auto)")
    p.add_argument("--recall", type=float, nargs="+", default=[0.95, 0.99, 0.999], help="targets to tune for")
    p.add_argument("--users-checked", type=int, default=500, help="users whose recall is checked (default 500)")
    p.add_argument("--items-checked", type=int, default=2000, help="items whose recall is checked (default 2000)")
    p.add_argument("--requests", type=int, default=300, help="timed calls of each kind per setting (default 300)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_tune.py", args, argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        print("synthetic: building", flush=True)
        directory, built = build(args, Path(work))
        entry = run(directory, args.recall, args.users_checked, args.items_checked, args.requests)
    entry |= {"built": built, "threads": args.threads, "machine": machine, "command": command}

    def update(old: dict[str, Any] | None) -> dict[str, Any]:
        merged = old or {"directories": {}}
        merged["directories"]["synthetic"] = entry
        return merged

    update_results(Path(args.out), "tune", update, markdown)
    print(markdown({"directories": {"synthetic": entry}}))


if __name__ == "__main__":
    main()
