from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models: thread start-up costs more than it saves, and tests run beside other work.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    """A CSV of ``rows`` with the columns ``fields``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_planted(tmp_path: Path, users: int = 48, items: int = 32, clusters: int = 4, seed: int = 0,
                  per_user: int = 6) -> tuple[Path, Path]:
    """A planted dataset: users of cluster c interact only with items of cluster c.

    Returns (interactions.tsv without a split column, features.npy whose rows encode the cluster).
    """
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(items) % clusters
    lines = ["user_id\titem_id"]
    for u in range(users):
        c = u % clusters
        pool = np.flatnonzero(item_cluster == c)
        for i in rng.choice(pool, size=min(per_user, len(pool)), replace=False):
            lines.append(f"u{u}\t{i}")
    inter = tmp_path / "interactions.tsv"
    inter.write_text("\n".join(lines) + "\n")
    feats = np.eye(clusters, dtype=np.float32)[item_cluster] + 0.05 * rng.normal(size=(items, clusters)).astype(np.float32)
    path = tmp_path / "content.npy"
    np.save(path, feats)
    return inter, path


# Tiny random encoders shared with the encoder tests (built once per session, no downloads).
from tests.encoders.conftest import (  # noqa: E402,F401
    image_paths, resnet18_weights, tiny_bert_dir, tiny_clip_text_dir, tiny_vit_dir,
)
