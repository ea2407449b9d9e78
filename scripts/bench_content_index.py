"""The untrained content index with and without centring, side by side on the benchmark data.

``mmrec index build`` measures content similarity from each modality's catalog mean
(``fusion.fixed.modality_centers``; ``--no-center`` for the plain encoder cosine). This script
measures what that does, in one run, on ``--data`` (default ``../shared/data``):

* ``history`` -- each user is the mean of their training items' index vectors and every item is
  ranked by inner product: what the content alone says about a user's next items (the given
  test split, training items masked; MMRec's convention, as ``scripts/quality.py``'s content
  index row);
* ``cold`` -- ``scripts/quality_cold.py``'s cold-start check: 20% of the items held out (seed
  0), users = mean of their warm training items, only the held-out items ranked, for the users
  who had them (cold R@20 over all held-out items, and over each seeded half).

Both variants use exactly the same features, weights and users; only the centring differs. The
ml100k-plus text is encoded by the packaged MiniLM (cached with ``--cache-dir``); tiktok has
precomputed image and audio features. Results go to ``--out``/content_index.json and .md.

    .venv/bin/python scripts/bench_content_index.py
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
from mmrec.coldstart import hold_out_items, with_content, warm_part  # noqa: E402
from mmrec.metrics import evaluate  # noqa: E402
from machine import add_run_options, command_line, describe_machine, feature_cache, pick_metrics, update_results  # noqa: E402
from quality import load_dataset  # noqa: E402
from quality_cold import cold_metrics, cold_sets  # noqa: E402

DATASETS = ("ml100k-plus", "tiktok")
VARIANTS = ("plain", "centred")


def item_vectors(content: Any, centred: bool) -> np.ndarray:
    """``[N, sum D_m]`` vectors of the untrained index (equal weights), as ``mmrec index build`` makes
    them: not renormalised, so a modality an item lacks contributes zero."""
    centers = modality_centers(content.features, content.present) if centred else None
    return combine_modalities(content.features, content.present, order=sorted(content.features), centers=centers,
                              renormalize=False)


def user_means(train: Any, items: np.ndarray) -> torch.Tensor:
    """``[U, D]`` mean of each user's training items' vectors (zero for a user without any)."""
    counts = np.maximum(np.asarray(train.sum(axis=1)).ravel(), 1.0)  # [U]
    return torch.from_numpy(np.asarray(train @ items, dtype=np.float32) / counts[:, None].astype(np.float32))


def run_dataset(name: str, root: Path, cache: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    content, inter = load_dataset(root, name, cache)
    held = hold_out_items(inter, 0.2, 0, with_content(content.present, inter.num_items))  # quality_cold's draw
    sets = cold_sets(inter, held, 0)
    out: dict[str, Any] = {"data": {"users": inter.num_users, "items": inter.num_items,
                                    "modalities": {m: int(x.shape[1]) for m, x in content.features.items()},
                                    "cold_items": int(held.sum())}}
    for variant in VARIANTS:
        start = time.perf_counter()
        items = item_vectors(content, variant == "centred")
        users = user_means(inter.user_items("train").astype(np.float32), items)
        item_t = torch.from_numpy(items)
        history = evaluate(lambda u: users[torch.as_tensor(u)] @ item_t.T, inter, split="test", mask="train")
        warm_users = user_means(warm_part(inter, held).user_items("train").astype(np.float32), items)
        out[variant] = {"history": pick_metrics(history),
                        "cold": cold_metrics(warm_users, item_t, inter, sets),
                        "seconds": round(time.perf_counter() - start, 1)}
        print(f"[{name}] {variant}: history R@20 {history['recall@20']:.4f} N@20 {history['ndcg@20']:.4f}; "
              f"cold R@20 {out[variant]['cold']['all']['recall@20']:.4f}", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Content index: plain cosine vs centred (scripts/bench_content_index.py)", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch "
             f"{results['machine']['torch']}.", "",
             "history = users' next items from the mean of their training items (given test split, train masked); "
             "cold = quality_cold's 20% held-out items (seed 0) ranked for the users who had them "
             "(all of them, and the validation / test halves).", "",
             "| dataset | variant | history R@20 | history N@20 | cold R@20 | cold N@20 | cold-valid R@20 | cold-test R@20 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, d in results["datasets"].items():
        for variant in VARIANTS:
            r = d[variant]
            lines.append(f"| {name} | {variant} | {r['history']['recall@20']:.4f} | {r['history']['ndcg@20']:.4f} | "
                         f"{r['cold']['all']['recall@20']:.4f} | {r['cold']['all']['ndcg@20']:.4f} | "
                         f"{r['cold']['valid']['recall@20']:.4f} | {r['cold']['test']['recall@20']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding the datasets (default ../shared/data)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    add_run_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    argv = sys.argv[1:] if argv is None else argv
    with feature_cache(args.cache_dir) as cache:
        datasets = {name: run_dataset(name, Path(args.data), cache) for name in args.datasets}
    results = {"command": command_line("bench_content_index.py", argv), "machine": describe_machine(),
               "datasets": datasets}
    update_results(Path(args.out), "content_index", lambda old: results, markdown)
    print(markdown(results))


if __name__ == "__main__":
    main()
