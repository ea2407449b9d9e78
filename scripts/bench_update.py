"""A nightly catalog sync: ``mmrec index update`` on a product export with pictures.

A shop re-exports its whole catalog every night (``item_id,title,price,image``, one JPEG per
product) and runs ``mmrec index update --catalog export.csv`` on the index built from it. Most
rows are unchanged; a few prices and a few pictures change. Before anything is encoded, every
image the file names is checked (it exists and decodes). ``index add`` / ``update`` pass the
index's stored image hashes to the catalog reader (``load_catalog(checked_images=...)``), so an
image whose bytes the index already holds is read to hash it, not decoded again.

This script builds a content index of ``--items`` synthetic products (photo-sized JPEGs,
``--width`` x ``--height``; no real pictures ship with the project) with the packaged encoders
(all-MiniLM-L6-v2, EfficientNet-Lite0), then times, side by side in one process, each night
with the stored hashes passed (what the commands do) and with none (every image decoded, as
before), on a fresh copy of the index each round:

* ``unchanged``: the same export again (nothing is written);
* ``prices``: ``--changed`` of the prices changed (fields only: nothing is encoded);
* ``pictures``: ``--changed`` of the pictures replaced by new files (those items re-encoded).

It also times the catalog read alone (the image check is most of it), and checks that both
ways give the same index (vectors and fields). Run from the project root:

    .venv/bin/python scripts/bench_update.py --items 1000 --rounds 3     # the committed run
    .venv/bin/python scripts/bench_update.py --items 100 --rounds 1 --out bench-quick

Writes ``update.json`` and ``update.md`` to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mmrec.catalog import load_catalog  # noqa: E402
from mmrec.item_index import ItemIndex  # noqa: E402
from machine import add_run_options, begin_run, update_results  # noqa: E402

WORDS = ["linen", "oak", "travel", "kids", "winter", "steel", "garden", "wool", "leather", "desk", "lamp", "mug",
         "boots", "shirt", "chair", "kettle", "blanket", "bag", "clock", "vase"]


def photo(path: Path, rng: np.random.Generator, width: int, height: int) -> None:
    """A photo-sized JPEG: a smooth gradient with noise, so it compresses as a photo does."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-0.3, 0.3, (2, 3))
    img = base + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=85)


def write_export(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["item_id", "title", "price", "image"])
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--changed", type=float, default=0.01, help="share of the rows changed in a night (default 0.01)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rounds", type=int, default=3)
    add_run_options(p)
    args = p.parse_args(argv)
    command, machine = begin_run("bench_update.py", args, argv)
    logging.getLogger("mmrec").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "img").mkdir()
        rows = []
        for k in range(args.items):
            photo(tmp / "img" / f"p{k}.jpg", rng, args.width, args.height)
            title = " ".join(rng.choice(WORDS, 3))
            rows.append({"item_id": f"p{k}", "title": title, "price": f"{rng.integers(5, 200)}.99",
                         "image": f"img/p{k}.jpg"})
        write_export(tmp / "export.csv", rows)
        jpeg_kb = float(np.mean([(tmp / "img" / f"p{k}.jpg").stat().st_size for k in range(min(50, args.items))]) / 1024)
        cache = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
        t0 = time.perf_counter()
        ItemIndex.build(tmp / "export.csv", tmp / "index", text_fields=["title"], factory="Flat", cache_dir=cache,
                        show_progress=False)
        build_s = time.perf_counter() - t0

        n = max(1, int(round(args.changed * args.items)))
        picked = rng.choice(args.items, n, replace=False)
        nights = {"unchanged": [dict(r) for r in rows], "prices": [dict(r) for r in rows],
                  "pictures": [dict(r) for r in rows]}
        for k in picked:
            nights["prices"][k]["price"] = "1.00"
            photo(tmp / "img" / f"new{k}.jpg", rng, args.width, args.height)
            nights["pictures"][k]["image"] = f"img/new{k}.jpg"
        for name, night in nights.items():
            write_export(tmp / f"{name}.csv", night)

        stored = {it["hashes"]["image"] for it in ItemIndex.load(tmp / "index", show_progress=False).items}
        read = {}
        for label, known in (("stored hashes", stored), ("every image decoded", ())):
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                load_catalog(tmp / "unchanged.csv", text_fields=["title"], show_progress=False, checked_images=known)
                times.append(time.perf_counter() - t0)
            read[label] = statistics.median(times)

        results: dict[str, Any] = {}
        for name in nights:
            times: dict[str, list[float]] = {"stored hashes": [], "every image decoded": []}
            outcome: dict[str, Any] = {}
            for _ in range(args.rounds):
                for label, opts in (("stored hashes", {}), ("every image decoded", {"checked_images": ()})):
                    work = tmp / f"work-{label.replace(' ', '_')}"
                    shutil.rmtree(work, ignore_errors=True)
                    shutil.copytree(tmp / "index", work)
                    idx = ItemIndex.load(work, show_progress=False)
                    t0 = time.perf_counter()
                    counts = idx.update(tmp / f"{name}.csv", cache_dir=cache, **opts)
                    times[label].append(time.perf_counter() - t0)
                    outcome[label] = (counts, idx.vectors.copy(), [it["fields"] for it in idx.items])
            a, b = outcome["stored hashes"], outcome["every image decoded"]
            same = a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
            if not same:
                raise SystemExit(f"{name}: the two ways gave different indexes")
            med = {label: statistics.median(t) for label, t in times.items()}
            results[name] = {"counts": a[0], "seconds": med,
                             "ratio": med["every image decoded"] / med["stored hashes"], "same_index": same}

    entry = {"command": command, "machine": machine, "run": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "wall_s": round(time.time() - started, 1), "items": args.items, "changed": n,
             "image": {"width": args.width, "height": args.height, "mean_kb": round(jpeg_kb, 1)},
             "build_s": round(build_s, 2), "rounds": args.rounds,
             "catalog_read_s": {k: round(v, 3) for k, v in read.items()}, "nights": results}
    update_results(Path(args.out), "update", lambda old: entry, markdown)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Nightly catalog sync benchmark (scripts/bench_update.py)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (load average {m['load_average']} at start), torch {m['torch']} "
        f"with {m['torch_threads']} thread(s). Run {r['run']}, {r['wall_s']} s wall.", "",
        f"{r['items']:,} products, one {r['image']['width']} x {r['image']['height']} JPEG each "
        f"({r['image']['mean_kb']} KB on average); index built in {r['build_s']} s (packaged encoders, Flat). A night "
        f"changes {r['changed']} row(s). Median of {r['rounds']} round(s), each on a fresh copy of the index; both "
        "ways gave the same index every night.", "",
        "| night | counts | stored hashes passed (s) | every image decoded (s) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for name, n in r["nights"].items():
        c = n["counts"]
        lines.append(f"| {name} | {c['updated']} updated, {c['content']} new content, {c['unchanged']} unchanged | "
                     f"{n['seconds']['stored hashes']:.2f} | {n['seconds']['every image decoded']:.2f} | "
                     f"{n['ratio']:.1f}x |")
    read = r["catalog_read_s"]
    lines += ["", f"The catalog read alone (load_catalog of the unchanged export): {read['stored hashes']:.3f} s with "
              f"the stored hashes, {read['every image decoded']:.3f} s decoding every image.", "",
              f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
