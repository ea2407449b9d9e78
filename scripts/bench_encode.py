"""Encoding throughput: the batched encoders vs a naive one-item-at-a-time loop, same models.

Text: the packaged all-MiniLM-L6-v2 on real movie texts from ``ml100k-plus/items.csv``: title +
plot summary (long), and the title alone (short). Batched = ``TextEncoder.encode`` (length-sorted dynamic padding,
batches of 64). Naive = what one writes first: tokenize one text, run the model, mean-pool,
normalise, repeat.

Images: the packaged EfficientNet-Lite0 on synthetic JPEGs (200-320 px drawings written to a
temp dir; no real images ship with the project). Batched = ``ImageEncoder.encode_paths``
(DataLoader decoding workers, batches of 32). Naive = open, transform and run one image at a
time.

Both sides of each pair run in the same process, after a short warm-up, alternating over the
same items in ``--rounds`` slices, and their vectors are compared (max abs difference) so the
speed-up is not bought with different outputs. Run from the project root:

    .venv/bin/python scripts/bench_encode.py --threads 1,2 --n-text 500 --n-image 128   # the committed run
    .venv/bin/python scripts/bench_encode.py --data ../shared/data --n-text 1000 --n-image 192
    .venv/bin/python scripts/bench_encode.py --n-text 32 --n-image 16 --out bench-quick   # quick look

Writes ``encode.json`` and ``encode.md`` to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from encoders.image import ImageEncoder, load_rgb  # noqa: E402
from encoders.text import TextEncoder, mean_pool  # noqa: E402
from machine import cpu_model  # noqa: E402  (scripts/machine.py)


def machine_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def load_texts(data: Path, n: int) -> tuple[list[str], list[str]]:
    """(title + plot summary, title alone) for the first ``n`` movies."""
    path = data / "ml100k-plus" / "items.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data <folder holding ml100k-plus/items.csv>")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    if len(rows) < n:
        raise SystemExit(f"{path} has only {len(rows)} items, asked for --n-text {n}")
    return [f"{r['title']}. {r['summary']}".strip() for r in rows], [r["title"] for r in rows]


def synthetic_jpegs(directory: Path, n: int, seed: int = 0) -> list[str]:
    """Random drawings (gradient background, ellipses, rectangles, lines), 200-320 px a side."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(200, 321, 2))
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, h)[:, None, None]  # [h, 1, 1]
        background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)  # [h, 1, 3]
        img = Image.fromarray(np.broadcast_to(background, (h, w, 3)).copy())
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=color)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=color)
            else:
                draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(2, 10)))
        path = directory / f"img_{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def naive_text(enc: TextEncoder, texts: list[str]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for text in texts:
            inputs = enc.tokenizer(text, truncation=True, max_length=enc.max_length, return_tensors="pt")
            hidden = enc.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            out.append(F.normalize(mean_pool(hidden, inputs["attention_mask"]), dim=-1)[0].numpy())  # [D_t]
    return np.stack(out)


def naive_image(model: torch.nn.Module, transform, paths: list[str]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for path in paths:
            pixels = transform(load_rgb(path)).unsqueeze(0)  # [1, 3, 224, 224]
            out.append(F.normalize(model(pixels), dim=-1)[0].numpy())  # [D_v]
    return np.stack(out)


def timed(fn, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def pair(name: str, model: str, n: int, batched, naive, items: list, batch_size: int, rounds: int) -> dict:
    """Time both ways over the same items, interleaved in ``rounds`` slices.

    Interleaving spreads load changes on a shared machine over both sides instead of letting
    them land on whichever ran second.
    """
    naive(items[:4]), batched(items[:8])  # warm-up: first-call allocations, worker start paths
    fast, slow, t_fast, t_slow = [], [], 0.0, 0.0
    for part in np.array_split(np.arange(n), rounds):
        chunk = [items[i] for i in part]
        v, t = timed(batched, chunk)
        fast.append(v)
        t_fast += t
        v, t = timed(naive, chunk)
        slow.append(v)
        t_slow += t
    fast, slow = np.concatenate(fast), np.concatenate(slow)
    row = {
        "modality": name,
        "threads": torch.get_num_threads(),
        "model": model,
        "items": n,
        "batch_size": batch_size,
        "rounds": rounds,
        "batched_s": round(t_fast, 3),
        "naive_s": round(t_slow, 3),
        "batched_items_per_s": round(n / t_fast, 1),
        "naive_items_per_s": round(n / t_slow, 1),
        "speedup": round(t_slow / t_fast, 2),
        "max_abs_diff": float(np.abs(fast - slow).max()),
    }
    print(
        f"{name:6s} {model:18s} threads={row['threads']} n={n:5d}  batched {row['batched_items_per_s']:8.1f}/s  "
        f"naive {row['naive_items_per_s']:7.1f}/s  x{row['speedup']:.2f}  max|diff| {row['max_abs_diff']:.1e}"
    )
    return row


def write_results(out: Path, info: dict, rows: list[dict], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "data")}  # no machine paths
    payload = {"machine": info, "settings": settings, "results": rows}
    (out / "encode.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Encoding throughput: batched pipeline vs one item at a time",
        "",
        f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']}, load average {info.get('load_average_1m_at_start', 'n/a')} at start "
        "(shared machine).",
        "",
        "| modality | model | torch threads | items | batch | batched items/s | naive items/s | speed-up "
        "| >= 3x | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['modality']} | {r['model']} | {r['threads']} | {r['items']} | {r['batch_size']} | "
            f"{r['batched_items_per_s']} | {r['naive_items_per_s']} | {r['speedup']}x | "
            f"{'yes' if r['speedup'] >= 3 else 'no'} | {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        "Text: ml100k-plus title + plot summary, truncated at max_length 256; title: the movie title "
        "alone (short, like a search query). Image batch = decoded batch (the model sees slices of 8 on "
        "CPU). Images: synthetic 200-320 px JPEGs, "
        "decoded by the DataLoader workers in the batched run. Batched and naive runs alternate over "
        "the same items in `rounds` slices; max abs diff compares their vectors. Produced by "
        "`scripts/bench_encode.py`.",
        "",
    ]
    (out / "encode.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with ml100k-plus/")
    parser.add_argument("--n-text", type=int, default=1000, help="texts to encode")
    parser.add_argument("--n-image", type=int, default=192, help="synthetic images to encode")
    parser.add_argument("--text-batch-size", type=int, default=64)
    parser.add_argument("--image-batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding workers (batched run)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved batched/naive slices per modality")
    parser.add_argument(
        "--threads", default=None,
        help="comma-separated torch intra-op thread counts to run in turn, e.g. 2,1 (default: torch's own)",
    )
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-image", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]

    info = machine_info()
    print(f"machine: {info['cpu']} | {info['logical_cores']} cores | torch {info['torch']} | "
          f"load {info.get('load_average_1m_at_start')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_text:
            texts, titles = load_texts(args.data, args.n_text)
            text_enc = TextEncoder(batch_size=args.text_batch_size, show_progress=False)
        if not args.skip_image:
            paths = synthetic_jpegs(Path(tmp), args.n_image)
            image_enc = ImageEncoder(
                batch_size=args.image_batch_size, num_workers=args.num_workers, show_progress=False
            )
            # The naive loop gets the same weights in PyTorch's default memory layout, as loaded.
            plain = copy.deepcopy(image_enc.model).to(memory_format=torch.contiguous_format)
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            if not args.skip_text:
                naive = functools.partial(naive_text, text_enc)
                for name, items in (("text", texts), ("title", titles)):
                    rows.append(pair(name, text_enc.name, len(items), text_enc.encode, naive, items,
                                     args.text_batch_size, args.rounds))
            if not args.skip_image:
                naive = functools.partial(naive_image, plain, image_enc.transform)
                rows.append(pair("image", image_enc.name, len(paths), image_enc.encode_paths, naive, paths,
                                 args.image_batch_size, args.rounds))
    write_results(args.out, info, rows, args)
    print(f"wrote {args.out / 'encode.json'} and {args.out / 'encode.md'}")


if __name__ == "__main__":
    main()
