"""Restricting every query to candidates (``only=`` / ``--only`` / ``--where``): cost and recall, side by side.

For each factory, one index of ``--items`` clustered vectors (``index.clustered_vectors``) answers
``--queries`` queries in one batched ``FaissIndex.search`` (k = 10): with no restriction, and for
each share of ``--shares`` (a random set of that many items allowed) two ways, in one run:

* ``only``: ``search(..., only=ids)``, what ``recommend`` / ``similar`` / ``search`` send: under
  ``index.faiss_index.POST_FILTER_SHARE`` of the items (Flat 10%, HNSW 20%; IVF always) the
  candidates let through inside FAISS by an ``IDSelector`` (IVF probing, HNSW walking, N /
  candidates times as wide), above it an unrestricted search over-fetching 2 N / candidates times k,
  the candidates kept (the table's ``way``); refilled to k;
* ``post-filter``: what a script over raw FAISS does: search ``fetch = min(N, ceil(2 k / share),
  4096)`` unrestricted results, keep the candidates among them, first k.

Each timing is the median of ``--rounds`` calls. Each way's recall@10 is measured against a
brute-force ranking of the candidates, and its share of lists that come back short (fewer than
``min(k, candidates)``); every ``only`` list is checked to hold candidates only. Also timed:
``ItemIndex.matching`` (what ``--where`` runs) over the same number of items' display fields.
Writes ``--out``/candidates.json and candidates.md.

Usage::

    .venv/bin/python scripts/bench_candidates.py
    .venv/bin/python scripts/bench_candidates.py --items 20000 --shares 0.01 0.5 --rounds 1   # quick
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import FaissIndex  # noqa: E402
from index.faiss_index import POST_FILTER_SHARE  # noqa: E402
from machine import add_run_options, add_search_options, begin_run, brute_force_top, built_indexes, median_seconds, set_recall, update_results  # noqa: E402

K = 10
POST_FILTER_CAP = 4096


def post_filter(index: FaissIndex, queries: np.ndarray, allowed: set[int], fetch: int) -> list[list[int]]:
    found, _ = index.search(queries, fetch)
    return [[i for i in row if i in allowed][:K] for row in found]


def measure(index: FaissIndex, base: np.ndarray, queries: np.ndarray, shares: list[float], rounds: int,
            seed: int) -> list[dict[str, Any]]:
    """One row per share (no restriction first): seconds, recall@10 and short lists of each way."""
    rng = np.random.default_rng(seed)
    n = len(index)
    none_s, (plain, _) = median_seconds(lambda: index.search(queries, K), rounds)
    rows = [{"share": 1.0, "candidates": n, "only_s": round(none_s, 4),
             "only_recall": round(set_recall(plain, brute_force_top(base, queries, K)), 4)}]
    print(f"  {rows[0]}", flush=True)
    for share in shares:
        size = max(1, round(share * n))
        chosen = np.sort(rng.choice(n, size, replace=False))
        allowed = set(chosen.tolist())
        truth = brute_force_top(base, queries, K, keep=chosen)
        want = min(K, size)
        only_s, (got, _) = median_seconds(lambda: index.search(queries, K, only=allowed), rounds)
        fetch = min(n, math.ceil(2 * K / share), POST_FILTER_CAP)
        post_s, post = median_seconds(lambda: post_filter(index, queries, allowed, fetch), rounds)
        kept = size >= POST_FILTER_SHARE[index._spec.kind] * n
        row = {"share": share, "candidates": size, "way": "kept" if kept else "selector",
               "only_s": round(only_s, 4), "only_recall": round(set_recall(got, truth), 4),
               "only_short": round(float(np.mean([len(r) < want for r in got])), 4),
               "only_lists_ok": all(set(r) <= allowed for r in got),
               "post_fetch": fetch, "post_s": round(post_s, 4), "post_recall": round(set_recall(post, truth), 4),
               "post_short": round(float(np.mean([len(r) < want for r in post])), 4)}
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


QUERIES_FILTERED = 50  # single similar() calls timed per filter (median)


def median_each(call: Any, rows: Any) -> float:
    """Median seconds of ``call(q)`` over the rows, one call each."""
    times = []
    for q in rows:
        start = time.perf_counter()
        call(q)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_matching(items: int, rounds: int, seed: int) -> tuple[dict[str, Any], float]:
    """``ItemIndex.matching`` over ``items`` items' display fields: a category of 200 (Zipf-like
    sizes) and a |-separated tag field, for a rare and a common value, and one ``similar`` restricted
    to each answer; also the seconds of an unrestricted ``similar``."""
    from mmrec.item_index import ItemIndex

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, 201)
    category = rng.choice(200, items, p=weights / weights.sum())
    tags = rng.integers(0, 50, size=(items, 3))
    records = [{"title": f"item {i}", "category": f"c{c}", "tags": "|".join(f"t{t}" for t in row)}
               for i, (c, row) in enumerate(zip(category, tags))]
    index = ItemIndex.from_features(list(range(items)), {"text": rng.normal(size=(items, 8)).astype(np.float32)},
                                    records=records, factory="Flat", show_progress=False)
    out: dict[str, Any] = {}
    for label, where in (("rare category", {"category": "c199"}), ("common category", {"category": "c0"}),
                         ("tag (|-separated)", {"tags": "t7"}), ("category and tag", {"category": "c0", "tags": "t7"})):
        index._facets = None  # the first query of a field reads every item's value of it
        start = time.perf_counter()
        first = index.matching(where)
        first_s = time.perf_counter() - start
        seconds, found = median_seconds(lambda: index.matching(where), rounds)  # later ones look it up
        assert found == first
        # One filtered similar() a request, as a server answers a repeated --where: the set kept
        # with the answer (candidate_ids), against a plain set of the same ids, which every query
        # resolves and turns into FAISS labels again (what each query did before the set was kept).
        kept = index.candidate_ids(None, where)
        rows = range(0, items, max(1, items // QUERIES_FILTERED))[:QUERIES_FILTERED]
        plain_s = median_each(lambda q: index.similar(q, K, only=set(index.matching(where))), rows)
        kept_s = median_each(lambda q: index.similar(q, K, only=index.candidate_ids(None, where)), rows)
        for q in rows[:5]:  # the same answers
            assert index.similar(q, K, only=kept) == index.similar(q, K, only=set(found))
        out[label] = {"where": where, "matched": len(found), "first_seconds": round(first_s, 4),
                      "seconds": round(seconds, 6), "query_plain_set_seconds": round(plain_s, 6),
                      "query_kept_set_seconds": round(kept_s, 6)}
        print(f"  matching {label}: {out[label]}", flush=True)
    return out, median_each(lambda q: index.similar(q, K), range(QUERIES_FILTERED))


def markdown(results: dict[str, Any]) -> str:
    e = results["candidates"]
    m = e["machine"]
    lines = ["# Restricting queries to candidates (`scripts/bench_candidates.py`)", "",
             f"{e['items']:,} clustered vectors of {e['dim']} dimensions, {e['queries']:,} queries in one batched "
             f"search, k = {K}; median of {e['rounds']} calls. `only`: `search(..., only=ids)` (an `IDSelector` inside "
             "FAISS, what `recommend` / `similar` / `search` send); `post-filter`: an unrestricted search of `fetch` "
             f"results (min(N, 2k / share, {POST_FILTER_CAP})), the candidates kept. Recall@10 against a brute-force "
             "ranking of the candidates; `short`: share of queries given fewer than min(k, candidates) results. "
             "`way`: how `only` filtered (`selector`: inside FAISS; `kept`: after an over-fetching search).", "",
             "| factory | candidates | way | none s | only s | only / none | post-filter s (fetch) | "
             "recall@10 only / post-filter | short only / post-filter | lists |",
             "|---|---:|---|---:|---:|---:|---:|---|---|---|"]
    for factory, rows in e["factories"].items():
        base = rows[0]
        for r in rows[1:]:
            lines.append(f"| {factory} | {r['candidates']:,} ({r['share']:.2%}) | {r['way']} | {base['only_s']:.3f} | "
                         f"{r['only_s']:.3f} | {r['only_s'] / base['only_s']:.2f}x | {r['post_s']:.3f} "
                         f"({r['post_fetch']:,}) | {r['only_recall']:.4f} / {r['post_recall']:.4f} | "
                         f"{r['only_short']:.1%} / {r['post_short']:.1%} | {'ok' if r['only_lists_ok'] else 'FAILED'} |")
    lines += ["", f"Unrestricted recall@10: " + ", ".join(f"{f} {rows[0]['only_recall']:.4f}"
                                                       for f, rows in e["factories"].items()) + ".", "",
              f"`ItemIndex.matching` (what `--where` runs) over {e['items']:,} items' display fields (Flat, 8-d "
              f"vectors), and one `similar(k={K})` a call restricted to its answer, the median of "
              f"{QUERIES_FILTERED} calls: `kept set` as `recommend` / `similar` / `mmrec serve` answer a repeated "
              "`--where` (the set `candidate_ids` keeps with the answer, whose FAISS labels and selector the index "
              "keeps), `plain set` the same ids as a new set each call (resolved and turned into labels again, "
              "as every query did before the set was kept); unfiltered: "
              f"{1000 * e['query_unfiltered_seconds']:.2f} ms a call.", "",
              "| filter | matched | first query s (reads the field) | later queries ms | similar, kept set ms | "
              "similar, plain set ms |", "|---|---:|---:|---:|---:|---:|"]
    for label, r in e["matching"].items():
        shown = ", ".join(f"{k}={v}" for k, v in r["where"].items())
        lines.append(f"| {label} (`{shown}`) | {r['matched']:,} | {r['first_seconds']:.3f} | "
                     f"{1000 * r['seconds']:.2f} | {1000 * r['query_kept_set_seconds']:.2f} | "
                     f"{1000 * r['query_plain_set_seconds']:.2f} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start), "
              f"FAISS with {e['threads']} thread(s). Command: `{e['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_search_options(p)
    p.add_argument("--shares", type=float, nargs="+", default=[0.0005, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9],
                   help="shares of the items allowed (default 0.0005 0.01 0.05 0.1 0.2 0.5 0.9)")
    add_run_options(p)
    args = p.parse_args(argv)
    if any(not 0 < s <= 1 for s in args.shares):
        p.error("--shares must be in (0, 1]")
    command, machine = begin_run("bench_candidates.py", args, argv)
    out: dict[str, Any] = {}
    for factory, index, base, queries in built_indexes(args):
        out[factory] = measure(index, base, queries, args.shares, args.rounds, seed=1)
    matching, unfiltered = time_matching(args.items, args.rounds, seed=2)
    entry = {"items": args.items, "dim": args.dim, "queries": args.queries, "rounds": args.rounds,
             "threads": args.threads, "factories": out, "matching": matching,
             "query_unfiltered_seconds": round(unfiltered, 6), "machine": machine, "command": command}
    update_results(Path(args.out), "candidates", lambda old: {"candidates": entry}, markdown)
    print(markdown({"candidates": entry}))


if __name__ == "__main__":
    main()
