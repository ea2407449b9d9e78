"""Excluding items from every query (``exclude=`` / ``--exclude``): what a long list costs, side by side.

For each factory, one index of ``--items`` clustered vectors (``index.clustered_vectors``) answers
``--queries`` queries in one batched ``FaissIndex.search`` (k = 10), with no exclusions and with
each list size of ``--sizes`` random ids excluded two ways (three on Flat), in one run:

* ``shared``: ``exclude_all=ids``, what ``recommend`` / ``similar`` now send: the ids hidden inside
  FAISS by an ``IDSelector``, except on Flat for a list of at most ``FLAT_FOLD_MAX`` ids and
  ``FLAT_FOLD_SHARE`` of the items, left out of a deeper fetch (``folded``); for Flat the selector
  way is also timed (``selector``), so the two compare side by side;
* ``per-query``: ``exclude=[ids] * queries``, the per-query sets the first version built (every
  query fetches k plus the list and filters it in Python).

Each timing is the median of ``--rounds`` calls; every result list is checked to hold k ids, none of
them excluded, and each way's recall@10 is measured against a brute-force ranking of the items left
(the two ways may differ on an approximate index: they search differently). Writes
``--out``/exclude.json and exclude.md.

Usage::

    .venv/bin/python scripts/bench_exclude.py
    .venv/bin/python scripts/bench_exclude.py --items 20000 --sizes 100 2000 --rounds 1   # quick
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import FaissIndex, faiss_index  # noqa: E402
from machine import add_run_options, add_search_options, begin_run, brute_force_top, built_indexes, median_seconds, set_recall, update_results  # noqa: E402

K = 10


def measure(index: FaissIndex, base: np.ndarray, queries: np.ndarray, sizes: list[int], rounds: int,
            seed: int) -> list[dict[str, Any]]:
    """One row per list size (0 first): seconds and recall@10 of each way, and the checks."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in [0, *sizes]:
        ids = set(rng.choice(len(index), size, replace=False).tolist())
        truth = brute_force_top(base, queries, K, keep=np.setdiff1d(np.arange(len(base)), sorted(ids)))
        shared_s, (shared, _) = median_seconds(lambda: index.search(queries, K, exclude_all=ids), rounds)
        row: dict[str, Any] = {"excluded": size, "shared_s": round(shared_s, 4), "shared_recall": round(set_recall(shared, truth), 4)}
        lists = [shared]
        if size and index.factory == "Flat":
            row["folded"] = size <= min(faiss_index.FLAT_FOLD_MAX, faiss_index.FLAT_FOLD_SHARE * len(index))
            fold, faiss_index.FLAT_FOLD_SHARE = faiss_index.FLAT_FOLD_SHARE, 0.0
            try:
                sel_s, (sel, _) = median_seconds(lambda: index.search(queries, K, exclude_all=ids), rounds)
            finally:
                faiss_index.FLAT_FOLD_SHARE = fold
            row |= {"selector_s": round(sel_s, 4), "selector_recall": round(set_recall(sel, truth), 4)}
            lists.append(sel)
        if size:
            per_s, (per, _) = median_seconds(lambda: index.search(queries, K, exclude=[ids] * len(queries)), rounds)
            row |= {"per_query_s": round(per_s, 4), "per_query_recall": round(set_recall(per, truth), 4)}
            lists.append(per)
        row["lists_ok"] = all(len(r) == K and not set(r) & ids for way in lists for r in way)
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


def markdown(results: dict[str, Any]) -> str:
    e = results["exclude"]
    m = e["machine"]
    lines = ["# Excluding items from every query (`scripts/bench_exclude.py`)", "",
             f"{e['items']:,} clustered vectors of {e['dim']} dimensions, {e['queries']:,} queries in one batched "
             f"search, k = {K}; median of {e['rounds']} calls. `shared`: `exclude_all`, what `recommend` / "
             "`similar` send (an `IDSelector` inside FAISS; on Flat, a list of at most "
             f"{e.get('flat_fold', 0):,} ids is left out of a deeper fetch instead: `folded`); `selector`: Flat "
             "with the `IDSelector` whatever the list's size; `per-query`: the same ids as every query's own set.", "",
             "| factory | excluded | none s | shared s | selector s | per-query s | shared / none | "
             "selector / shared | per-query / shared | recall@10 none / shared / per-query | lists |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for factory, rows in e["factories"].items():
        base = rows[0]
        for r in rows[1:]:
            sel = (f"{r['selector_s']:.3f} | " if "selector_s" in r else "- | ")
            ratio = (f"{r['selector_s'] / r['shared_s']:.2f}x | " if "selector_s" in r else "- | ")
            way = " (folded)" if r.get("folded") else ""
            lines.append(f"| {factory} | {r['excluded']:,}{way} | {base['shared_s']:.3f} | {r['shared_s']:.3f} | {sel}"
                         f"{r['per_query_s']:.3f} | {r['shared_s'] / base['shared_s']:.2f}x | {ratio}"
                         f"{r['per_query_s'] / r['shared_s']:.1f}x | {base['shared_recall']:.4f} / "
                         f"{r['shared_recall']:.4f} / {r['per_query_recall']:.4f} | "
                         f"{'ok' if r['lists_ok'] else 'FAILED'} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start), "
              f"FAISS with {e['threads']} thread(s). Command: `{e['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_search_options(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 20_000],
                   help="excluded list sizes (default 100 1000 20000)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_exclude.py", args, argv)
    out: dict[str, Any] = {}
    for factory, index, base, queries in built_indexes(args):
        out[factory] = measure(index, base, queries, args.sizes, args.rounds, seed=1)
    entry = {"items": args.items, "dim": args.dim, "queries": args.queries, "rounds": args.rounds,
             "flat_fold": min(faiss_index.FLAT_FOLD_MAX, int(faiss_index.FLAT_FOLD_SHARE * args.items)),
             "threads": args.threads, "factories": out, "machine": machine, "command": command}
    update_results(Path(args.out), "exclude", lambda old: {"exclude": entry}, markdown)
    print(markdown({"exclude": entry}))


if __name__ == "__main__":
    main()
