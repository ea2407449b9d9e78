"""The mmrec demo on MovieLens-100k (shipped inside the recbole wheel; no network needed).

Builds an item index over the 1,682 movies with the packaged MiniLM text encoder, then asks for
movies similar to Toy Story and for a free-text query; then trains the fused graph recommender
on the ratings for a short budget (per-user random 80/10/10 split) with three movies held out of
the catalog, prints its test metrics, adds the held-out movies to the trained index through the
content path (``mmrec index add``: no retraining), finds them by text and by similarity, and
prints one user's recommendations with explanations -- all through the real ``mmrec`` CLI.

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


HELD_OUT = (82, 172, 222)  # Jurassic Park, The Empire Strikes Back, Star Trek: First Contact


def write_movielens(out: Path) -> dict[str, Path]:
    """Write ML-100k as catalog CSVs and interaction TSVs, the formats users bring.

    ``items``/``inter``: everything; ``items_known``/``inter_known``: without the held-out movies;
    ``new_items``: the held-out movies alone (added later with ``mmrec index add``).
    """
    catalog, ratings = load_movielens_100k()
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in (("items", "items.csv"), ("inter", "interactions.tsv"),
                                          ("items_known", "items_known.csv"), ("new_items", "new_items.csv"),
                                          ("inter_known", "interactions_known.tsv"))}
    rows = [[iid, rec["title"], rec["genres"], rec["year"]] for iid, rec in zip(catalog.item_ids, catalog.records)]
    for key, keep in (("items", lambda r: True), ("items_known", lambda r: r[0] not in HELD_OUT),
                      ("new_items", lambda r: r[0] in HELD_OUT)):
        with open(paths[key], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "title", "genres", "year"])
            w.writerows(r for r in rows if keep(r))
    for key, keep in (("inter", lambda i: True), ("inter_known", lambda i: i not in HELD_OUT)):
        with open(paths[key], "w", encoding="utf-8") as f:
            f.write("user_id\titem_id\trating\ttimestamp\n")
            f.writelines(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings.tolist() if keep(i))
    print(f"MovieLens-100k: {len(catalog)} movies, {len(ratings)} ratings -> {out}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working directory (default demo_out)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    args = parser.parse_args()
    data = write_movielens(args.out / "ml-100k")
    index = str(args.out / "ml100k_index")
    run("index", "build", "--catalog", str(data["items"]), "--out", index, "--text-fields", "title,genres,year",
        "--overwrite")
    run("similar", "--index", index, "--item", "1", "-k", "10")  # Toy Story (1995)
    run("search", "--index", index, "--text", "space adventure with aliens", "-k", "10")

    model = str(args.out / "ml100k_model")
    run("train", "--catalog", str(data["items_known"]), "--interactions", str(data["inter_known"]), "--out", model,
        "--text-fields", "title,genres,year", "--epochs", str(args.epochs), "--lr", "0.005", "--overwrite")
    # Three movies the model never saw join the trained index from their text alone.
    run("index", "add", "--index", model, "--catalog", str(data["new_items"]))
    run("index", "info", "--index", model)
    run("search", "--index", model, "--text", "Jurassic Park (1993)", "-k", "5")
    run("similar", "--index", model, "--item", "172", "-k", "5")  # The Empire Strikes Back (1980)
    run("recommend", "--index", model, "--user", "1", "-k", "10", "--explain")
    # A visitor the model never trained on, known only by two movies: Star Wars and Toy Story.
    run("recommend", "--index", model, "--history", "50", "1", "-k", "5")
    # Only comedies from 1990 on (display fields of the catalog: genres is |-separated, year a number).
    run("recommend", "--index", model, "--user", "1", "-k", "5", "--where", "genres=Comedy", "--where", "year>=1990")


if __name__ == "__main__":
    main()
