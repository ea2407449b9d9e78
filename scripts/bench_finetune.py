"""Encoder work of one ``--finetune top:N`` epoch: the whole text encoder per step against the top
N layers run from the cached states of the frozen ones.

On ml100k-plus's catalog (the text quality.py uses) with the packaged MiniLM, one epoch's encoder
work as the trainer does it: ``--steps`` calls of ``EncoderTuner.step_features`` (32 sampled
items re-encoded with gradients, then a backward pass) and the ``end_epoch`` re-encoding of the
catalog. Both variants run side by side in one process (``max_prefix_bytes`` 0 turns the cache
off) and must produce the same features (max abs difference reported). The one-off pass over the
frozen layers is timed apart. Writes ``--out``/finetune.json and .md.

Usage::

    .venv/bin/python scripts/bench_finetune.py --tops 1 --steps 37
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
from mmrec.encoder_tuning import EncoderTuner  # noqa: E402
from machine import add_run_options, begin_run, feature_cache, update_results  # noqa: E402
from quality import load_dataset  # noqa: E402


def epoch(tuner: EncoderTuner, features: torch.Tensor, steps: int, seed: int) -> tuple[float, torch.Tensor]:
    """Seconds of one epoch's encoder work and the refreshed features."""
    rng = np.random.default_rng(seed)
    feats = {"text": features.clone()}
    start = time.perf_counter()
    for _ in range(steps):
        items = np.unique(rng.integers(0, len(features), 2 * 2048))  # a batch's positives and negatives
        out = tuner.step_features(items, feats)
        out["text"].pow(2).sum().backward()
    tuner.end_epoch(feats)
    return time.perf_counter() - start, feats["text"]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# Encoder fine-tuning: one epoch's encoder work, whole encoder vs cached frozen layers", "",
             f"{results['items']} ml100k-plus texts, {results['model']}, {results['steps']} steps of 32 re-encoded "
             "items with gradients + the end-of-epoch re-encoding; one run, variants side by side.", "",
             "| mode | whole encoder s | cached frozen layers s | speed-up | one-off frozen pass s | states MB | "
             "max abs diff |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| top:{r['top']} | {r['full_seconds']:.1f} | {r['cached_seconds']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['prefix_seconds']:.1f} | {r['prefix_mb']:.0f} | {r['max_abs_diff']:.1e} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average']} at start), "
              f"torch {m['torch']} with {m['torch_threads']} thread(s).", "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--tops", nargs="+", type=int, default=[1], help="top:N modes measured")
    p.add_argument("--steps", type=int, default=37, help="steps per epoch (ml100k-plus: 75,000 / 2,048 = 37)")
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_finetune.py", args, argv)
    with feature_cache(args.cache_dir) as cache:
        content, _ = load_dataset(Path(args.data), "ml100k-plus", cache)
    features = torch.from_numpy(content.features["text"].copy())
    rows = []
    for top in args.tops:
        cfg = TrainConfig(finetune=f"top:{top}", seed=0)
        full = EncoderTuner(content, cfg, show_progress=False, max_prefix_bytes=0)
        full_s, full_out = epoch(full, features, args.steps, seed=top)
        start = time.perf_counter()
        cached = EncoderTuner(content, cfg, show_progress=False)
        prefix_s = time.perf_counter() - start
        if "text" not in cached.prefix:
            raise SystemExit("the cached path was not taken (see the log)")
        cached_s, cached_out = epoch(cached, features, args.steps, seed=top)
        row = {"top": top, "full_seconds": round(full_s, 2), "cached_seconds": round(cached_s, 2),
               "speedup": round(full_s / cached_s, 3), "prefix_seconds": round(prefix_s, 2),
               "prefix_mb": round(cached.prefix["text"].nbytes / 2**20, 1),
               "max_abs_diff": float((full_out - cached_out).abs().max())}
        rows.append(row)
        print(row, flush=True)
    # Both tuners drive the content's one encoder; no optimiser step runs, so its weights never change.
    results = {"items": int(len(features)), "model": content.encoder_objects["text"].name,
               "steps": args.steps, "rows": rows, "machine": machine, "command": command}
    update_results(Path(args.out), "finetune", lambda old: results, markdown)


if __name__ == "__main__":
    main()
