"""scripts/bench_serve.py: the synthetic data, the timing loop and the exact-recall check."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_serve  # noqa: E402
from mmrec.config import TrainConfig  # noqa: E402
from mmrec.item_index import Result  # noqa: E402
from mmrec.pipeline import fit  # noqa: E402
from mmrec.recommender import Recommender  # noqa: E402
from tests.mmrec.conftest import write_planted  # noqa: E402


def test_synthetic_interactions_are_distinct_per_user_and_seeded(tmp_path):
    path = bench_serve.write_synthetic(tmp_path / "a.tsv", items=50, users=7, per_user=6, seed=3)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert rows[0] == ["user_id", "item_id"] and len(rows) == 1 + 7 * 6
    by_user: dict[str, list[int]] = {}
    for u, i in rows[1:]:
        by_user.setdefault(u, []).append(int(i))
    assert sorted(by_user) == sorted(f"u{u}" for u in range(7))
    assert all(len(set(v)) == 6 and all(0 <= i < 50 for i in v) for v in by_user.values())
    again = bench_serve.write_synthetic(tmp_path / "b.tsv", items=50, users=7, per_user=6, seed=3)
    assert again.read_text() == path.read_text()
    # More per user than items: every item once.
    small = bench_serve.write_synthetic(tmp_path / "c.tsv", items=4, users=2, per_user=9, seed=0)
    assert len(small.read_text().splitlines()) == 1 + 2 * 4


def test_newer_items_are_never_known():
    rng = np.random.default_rng(0)
    items = list(range(20))
    for known in (set(range(0, 20, 2)), set(range(17)), set(range(20))):
        for _ in range(20):
            got = bench_serve.item_ids_outside(rng, items, known, 2)
            assert len(got) == min(2, 20 - len(known)) and len(set(got)) == len(got) and not set(got) & known


def test_time_calls_times_the_first_call_apart():
    seen = []
    got = bench_serve.time_calls(seen.append, 5)
    assert seen == [0, 1, 2, 3, 4, 5] and got["n"] == 5
    assert set(got) == {"first_ms", "p50_ms", "p99_ms", "mean_ms", "n"}
    assert 0 <= got["p50_ms"] <= got["p99_ms"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    inter, feats = write_planted(d)
    fit(inter, features={"content": feats}, out=d / "model", config=TrainConfig(dim=16, layers=2, epochs=2, seed=0),
        split="random", show_progress=False)
    return d / "model"


def test_exact_recall_is_one_for_an_exact_index_and_drops_for_a_wrong_ranking(trained, monkeypatch):
    rec = Recommender.load(trained, show_progress=False)
    users = rec.user_ids[:8]
    assert bench_serve.exact_recall(rec, users) == 1.0
    # A ranking that returns the 10 worst items instead overlaps the exact top 10 nowhere
    # (32 items, 6 known per user: 26 candidates).
    items = rec.items.vectorizer.mips.original(rec.items.vectors)
    ids = sorted(rec.items._pos, key=rec.items._pos.get)

    def worst(u, k):
        scores = items @ rec.user_vectors[rec.user_index(u)]
        known = set(rec.known_items(u))
        order = [ids[i] for i in np.argsort(scores, kind="stable") if ids[i] not in known]
        return [Result(i, 0.0, {}) for i in order[:k]]

    monkeypatch.setattr(rec, "recommend", worst)
    assert bench_serve.exact_recall(rec, users) == 0.0


def test_exact_similar_recall_is_one_for_an_exact_index_and_drops_for_a_wrong_ranking(trained, monkeypatch):
    rec = Recommender.load(trained, show_progress=False)
    picked = list(rec.items._pos)[:7]
    assert bench_serve.exact_similar_recall(rec, picked, block=3) == 1.0  # blocks of 3: a partial last one
    # The 10 least similar items instead overlap the exact 10 most similar nowhere (31 candidates).
    items = rec.items.vectorizer.mips.original(rec.items.vectors)
    ids = sorted(rec.items._pos, key=rec.items._pos.get)

    def least(item_ids, k):
        out = []
        for i in item_ids:
            order = [ids[j] for j in np.argsort(items @ items[rec.items._pos[i]], kind="stable") if ids[j] != i]
            out.append([Result(j, 0.0, {}) for j in order[:k]])
        return out

    monkeypatch.setattr(rec, "similar_many", least)
    assert bench_serve.exact_similar_recall(rec, picked) == 0.0
    # one right item in ten per query (the most similar one; by dot product, not always the
    # item itself that comes first): 0.1
    def best(i):
        return next(ids[j] for j in np.argsort(-(items @ items[rec.items._pos[i]]), kind="stable") if ids[j] != i)

    monkeypatch.setattr(rec, "similar_many", lambda item_ids, k: [
        r[:9] + [Result(best(i), 0.0, {})] for i, r in zip(item_ids, least(item_ids, k))])
    assert bench_serve.exact_similar_recall(rec, picked) == pytest.approx(0.1)


def test_requests_time_every_kind_and_the_report_renders(trained):
    got = bench_serve.requests(trained, 3, seed=0, batch_items=5, batch_texts=4)
    assert got["items"] == 32 and got["users"] == 48 and got["recall@10_vs_exact"] == 1.0
    assert set(got["requests"]) == {"recommend", "recommend, explain", "recommend, diversity 0.3",
                                    "history of 5, fold-in", "history of 5, mean", "known user + 2 newer items",
                                    "similar"}  # no text encoder: no text search
    assert all(r["n"] == 3 for r in got["requests"].values())
    assert set(got["http"]) == {"HTTP GET /recommend", "HTTP GET /history (5 items, fold-in)", "HTTP GET /similar"}
    assert all(r["n"] == 3 for r in got["http"].values())
    # "identical" is measured, not assumed: BLAS threads may round a batched score differently.
    assert set(got["batch"]) == {"recommend", "similar"}  # no text encoder: no text queries
    assert got["batch"]["recommend"]["queries"] == 48 and got["batch"]["similar"]["queries"] == 5
    assert all(isinstance(b["identical"], bool) and b["same_items"] for b in got["batch"].values())
    assert got["batch"]["similar"]["recall@10_vs_exact"] == 1.0  # a Flat index: exact
    cli = bench_serve.cli_calls({"nothing": ["-c", "pass"]}, repeats=2)
    assert len(cli["nothing"]["runs_s"]) == 2
    machine = {"cpu": "x", "cores": 2, "load_average": [0, 0, 0], "torch": "t", "python": "p"}
    results = {"directories": {"tiny": got | {"built": {"model": "fused", "epochs": 2, "build_seconds": 1.0},
                                              "cli": cli, "threads": 1, "cli_repeats": 2, "machine": machine,
                                              "command": "python scripts/bench_serve.py"}}}
    md = bench_serve.markdown(results)
    assert "| HTTP GET /recommend | " in md
    assert "| recommend | " in md and "| nothing | " in md and "32 items, 48 users" in md
    assert "| every user's top 10: `recommend` / `recommend_many` | 48 users |" in md
    assert "| the 10 items most similar to each item: `similar` / `similar_many` | 5 items |" in md
    assert "vectors: 1.0000; `similar_many`'s: 1.0000 (the items of the batched rows below)." in md


def test_loop_against_batch_reports_what_differs():
    def results(*pairs):
        return [[Result(i, s, {}) for i, s in q] for q in pairs]

    a = results([("x", 1.0), ("y", 0.5)], [("z", 2.0)])
    got = bench_serve.loop_vs_batch(lambda: a, lambda: a, count=2, rounds=2)
    assert got["queries"] == 2 and got["rounds"] == 2 and got["identical"] and got["same_items"]
    rounded = results([("x", 1.0), ("y", 0.5000001)], [("z", 2.0)])
    got = bench_serve.loop_vs_batch(lambda: a, lambda: rounded, count=2, rounds=1)
    assert not got["identical"] and got["same_items"]
    swapped = results([("y", 1.0), ("x", 0.5)], [("z", 2.0)])
    got = bench_serve.loop_vs_batch(lambda: a, lambda: swapped, count=2, rounds=1)
    assert not got["identical"] and not got["same_items"]
