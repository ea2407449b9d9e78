"""The mmrec demo on MovieLens-100k (shipped inside the recbole wheel; no network needed).

Builds an item index over the 1,682 movies with the packaged MiniLM text encoder, then asks for
movies similar to Toy Story and for a free-text query; then trains the fused graph recommender
on the ratings for a short budget (per-user random 80/10/10 split), prints its test metrics and
one user's recommendations -- all through the real ``mmrec`` CLI.

    make demo
    .venv/bin/python scripts/demo.py --out demo_out
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

from mmrec.cli import main as mmrec
from mmrec.movielens import load_movielens_100k


def run(*argv: str) -> None:
    print(f"\n$ mmrec {shlex.join(argv)}", flush=True)
    t = time.perf_counter()
    code = mmrec(list(argv))
    if code != 0:
        sys.exit(code)
    print(f"({time.perf_counter() - t:.1f} s)", flush=True)


def write_movielens(out: Path) -> tuple[Path, Path]:
    """Write ML-100k as a catalog CSV and an interactions TSV, the formats users bring."""
    catalog, ratings = load_movielens_100k()
    out.mkdir(parents=True, exist_ok=True)
    items, inter = out / "items.csv", out / "interactions.tsv"
    with open(items, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genres", "year"])
        for iid, rec in zip(catalog.item_ids, catalog.records):
            w.writerow([iid, rec["title"], rec["genres"], rec["year"]])
    with open(inter, "w", encoding="utf-8") as f:
        f.write("user_id\titem_id\trating\ttimestamp\n")
        f.writelines(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings.tolist())
    print(f"MovieLens-100k: {len(catalog)} movies, {len(ratings)} ratings -> {items}, {inter}")
    return items, inter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working directory (default demo_out)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    args = parser.parse_args()
    items, inter = write_movielens(args.out / "ml-100k")
    index = str(args.out / "ml100k_index")
    run("index", "build", "--catalog", str(items), "--out", index, "--text-fields", "title,genres,year", "--overwrite")
    run("similar", "--index", index, "--item", "1", "-k", "10")  # Toy Story (1995)
    run("search", "--index", index, "--text", "space adventure with aliens", "-k", "10")

    model = str(args.out / "ml100k_model")
    run("train", "--catalog", str(items), "--interactions", str(inter), "--out", model, "--text-fields",
        "title,genres,year", "--epochs", str(args.epochs), "--lr", "0.005", "--overwrite")
    run("recommend", "--index", model, "--user", "1", "-k", "10")


if __name__ == "__main__":
    main()
