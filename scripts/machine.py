"""Pieces every benchmark script shares: the machine description, seed statistics, the stored
metrics, the command as run, the common run options and the locked JSON + markdown update of a
results file.

Imported by the scripts beside it (run as ``python scripts/NAME.py``, their folder is on
``sys.path``).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def median_seconds(call: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median seconds of ``rounds`` calls of ``call``, and the last call's result."""
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def brute_force_top(base: np.ndarray, queries: np.ndarray, k: int, keep: np.ndarray | None = None,
                    block: int = 128) -> list[set[int]]:
    """The ``k`` rows of ``base`` nearest each query by cosine (float32, exhaustive), among the
    rows ``keep`` (default all): the exact answer approximate searches are measured against."""
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    rows = np.arange(len(base)) if keep is None else np.asarray(keep, dtype=np.int64)
    unit = unit[rows]
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    kk = min(k, len(rows))
    out = []
    for start in range(0, len(q), block):
        sims = q[start : start + block] @ unit.T  # [B, C]
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < len(rows) else \
            np.tile(np.arange(len(rows)), (len(sims), 1))
        out += [set(rows[row].tolist()) for row in top]
    return out


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The options of the search benchmarks over clustered vectors (bench_exclude, bench_candidates)."""
    p.add_argument("--items", type=int, default=200_000, help="indexed vectors (default 200,000)")
    p.add_argument("--dim", type=int, default=64, help="their width (default 64)")
    p.add_argument("--queries", type=int, default=1024, help="queries per batched search (default 1024)")
    p.add_argument("--factories", nargs="+", default=["Flat", "IVF256,Flat", "HNSW32"])
    p.add_argument("--rounds", type=int, default=3, help="calls per timing, median kept (default 3)")


def built_indexes(args: argparse.Namespace) -> Iterator[tuple[str, Any, np.ndarray, np.ndarray]]:
    """``(factory, index, base, queries)`` for each of ``--factories``, built over ``--items``
    clustered vectors (one cluster per 1,000), ``--queries`` more of them as queries, FAISS on
    ``--threads`` threads."""
    import faiss

    from index import FaissIndex, clustered_vectors

    faiss.omp_set_num_threads(args.threads)
    x = clustered_vectors(args.items + args.queries, args.dim, n_clusters=max(1, args.items // 1000), seed=0)
    base, queries = x[: args.items], x[args.items :]
    for factory in args.factories:
        print(f"{factory}: building", flush=True)
        yield factory, FaissIndex.build(base, list(range(args.items)), factory, seed=0), base, queries


def set_recall(found: list[list[int]], truth: list[set[int]]) -> float:
    """Mean share of each query's true set that ``found`` holds."""
    return float(np.mean([len(set(f) & t) / max(len(t), 1) for f, t in zip(found, truth)]))


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """CPU, cores, torch threads and version, Python version, the load average right now and
    the CUDA GPU's name where torch sees one."""
    import torch

    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(),
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def pick_metrics(metrics: dict[str, float], *, users: bool = False) -> dict[str, float]:
    """The stored metrics (:data:`METRICS`, rounded to 6 places), plus ``num_users`` as an int
    when ``users`` is set and ``metrics`` has it."""
    out: dict[str, float] = {k: round(float(metrics[k]), 6) for k in METRICS}
    if users and "num_users" in metrics:
        out["num_users"] = int(metrics["num_users"])
    return out


UNSTORED_OPTIONS = ("--out", "--cache-dir", "--note")  # where files go changes no number; notes are kept apart


def command_line(script: str, argv: list[str]) -> str:
    """``python scripts/<script> ...`` as run, less the options in :data:`UNSTORED_OPTIONS`."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in UNSTORED_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in UNSTORED_OPTIONS)):
            kept.append(a)
    return " ".join([f"python scripts/{script}", *(shlex.quote(a) for a in kept)])


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--threads``, ``--cache-dir`` and ``--out``, as every quality script takes them."""
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: a temporary one)")
    p.add_argument("--out", default="benchmarks/results", help="output folder")


def begin_run(script: str, args: argparse.Namespace, argv: list[str] | None) -> tuple[str, dict[str, Any]]:
    """Set torch's threads (``args.threads``) and warning-level logging; return the command line
    to store (:func:`command_line`) and the machine at the start (:func:`describe_machine`)."""
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    return command_line(script, argv if argv is not None else sys.argv[1:]), describe_machine()


@contextlib.contextmanager
def feature_cache(cache_dir: str | None) -> Iterator[Path]:
    """The ``--cache-dir`` folder, or a temporary one removed on exit."""
    if cache_dir:
        yield Path(cache_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)


def update_results(out_dir: Path, stem: str, update: Callable[[dict[str, Any] | None], dict[str, Any]],
                   markdown: Callable[[dict[str, Any]], str]) -> None:
    """Rewrite ``<stem>.json`` as ``update(old or None)`` and ``<stem>.md`` from it.

    Runs under a lock on the folder itself (runs may write in parallel; no lock file is left
    behind); the JSON goes to a temporary file first and is renamed into place.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = out_dir / f"{stem}.json"
        results = update(json.loads(path.read_text()) if path.exists() else None)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(path)
        (out_dir / f"{stem}.md").write_text(markdown(results))
    finally:
        os.close(fd)  # releases the lock
