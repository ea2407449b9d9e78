"""Forward + backward time of full-graph LightGCN propagation: edge_index message passing vs sparse.

Times 3-layer propagation (dim 64) over the train graphs of ml100k-plus, tiktok and amazon-baby
for every way of running it, side by side in one process (rounds interleave the variants and
the thread counts, so machine noise hits all of them alike; medians are reported):

- ``edge_index``: ``LGConv(normalize=False)`` gather / scatter message passing on the cached
  normalised weights (``GraphPropagation``'s previous implementation);
- ``lgconv_csr`` / ``lgconv_coo``: ``LGConv(normalize=False)`` given the sparse ``adj_t``;
- ``sparse_mm_csr`` / ``sparse_mm_coo``: ``torch.sparse.mm(adj_t, x)`` with torch's backward;
- ``graph_propagation``: ``fusion.propagation.GraphPropagation`` as shipped (cached CSR
  adjacency, backward through the cached transpose).

Every variant's output and input gradient are checked against ``edge_index``. Then it times a
whole ``Trainer.step`` (ID-only LightGCN, default config) on ml100k-plus with the propagation
module swapped between the two ``GraphPropagation`` paths.

    .venv/bin/python scripts/bench_propagation.py
    .venv/bin/python scripts/bench_propagation.py --data ../shared/data --repeats 9 --threads 1,2
    .venv/bin/python scripts/bench_propagation.py --datasets ml100k-plus --repeats 3 --no-step
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch_geometric
from torch import Tensor
from torch_geometric.nn import LGConv

from fusion.propagation import GraphPropagation
from mmrec.config import TrainConfig
from mmrec.graph import build_edge_index
from mmrec.interactions import Interactions, load_interactions
from mmrec.train import Trainer, TrainData, build_model
from machine import cpu_model  # noqa: E402  (scripts/machine.py)

DATASETS = ("ml100k-plus", "tiktok", "amazon-baby")
BASELINE = "edge_index"
NEW = "graph_propagation"


class EdgeIndexPropagation(GraphPropagation):
    """``GraphPropagation`` forced onto its message-passing path (the previous implementation)."""

    def _use_sparse(self, x: Tensor, edge_weight: Tensor | None) -> bool:
        return False


def load_train(data: Path, name: str) -> tuple[Interactions, Tensor]:
    inter = load_interactions(data / name / "interactions.tsv")
    train = inter.split_mask("train")
    edge_index = build_edge_index(inter.users[train], inter.items[train], inter.num_users, num_items=inter.num_items)
    return inter, edge_index


def layer_mean(step: Callable[[Tensor], Tensor], x: Tensor, layers: int) -> Tensor:
    out = x
    for _ in range(layers):
        x = step(x)  # [U+N, D]
        out = out + x
    return out / (layers + 1)


def variants(edge_index: Tensor, num_nodes: int, layers: int) -> dict[str, Callable[[Tensor], Tensor]]:
    new = GraphPropagation(layers)
    old = EdgeIndexPropagation(layers)
    adj_t = new.normalized_adjacency(edge_index, num_nodes)  # [U+N, U+N] CSR
    coo = adj_t.to_sparse_coo()
    conv = LGConv(normalize=False)
    return {
        BASELINE: lambda x: old(x, edge_index),
        "lgconv_csr": lambda x: layer_mean(lambda h: conv(h, adj_t), x, layers),
        "lgconv_coo": lambda x: layer_mean(lambda h: conv(h, coo), x, layers),
        "sparse_mm_csr": lambda x: layer_mean(lambda h: torch.sparse.mm(adj_t, h), x, layers),
        "sparse_mm_coo": lambda x: layer_mean(lambda h: torch.sparse.mm(coo, h), x, layers),
        NEW: lambda x: new(x, edge_index),
    }


def time_fwd_bwd(fn: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = fn(x)
    t1 = time.perf_counter()
    torch.autograd.grad(out, x, grad)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def ms(values: list[float]) -> float:
    return round(1e3 * statistics.median(values), 2)


def bench_propagation(
    data: Path, name: str, dim: int, layers: int, repeats: int, threads: list[int]
) -> dict:
    inter, edge_index = load_train(data, name)
    num_nodes = inter.num_users + inter.num_items
    fns = variants(edge_index, num_nodes, layers)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_nodes, dim, generator=g).requires_grad_()  # [U+N, D]
    grad = torch.randn(num_nodes, dim, generator=g)  # [U+N, D] upstream gradient

    ref_out = fns[BASELINE](x)
    (ref_grad,) = torch.autograd.grad(ref_out, x, grad)
    ref_out = ref_out.detach()
    check = {}
    for v, fn in fns.items():  # also the warm-up: caches built, kernels touched
        out = fn(x)
        (gx,) = torch.autograd.grad(out, x, grad)
        out = out.detach()
        check[v] = {
            "max_abs_diff_out": float((out - ref_out).abs().max()),
            "max_abs_diff_grad": float((gx - ref_grad).abs().max()),
        }

    times: dict[int, dict[str, list[tuple[float, float]]]] = {t: {v: [] for v in fns} for t in threads}
    for _ in range(repeats):
        for t in threads:
            torch.set_num_threads(t)
            for v, fn in fns.items():
                times[t][v].append(time_fwd_bwd(fn, x, grad))

    result = {
        "users": inter.num_users,
        "items": inter.num_items,
        "nodes": num_nodes,
        "directed_edges": int(edge_index.size(1)),
        "check_vs_edge_index": check,
        "threads": {},
    }
    for t in threads:
        rows = {}
        for v, pairs in times[t].items():
            rows[v] = {
                "forward_ms": ms([f for f, _ in pairs]),
                "backward_ms": ms([b for _, b in pairs]),
                "total_ms": ms([f + b for f, b in pairs]),
                "total_ms_all": [round(1e3 * (f + b), 2) for f, b in pairs],
            }
        base = rows[BASELINE]["total_ms"]
        for row in rows.values():
            row["speedup_vs_edge_index"] = round(base / row["total_ms"], 2)
        result["threads"][str(t)] = rows
    return result


def bench_step(data: Path, repeats: int, threads: list[int]) -> dict:
    inter, _ = load_train(data, "ml100k-plus")
    cfg = TrainConfig(use_content=False)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, inter.num_users, inter.num_items, {})
    trainer = Trainer(model, TrainData(inter), cfg, show_progress=False)
    rng = np.random.default_rng(0)
    batch = rng.choice(len(trainer.train_users), size=cfg.batch_size, replace=False)
    users, items = trainer.train_users[batch], trainer.train_items[batch]
    paths = {BASELINE: EdgeIndexPropagation(cfg.layers), NEW: GraphPropagation(cfg.layers)}
    for module in paths.values():  # warm-up: each path's cache built once, as in training
        model.propagation = module
        trainer.step(users, items)
    times: dict[int, dict[str, list[float]]] = {t: {p: [] for p in paths} for t in threads}
    for _ in range(repeats):
        for t in threads:
            torch.set_num_threads(t)
            for p, module in paths.items():
                model.propagation = module
                t0 = time.perf_counter()
                trainer.step(users, items)
                times[t][p].append(time.perf_counter() - t0)
    out = {"dataset": "ml100k-plus", "batch_size": cfg.batch_size, "dim": cfg.dim, "layers": cfg.layers, "threads": {}}
    for t in threads:
        rows = {p: {"step_ms": ms(v), "step_ms_all": [round(1e3 * s, 2) for s in v]} for p, v in times[t].items()}
        rows[NEW]["speedup_vs_edge_index"] = round(rows[BASELINE]["step_ms"] / rows[NEW]["step_ms"], 2)
        out["threads"][str(t)] = rows
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Full-graph LightGCN propagation: forward + backward",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs; load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end); torch {m['torch']}, "
        f"torch_geometric {m['torch_geometric']}, default torch threads {m['default_threads']}.",
        f"{result['config']['layers']} layers, dim {result['config']['dim']}, float32; medians of "
        f"{result['config']['repeats']} interleaved repeats, milliseconds.",
        "",
        "| dataset | nodes | edges | threads | variant | forward | backward | total | speed-up vs edge_index |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in result["propagation"].items():
        for t, rows in r["threads"].items():
            for v, row in rows.items():
                lines.append(
                    f"| {name} | {r['nodes']} | {r['directed_edges']} | {t} | {v} | {row['forward_ms']} | "
                    f"{row['backward_ms']} | {row['total_ms']} | {row['speedup_vs_edge_index']}x |"
                )
    step = result.get("trainer_step")
    if step:
        lines += [
            "",
            f"`Trainer.step` on {step['dataset']} (ID-only LightGCN, batch {step['batch_size']}, "
            f"dim {step['dim']}, {step['layers']} layers), milliseconds:",
            "",
            "| threads | edge_index path | graph_propagation | speed-up |",
            "|---:|---:|---:|---:|",
        ]
        for t, rows in step["threads"].items():
            lines.append(
                f"| {t} | {rows[BASELINE]['step_ms']} | {rows[NEW]['step_ms']} | {rows[NEW]['speedup_vs_edge_index']}x |"
            )
    worst = max(
        max(c["max_abs_diff_out"], c["max_abs_diff_grad"])
        for r in result["propagation"].values()
        for c in r["check_vs_edge_index"].values()
    )
    lines += ["", f"Largest |difference| from edge_index over all variants, outputs and gradients: {worst:.3g}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the benchmark datasets")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated dataset folders")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant and thread count")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    parser.add_argument("--no-step", action="store_true", help="skip the Trainer.step timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/propagation"),
                        help="output path without suffix (.json and .md are written)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Converting sparse tensor to CSR")  # lgconv_coo, every call
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    threads = [int(t) for t in args.threads.split(",")]
    default_threads = torch.get_num_threads()
    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "default_threads": default_threads,
            "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        },
        "config": {"dim": args.dim, "layers": args.layers, "repeats": args.repeats, "threads": threads},
        "propagation": {},
    }
    for name in args.datasets.split(","):
        print(f"propagation: {name}", flush=True)
        r = bench_propagation(args.data, name, args.dim, args.layers, args.repeats, threads)
        result["propagation"][name] = r
        for t, rows in r["threads"].items():
            for v, row in rows.items():
                print(f"  threads={t} {v:18s} fwd {row['forward_ms']:9.1f} ms  bwd {row['backward_ms']:9.1f} ms  "
                      f"total {row['total_ms']:9.1f} ms  x{row['speedup_vs_edge_index']}", flush=True)
    if not args.no_step:
        print("Trainer.step: ml100k-plus", flush=True)
        result["trainer_step"] = bench_step(args.data, args.repeats, threads)
        for t, rows in result["trainer_step"]["threads"].items():
            print(f"  threads={t} edge_index {rows[BASELINE]['step_ms']:.1f} ms  "
                  f"graph_propagation {rows[NEW]['step_ms']:.1f} ms  x{rows[NEW]['speedup_vs_edge_index']}", flush=True)
    torch.set_num_threads(default_threads)
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
