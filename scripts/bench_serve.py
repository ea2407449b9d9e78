"""Serving latency: what one request to a trained directory costs, in process and as a CLI call.

In process, each directory is opened once with ``Recommender.load`` and every kind of request
is made one at a time, as an application serving users would make them (one thread, distinct
users / items per request, drawn with a seed): ``recommend`` (plain, ``explain``,
``diversity``), ``recommend_history`` (fold-in, mean, and a known user with two newer items),
``similar`` and, where the directory has a text encoder, ``search_text``; then each batched call
against the same queries one at a time, side by side: every user's top ``K`` (``recommend_many``),
the ``K`` items most similar to each of ``--batch-items`` items (``similar_many``) and
``--batch-texts`` item titles as text queries (``search_texts``); and ``recommend``,
``recommend_history`` and ``similar`` as HTTP requests to ``mmrec serve``'s server (in a thread of
the same process, one keep-alive client connection). Each kind reports
p50 / p99 / mean milliseconds over ``--requests`` calls after its first, and the first call
apart (the fold-in builds its Gram matrix then, a text search loads its encoder). Beside the
latency, ``recommend``'s recall@10 against the exact ranking of the same vectors (brute force,
known items excluded): what an approximate index gives up for its speed; and the same for
``similar_many``'s results (the item itself excluded).

As a CLI call, each command runs as a fresh process (``python -m mmrec.cli ... -q``), which
pays the imports and the directory load every time; ``--cli-repeats`` rounds run the commands
in turn and the median is kept. Measured beside them in the same rounds: ``import torch`` alone,
``import torch_geometric`` alone, and the ``recommend`` call with torch-geometric imported
first (what every call paid before serving stopped importing it).

Directories:

* ``ml100k-plus``: the fused model on ``../shared/data/ml100k-plus`` (text through the packaged
  MiniLM), trained for at most ``--epochs`` (default 20; latency does not depend on how well
  the model is trained), exact index (``Flat``, chosen by ``--factory auto`` below 100k items).
* ``synthetic``: an ID-only model on random interactions (``--items`` x ``--users``,
  ``--per-user`` each, item popularity falling as a power law), one epoch; above 100k items
  (those with an interaction are indexed) ``--factory auto`` picks an IVF index.

Writes ``--out``/serve.json and serve.md.

Usage::

    .venv/bin/python scripts/bench_serve.py --cache-dir ~/.cache/mmrec/features
    .venv/bin/python scripts/bench_serve.py --directories synthetic --items 20000 --users 2000 --requests 50
"""
from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.pipeline import fit  # noqa: E402
from mmrec.recommender import Recommender  # noqa: E402
from mmrec.server import RecommenderServer  # noqa: E402
from machine import add_run_options, begin_run, feature_cache, update_results  # noqa: E402

DIRECTORIES = ("ml100k-plus", "synthetic")
ML100K_TEXT = "title,genres,summary,cast,director"
K = 10
HISTORY = 5  # items per history request


# ------------------------------------------------------------------------------ directories
def write_synthetic(path: Path, items: int, users: int, per_user: int, seed: int) -> Path:
    """``users`` x ``per_user`` distinct random items each, item ``i`` drawn with weight
    ``(i + 10) ** -0.8`` (a few popular items, a long tail); a TSV without a split column."""
    rng = np.random.default_rng(seed)
    weight = (np.arange(items) + 10.0) ** -0.8
    weight /= weight.sum()
    with path.open("w") as f:
        f.write("user_id\titem_id\n")
        for u in range(users):
            for i in rng.choice(items, size=min(per_user, items), replace=False, p=weight):
                f.write(f"u{u}\t{i}\n")
    return path


def build(name: str, args: argparse.Namespace, work: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    """Train ``name``'s directory under ``work``; returns it and what was built."""
    out = work / name
    start = time.perf_counter()
    if name == "ml100k-plus":
        data = Path(args.data) / "ml100k-plus"
        config = TrainConfig(epochs=args.epochs, patience=args.epochs, lr=0.01, reg=1e-3, seed=0)
        fit(data / "interactions.tsv", catalog=data / "items.csv", out=out, config=config, split="given",
            show_progress=False, text_fields=ML100K_TEXT.split(","), image_encoder=None, cache_dir=cache)
        what = {"model": "fused (text)", "epochs": args.epochs}
    else:
        inter = write_synthetic(work / "synthetic.tsv", args.items, args.users, args.per_user, seed=0)
        config = TrainConfig(epochs=1, patience=1, seed=0)
        fit(inter, out=out, config=config, split="random", show_progress=False)
        what = {"model": "ID-only", "epochs": 1, "interactions": args.users * min(args.per_user, args.items)}
    what["build_seconds"] = round(time.perf_counter() - start, 1)
    return out, what


# ------------------------------------------------------------------------------ in process
def item_ids_outside(rng: np.random.Generator, item_ids: list, known: set, count: int) -> list:
    """``count`` distinct ids drawn from ``item_ids`` that are not in ``known`` (fewer when fewer remain)."""
    if len(item_ids) - len(known) < 4 * count:  # few left: draw from what remains
        pool = [i for i in item_ids if i not in known]
        return [pool[j] for j in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]
    out: list = []
    while len(out) < count:  # most items are not known: draw until enough are not
        i = item_ids[int(rng.integers(len(item_ids)))]
        if i not in known and i not in out:
            out.append(i)
    return out


def time_calls(call: Callable[[int], object], n: int) -> dict[str, float]:
    """Call ``call(0)`` once (the first call, reported apart), then ``call(1..n)``; milliseconds."""
    t = time.perf_counter()
    call(0)
    first = 1000 * (time.perf_counter() - t)
    ms = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        call(i + 1)
        ms[i] = 1000 * (time.perf_counter() - t)
    return {"first_ms": round(first, 3), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3), "n": n}


def exact_recall(rec: Recommender, users: list[object]) -> float:
    """Mean overlap of ``recommend(u, K)`` with the exact top-K of the same vectors (brute-force
    dot products with every index item, the user's known items excluded), over ``users``."""
    items = rec.items.vectorizer.mips.original(rec.items.vectors).astype(np.float64)  # [N, D]
    ids = sorted(rec.items._pos, key=rec.items._pos.get)  # row order
    hits = 0
    for u in users:
        scores = items @ rec.user_vectors[rec.user_index(u)].astype(np.float64)  # [N]
        known = set(rec.known_items(u))
        exact = [ids[i] for i in np.argsort(-scores, kind="stable") if ids[i] not in known][:K]
        hits += len(set(exact) & {r.item_id for r in rec.recommend(u, K)})
    return hits / (K * len(users))


def exact_similar_recall(rec: Recommender, item_ids: list[object], block: int = 128) -> float:
    """Mean overlap of ``similar_many(item_ids, K)`` with the exact top-K of the same vectors
    (brute-force float64 dot products of a trained directory's item vectors, the item itself
    excluded): an oracle apart from the index and the code that serves ``similar``. A served
    item counts when its exact score reaches the K-th best (to 1e-9 relative), so items tied at
    the cut (equal vectors) count whichever of them was served."""
    if not rec.trained:
        raise ValueError("the exact similar-items ranking here is the trained model's dot product")
    items = rec.items.vectorizer.mips.original(rec.items.vectors).astype(np.float64)  # [N, D]
    rows = np.array([rec.items._pos[i] for i in item_ids])
    served = rec.similar_many(item_ids, K)
    hits = 0
    for start in range(0, len(rows), block):
        scores = items[rows[start : start + block]] @ items.T  # [B, N]
        scores[np.arange(len(scores)), rows[start : start + block]] = -np.inf  # not the item itself
        kth = -np.partition(-scores, K - 1, axis=1)[:, K - 1]  # [B] the K-th best exact score
        for got, row, cut in zip(served[start : start + block], scores, kth):
            got_scores = row[[rec.items._pos[r.item_id] for r in got]]
            hits += int((got_scores >= cut - 1e-9 * max(1.0, abs(cut))).sum())
    return hits / (K * len(rows))


def requests(directory: Path, n: int, seed: int, batch_items: int, batch_texts: int) -> dict[str, Any]:
    """Open ``directory`` and time every kind of request (:func:`time_calls`)."""
    t = time.perf_counter()
    rec = Recommender.load(directory, show_progress=False)
    load_ms = 1000 * (time.perf_counter() - t)
    rng = np.random.default_rng(seed)
    users = [rec.user_ids[i] for i in rng.choice(len(rec.user_ids), size=n + 1, replace=len(rec.user_ids) <= n)]
    item_ids = list(rec.items._pos)
    picks = [[item_ids[j] for j in rng.choice(len(item_ids), size=HISTORY, replace=False)] for _ in range(n + 1)]
    newer = [item_ids_outside(rng, item_ids, set(rec.known_items(u)), 2) for u in users]
    kinds: dict[str, Callable[[int], object]] = {
        "recommend": lambda i: rec.recommend(users[i], K),
        "recommend, explain": lambda i: rec.recommend(users[i], K, explain=True),
        "recommend, diversity 0.3": lambda i: rec.recommend(users[i], K, diversity=0.3),
        f"history of {HISTORY}, fold-in": lambda i: rec.recommend_history(picks[i], K),
        f"history of {HISTORY}, mean": lambda i: rec.recommend_history(picks[i], K, method="mean"),
        "known user + 2 newer items": lambda i: rec.recommend_history(newer[i], K, user=users[i]),
        "similar": lambda i: rec.similar(picks[i][0], K),
    }
    titles = [rec.items.items[rec.items._pos[p[0]]]["fields"].get("title") for p in picks]
    if "text" in rec.items.manifest.get("encoders", {}) and all(titles):
        kinds["search, text (an item's title)"] = lambda i: rec.search_text(titles[i], K)
    out: dict[str, Any] = {"items": len(rec.items), "users": len(rec.user_ids),
                           "factory": rec.items.manifest.get("factory"), "load_ms": round(load_ms, 1),
                           "requests": {}}
    for name, call in kinds.items():
        out["requests"][name] = time_calls(call, n)
        print(f"  {name}: {out['requests'][name]}", flush=True)
    out["http"] = http_requests(rec, users, picks, n)
    print(f"  http: {out['http']}", flush=True)
    out["recall@10_vs_exact"] = round(exact_recall(rec, users[: min(n, 200)]), 4)
    out["batch"] = batch_vs_loop(rec, items=batch_items, texts=batch_texts)
    print(f"  batch: {out['batch']}", flush=True)
    return out


def http_requests(rec: Recommender, users: list, picks: list[list], n: int) -> dict[str, dict[str, float]]:
    """The same requests through ``mmrec serve``'s server (:class:`mmrec.server.RecommenderServer`
    on a free local port, in a thread of this process) from one keep-alive client connection:
    what HTTP, the JSON encoding and the server's lock add to the in-process call."""
    server = RecommenderServer(rec, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)

    def call(path: str) -> None:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")

    def q(value: object) -> str:
        return quote(str(value), safe="")

    kinds: dict[str, Callable[[int], object]] = {
        "HTTP GET /recommend": lambda i: call(f"/recommend?user={q(users[i])}&k={K}"),
        f"HTTP GET /history ({HISTORY} items, fold-in)": lambda i: call(
            "/history?" + "&".join(f"item={q(j)}" for j in picks[i]) + f"&k={K}"),
        "HTTP GET /similar": lambda i: call(f"/similar?item={q(picks[i][0])}&k={K}"),
    }
    try:
        return {name: time_calls(fn, n) for name, fn in kinds.items()}
    finally:
        conn.close()
        server.shutdown()
        server.server_close()


def loop_vs_batch(loop: Callable[[], list], batch: Callable[[], list], count: int, rounds: int) -> dict[str, Any]:
    """Time ``loop`` (one call per query) and ``batch`` (one batched call) in ``rounds`` alternating
    rounds, keeping each one's median round (a single pass can take a tenth of a second, and the
    first pays one-off costs); queries per second, and whether the two agree exactly (items and
    scores) or in their items alone."""
    loop_s, batch_s = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        one_by_one = loop()
        loop_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        batched = batch()
        batch_s.append(time.perf_counter() - t)
    pairs = list(zip(one_by_one, batched))
    same = all([(r.item_id, r.score) for r in a] == [(r.item_id, r.score) for r in b] for a, b in pairs)
    same_items = all([r.item_id for r in a] == [r.item_id for r in b] for a, b in pairs)
    lm, bm = float(np.median(loop_s)), float(np.median(batch_s))
    return {"queries": count, "rounds": rounds, "loop_per_s": round(count / lm, 1), "batch_per_s": round(count / bm, 1),
            "speed_up": round(lm / bm, 2), "identical": same, "same_items": same_items}


def batch_vs_loop(rec: Recommender, items: int, texts: int, rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Each batched call against its one-at-a-time loop (:func:`loop_vs_batch`): every user's
    top-K (``recommend_many``), the K most similar items of ``items`` items (``similar_many``;
    the whole catalog when smaller) and ``texts`` item titles as text queries (``search_texts``,
    when the directory has a text encoder and titles)."""
    users = list(rec.user_ids)
    rng = np.random.default_rng(seed)
    ids = rec.items.ids
    picked = ids if len(ids) <= items else [ids[i] for i in np.sort(rng.choice(len(ids), items, replace=False))]
    out = {
        "recommend": loop_vs_batch(lambda: [rec.recommend(u, K) for u in users], lambda: rec.recommend_many(users, K),
                                   len(users), rounds),
        "similar": loop_vs_batch(lambda: [rec.similar(i, K) for i in picked], lambda: rec.similar_many(picked, K),
                                 len(picked), rounds),
    }
    # similar() is similar_many() of one item: agreeing with it shows batching changes nothing, and
    # this shows that both return the exact ranking (or, with an approximate index, how much of it).
    out["similar"]["recall@10_vs_exact"] = round(exact_similar_recall(rec, picked), 4)
    titles = [rec.items.items[rec.items._pos[i]]["fields"].get("title") for i in ids[: texts]]
    if "text" in rec.items.manifest.get("encoders", {}) and titles and all(titles):
        out["search_text"] = loop_vs_batch(lambda: [rec.search_text(t, K) for t in titles],
                                           lambda: rec.search_texts(titles, K), len(titles), rounds)
    return out


# ------------------------------------------------------------------------------ CLI calls
def cli_commands(directory: Path, with_text: bool) -> dict[str, list[str]]:
    """Each timed command line (argv for ``python``), named."""
    rec = Recommender.load(directory, show_progress=False)
    user, item = str(rec.user_ids[0]), str(next(iter(rec.items._pos)))
    cli = ["-m", "mmrec.cli"]
    out = {
        "python -c 'import torch'": ["-c", "import torch"],
        "python -c 'import torch_geometric'": ["-c", "import torch_geometric"],
        "mmrec recommend --user": [*cli, "recommend", "--index", str(directory), "--user", user, "-q"],
        "mmrec recommend --user, torch_geometric imported first": [
            "-c", "import sys, torch_geometric; from mmrec.cli import main; "
                  f"sys.exit(main(['recommend', '--index', {str(directory)!r}, '--user', {user!r}, '-q']))"],
        "mmrec recommend --history": [*cli, "recommend", "--index", str(directory), "--history", item, "-q"],
        "mmrec similar": [*cli, "similar", "--index", str(directory), "--item", item, "-q"],
    }
    if with_text:
        out["mmrec search --text"] = [*cli, "search", "--index", str(directory), "--text", "space adventure", "-q"]
    return out


def cli_calls(commands: dict[str, list[str]], repeats: int) -> dict[str, Any]:
    """Run every command ``repeats`` rounds, in turn; median and all wall seconds per command."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(round(time.perf_counter() - t, 2))
    return {name: {"median_s": float(np.median(s)), "runs_s": s} for name, s in seconds.items()}


# ------------------------------------------------------------------------------ report
def markdown(results: dict[str, Any]) -> str:
    lines = ["# Serving latency (`scripts/bench_serve.py`)", "",
             f"One request at a time, in one process after `Recommender.load`, k = {K}. `first` is the first call "
             "of its kind (the fold-in builds its Gram matrix then, a text search loads its encoder); p50 / p99 "
             "over the calls after it. `HTTP GET` rows: the same requests to `mmrec serve`'s server, run in a "
             "thread of the same process, from one keep-alive connection (client, JSON and HTTP included).", ""]
    for name, d in results["directories"].items():
        lines += [directory_heading(name, d), "",
                  f"Loaded in {d['load_ms']:.0f} ms. `recommend` recall@10 against the exact ranking of the same "
                  f"vectors: {d['recall@10_vs_exact']:.4f}"
                  + (f"; `similar_many`'s: {d['batch']['similar']['recall@10_vs_exact']:.4f} (the items of the "
                     "batched rows below)" if "recall@10_vs_exact" in d.get("batch", {}).get("similar", {}) else "")
                  + ".", "",
                  "| request | first ms | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|"]
        for kind, r in (d["requests"] | d.get("http", {})).items():
            lines.append(f"| {kind} | {r['first_ms']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |")
        if "recommend" in d.get("batch", {}):  # (entries of runs before the batched item queries had one line)
            what = {"recommend": (f"every user's top {K}", "users", "`recommend`", "`recommend_many`"),
                    "similar": (f"the {K} items most similar to each item", "items", "`similar`", "`similar_many`"),
                    "search_text": ("item titles as text queries", "queries", "`search_text`", "`search_texts`")}
            lines += ["", "Batched calls against one call at a time (median of 3 alternating rounds; batches of 1024):",
                      "", "| request | count | one at a time /s | batched /s | speed-up | results |",
                      "|---|---:|---:|---:|---:|---|"]
            for kind, bt in d["batch"].items():
                label, unit, one, many = what[kind]
                agree = "identical" if bt["identical"] else "same items" if bt["same_items"] else "NOT the same items"
                lines.append(f"| {label}: {one} / {many} | {bt['queries']:,} {unit} | {bt['loop_per_s']:,.0f} | "
                             f"{bt['batch_per_s']:,.0f} | **{bt['speed_up']:.1f}x** | {agree} |")
        if d.get("cli"):
            lines += ["", f"Each command as a fresh process, median of {d['cli_repeats']} rounds run in turn:", "",
                      "| command | median s | runs s |", "|---|---:|---|"]
            for cmd, r in d["cli"].items():
                lines.append(f"| {cmd} | {r['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in r['runs_s'])} |")
        lines += ["", machine_note(d), ""]
    return "\n".join(lines)


def directory_heading(name: str, d: dict[str, Any]) -> str:
    """The markdown heading of one directory's tables: its items, users, model and index."""
    return f"## {name}: {d['items']:,} items, {d['users']:,} users, {d['built']['model']}, index `{d['factory']}`"


def machine_note(d: dict[str, Any]) -> str:
    """The markdown line under a directory's tables: machine, threads, build time, command."""
    m, b = d["machine"], d["built"]
    return (f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start), "
            f"torch {m['torch']}, Python {m['python']}; torch and FAISS with {d['threads']} thread(s). "
            f"Built in {b['build_seconds']:.0f} s ({b['epochs']} epoch(s)). Command: `{d['command']}`")


def add_synthetic_options(p: argparse.ArgumentParser) -> None:
    """The synthetic directory's size options (:func:`write_synthetic`)."""
    p.add_argument("--items", type=int, default=200_000, help="synthetic catalog size (default 200,000)")
    p.add_argument("--users", type=int, default=20_000, help="synthetic users (default 20,000)")
    p.add_argument("--per-user", type=int, default=50, help="synthetic interactions per user (default 50)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--directories", nargs="+", default=list(DIRECTORIES), choices=DIRECTORIES)
    p.add_argument("--epochs", type=int, default=20, help="ml100k-plus training epochs at most (default 20)")
    add_synthetic_options(p)
    p.add_argument("--requests", type=int, default=300, help="timed calls per kind of request (default 300)")
    p.add_argument("--cli-repeats", type=int, default=3, help="rounds of CLI calls, 0 for none (default 3)")
    p.add_argument("--batch-items", type=int, default=20_000,
                   help="items whose similar items are fetched one at a time and batched (default 20,000)")
    p.add_argument("--batch-texts", type=int, default=500,
                   help="item titles sent as text queries one at a time and batched (default 500)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_serve.py", args, argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    out: dict[str, Any] = {}
    with feature_cache(args.cache_dir) as cache, tempfile.TemporaryDirectory() as work:
        for name in args.directories:
            print(f"{name}: building", flush=True)
            directory, built = build(name, args, Path(work), cache)
            out[name] = requests(directory, args.requests, seed=0, batch_items=args.batch_items,
                                 batch_texts=args.batch_texts) | {"built": built}
            if args.cli_repeats:
                with_text = "search, text (an item's title)" in out[name]["requests"]
                out[name]["cli"] = cli_calls(cli_commands(directory, with_text), args.cli_repeats)
                print(f"  cli: {out[name]['cli']}", flush=True)

    for entry in out.values():
        entry |= {"threads": args.threads, "cli_repeats": args.cli_repeats, "machine": machine, "command": command}

    def update(old: dict[str, Any] | None) -> dict[str, Any]:
        merged = old or {"directories": {}}  # a run of some directories keeps the others' entries
        merged["directories"].update(out)
        return merged

    update_results(Path(args.out), "serve", update, markdown)
    print(markdown({"directories": out}))


if __name__ == "__main__":
    main()
