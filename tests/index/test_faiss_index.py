from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import FaissIndex, IndexFormatError, UnknownIdError, clustered_vectors, exact_search, recall_at_k

APPROX = ["HNSW32", "IVF64,Flat", "IVF64,SQ8", "IVF64,PQ4"]
FACTORIES = ["Flat", *APPROX]
N, DIM, NQ = 10_000, 16, 200

# Recall@10 vs exact on the clustered set below, with the default knobs. Measured values are
# 1.0 (HNSW32, efSearch 256), 1.0 (IVF64,Flat, nprobe 16), 0.963 (SQ8) and 0.46 (PQ4). The
# thresholds leave room for platform noise but fail on real regressions (a wrong metric or lost
# normalisation drops every one of them near chance, 10/10_000). SQ8 is capped by its 8-bit
# per-dimension rounding and PQ4 (4 dims per byte, no re-ranking) by its coarse codes: among
# near-identical cluster neighbours the ranking is mostly codec noise, whatever nprobe is.
MIN_RECALL = {"HNSW32": 0.97, "IVF64,Flat": 0.97, "IVF64,SQ8": 0.9, "IVF64,PQ4": 0.35}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = clustered_vectors(N + NQ, DIM, n_clusters=100, seed=3)
    base, queries = x[:N], x[N:]
    truth, _ = exact_search(base, queries, 10)
    return base, queries, truth


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory) -> dict[str, Path]:
    """Each factory built once (PQ training dominates test time: 16-d keeps it to 4 k-means)
    and saved; tests load copies."""
    base = data[0]
    out = {}
    for factory in FACTORIES:
        index = FaissIndex.build(base, list(range(N)), factory, seed=0)
        assert index.factory == factory and len(index) == N
        out[factory] = tmp_path_factory.mktemp(factory.replace(",", "_"))
        index.save(out[factory])
    return out


def fresh(saved: dict[str, Path], factory: str) -> FaissIndex:
    return FaissIndex.load(saved[factory])


def hand_built(ids: list) -> FaissIndex:
    # Raw, unnormalised rows: the wrapper must normalise them (d has length 5).
    vectors = np.array(
        [
            [1.0, 0.0, 0.0],  # cos with query = 1.0
            [0.8, 0.6, 0.0],  # 0.8
            [0.6, 0.0, 0.8],  # 0.6
            [0.0, 5.0, 0.0],  # 0.0
            [-1.0, 0.0, 0.0],  # -1.0
        ]
    )
    index = FaissIndex(3, "Flat")
    index.add(vectors, ids)
    return index


# ----------------------------------------------------------------------------- exact behaviour
@pytest.mark.parametrize("ids", [["a", "b", "c", "d", "e"], [10, 11, 12, 13, 14], ["7", 7, "x", 0, "0"]])
def test_hand_built_catalog_exact_order_and_scores(ids):
    index = hand_built(ids)
    found, scores = index.search(np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), k=3)
    assert found[0] == [ids[0], ids[1], ids[2]]
    np.testing.assert_allclose(scores[0], [1.0, 0.8, 0.6], atol=1e-6)
    assert found[1][0] == ids[2]
    np.testing.assert_allclose(scores[1][0], 0.8, atol=1e-6)
    assert all(type(a) is type(b) for a, b in zip(found[0], ids[:3]))
    assert scores[0].dtype == np.float32

    found, scores = index.search(np.array([[1.0, 0.0, 0.0]]), k=10, exclude=[{ids[0], ids[3], "unknown"}])
    assert found == [[ids[1], ids[2], ids[4]]]  # only 3 eligible items: fewer than k, no padding
    np.testing.assert_allclose(scores[0], [0.8, 0.6, -1.0], atol=1e-6)


def test_int_and_str_ids_are_distinct_items():
    index = hand_built(["7", 7, "x", 0, "0"])
    assert "7" in index and 7 in index and np.int64(7) in index
    assert 8 not in index and "8" not in index and None not in index
    index.remove(["7"])
    assert "7" not in index and 7 in index
    assert index.ids == [7, "x", 0, "0"]
    assert len(index) == 4


def test_tiny_hnsw_is_exact():
    # ef_search >= catalog size: the wrapper scans the graph's flat storage, so results are exact.
    vectors = hand_built(list("abcde"))
    index = FaissIndex(3, "HNSW8")
    index.add(np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0.6, 0, 0.8], [0, 5.0, 0], [-1.0, 0, 0]]), list("abcde"))
    assert index.search(np.array([[2.0, 0, 0]]), 5)[0] == vectors.search(np.array([[2.0, 0, 0]]), 5)[0]
    assert index.search(np.array([[2.0, 0, 0]]), 5)[0] == [list("abcde")]


def test_flat_equals_exact_oracle():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 24)).astype(np.float32)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    ids = [f"item{i}" for i in range(2000)]
    index = FaissIndex.build(base, ids, "Flat")
    found, scores = index.search(queries, 10)
    pos, exact_scores = exact_search(base, queries, 10)
    assert found == [[ids[p] for p in row] for row in pos]
    np.testing.assert_allclose(np.stack(scores), exact_scores, atol=1e-5)


def test_build_auto_is_flat_for_small_catalogs(data):
    index = FaissIndex.build(data[0][:500], list(range(500)))
    assert index.factory == "Flat"


def test_build_auto_caps_lists_by_training_sample():
    # 100k items would get IVF256 (sqrt rule); a 2000-row sample trains at most 2000 // 39 lists.
    x = np.random.default_rng(0).standard_normal((100_000, 4)).astype(np.float32)
    index = FaissIndex.build(x, np.arange(100_000), train_size=2000)
    assert index.factory == "IVF32,Flat" and index.nprobe == 16 and len(index) == 100_000


def test_resolve_factory():
    assert FaissIndex.resolve_factory("auto", 99_999) == "Flat"
    assert FaissIndex.resolve_factory("auto", 100_000) == "IVF256,Flat"
    assert FaissIndex.resolve_factory("auto", 1_000_000) == "IVF1024,Flat"
    assert FaissIndex.resolve_factory("auto", 50_000_000) == "IVF2048,Flat"  # 39 * 2048 <= 100k samples
    for factory in ["Flat", "HNSW32", "IVF100,Flat", "IVF100,SQ8", "IVF1024,PQ16"]:
        assert FaissIndex.resolve_factory(factory, 10) == factory


def test_repr():
    assert repr(FaissIndex(8)) == "FaissIndex(8, factory='Flat', size=0)"
    assert repr(FaissIndex(8, "HNSW16")) == "FaissIndex(8, factory='HNSW16', ef_search=256, size=0)"
    assert repr(FaissIndex(8, "IVF64,SQ8")) == "FaissIndex(8, factory='IVF64,SQ8', nprobe=16, size=0)"
    assert repr(FaissIndex(8, "IVF4096,Flat")) == "FaissIndex(8, factory='IVF4096,Flat', nprobe=64, size=0)"
    assert repr(hand_built(list("abcde"))) == "FaissIndex(3, factory='Flat', size=5)"


# ----------------------------------------------------------------------------- approximate recall
@pytest.mark.parametrize("factory", APPROX)
def test_approximate_recall(saved, data, factory):
    _, queries, truth = data
    index = fresh(saved, factory)
    found, scores = index.search(queries, 10)
    assert recall_at_k(found, truth, 10) >= MIN_RECALL[factory]
    assert all(len(row) == 10 for row in found)
    assert all(np.all(np.diff(s) <= 1e-6) for s in scores)  # best-first


def test_knobs_change_search(saved, data):
    _, queries, truth = data
    ivf = fresh(saved, "IVF64,Flat")
    ivf.nprobe = 64  # every list scanned: IVF,Flat becomes exact
    assert recall_at_k(ivf.search(queries, 10)[0], truth, 10) == 1.0
    hnsw = fresh(saved, "HNSW32")
    hnsw.ef_search = 1
    low = recall_at_k(hnsw.search(queries, 10)[0], truth, 10)  # efSearch is max(1, k) = 10
    hnsw.ef_search = 256
    assert recall_at_k(hnsw.search(queries, 10)[0], truth, 10) > low


def test_knob_errors():
    with pytest.raises(ValueError, match="Flat has no nprobe"):
        FaissIndex(8).nprobe = 4
    with pytest.raises(ValueError, match="IVF64,Flat has no ef_search"):
        FaissIndex(8, "IVF64,Flat").ef_search = 4
    with pytest.raises(ValueError, match="HNSW32 has no nprobe"):
        _ = FaissIndex(8, "HNSW32").nprobe
    with pytest.raises(ValueError, match=r"nprobe must be an int in \[1, 64\]"):
        FaissIndex(8, "IVF64,Flat").nprobe = 65
    with pytest.raises(ValueError, match=r"ef_search must be an int in \[1, 2147483647\]"):
        FaissIndex(8, "HNSW32").ef_search = 0


def test_sweep_knob_measures_each_nprobe_against_the_exact_oracle(saved, data):
    base, queries, truth = data
    ivf = fresh(saved, "IVF64,Flat")
    ivf.nprobe = 8
    rows = ivf.sweep_knob(queries, 10)
    assert [r["value"] for r in rows] == [1, 2, 4, 8, 16, 32, 64] and ivf.nprobe == 8  # the knob is put back
    for row in rows:  # IVF,Flat's exhaustive search is the exact ranking, so the oracle's recall is the same
        ivf.nprobe = row["value"]
        assert row["recall"] == recall_at_k(ivf.search(queries, 10)[0], truth, 10)
        assert row["ms_per_query"] > 0
    assert rows[0]["recall"] < 0.99 and rows[-1]["recall"] == 1.0
    # A target stops at the first setting that reaches it.
    short = ivf.sweep_knob(queries, 10, target=0.99)
    assert [(r["value"], r["recall"]) for r in short] == [(r["value"], r["recall"]) for r in rows[:2]]
    assert rows[0]["recall"] < 0.99 <= rows[1]["recall"]


def test_sweep_knob_serves_exclusions_and_ends_hnsw_at_a_full_scan(saved, data):
    base, queries, _ = data
    hnsw = fresh(saved, "HNSW32")
    own = [{int(np.argmax(base @ q))} for q in queries]  # each query's nearest item, hidden from it
    rows = hnsw.sweep_knob(queries, 5, exclude=own)
    assert [r["value"] for r in rows] == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, N]
    assert rows[-1]["recall"] == 1.0 and hnsw.ef_search == 256
    hnsw.ef_search = 16
    found = hnsw.search(queries, 5, exclude=own)[0]
    assert not any(o & set(f) for o, f in zip(own, found))
    shown = exact_search(base, queries, 6)[0]  # the oracle less the hidden item
    truth = [[i for i in row if i not in o][:5] for row, o in zip(shown.tolist(), own)]
    assert rows[0]["recall"] == recall_at_k(found, truth, 5)


def test_sweep_knob_counts_items_tied_at_the_cut_and_skips_queries_with_nothing_left():
    x = clustered_vectors(3000, DIM, n_clusters=30, seed=4)
    x[:40] = x[0]  # 40 equal vectors: any 10 of them are a right answer for a query at that vector
    for factory in ("HNSW16", "IVF32,Flat"):
        index = FaissIndex.build(x, list(range(3000)), factory, seed=0)
        rows = index.sweep_knob(x[:5], 10)
        assert rows[0]["recall"] == 1.0, factory  # not 0: the walk's ties are as good as the scan's
    small = FaissIndex.build(x[:3], ["a", "b", "c"], "HNSW16")
    # The first query excludes everything: measured on the second alone, which finds its 1 item.
    rows = small.sweep_knob(x[:2], 2, exclude=[{"a", "b", "c"}, {"a", "b"}])
    assert [(r["value"], r["recall"]) for r in rows] == [(3, 1.0)]
    with pytest.raises(ValueError, match="every query excludes every item"):
        small.sweep_knob(x[:1], 2, exclude=[{"a", "b", "c"}])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
def test_exclude_all_is_hidden_inside_faiss_and_meets_the_oracle(saved, data, factory):
    base, queries, _ = data
    index = fresh(saved, factory)
    index.remove(list(range(1, 2000, 2)))  # HNSW: tombstones, hidden by the same selector
    if factory.startswith("IVF"):
        index.nprobe = 64  # every list: exact, so the oracle is exact too
    shared = set(range(0, 4000, 4)) | {"not-an-id"}
    own = [{int(i)} for i in range(len(queries))]  # per-query ids beside the shared ones
    found, _ = index.search(queries, 10, exclude=own, exclude_all=shared)
    pos, _ = exact_search(base, queries, 3000)
    gone = set(range(1, 2000, 2)) | shared
    truth = [[int(i) for i in row if i not in gone and i not in o][:10] for row, o in zip(pos, own)]
    assert all(len(f) == 10 for f in found)
    assert recall_at_k(found, truth, 10) >= (0.97 if factory == "HNSW32" else 1.0)
    assert not any(set(f) & (gone | o) for f, o in zip(found, own))
    named = FaissIndex.build(base[:30], [f"i{j}" for j in range(30)], "Flat")
    named.add(base[30:31], ["i1i"])
    got, _ = named.search(queries[:1], 31, exclude_all="i1i")  # one id, not the ids "i" and "1"
    assert "i1i" not in got[0] and len(got[0]) == 30
    got, _ = named.search(queries[:2], 31, exclude=["i1i", 7])  # a query's single id, as for exclude_all
    assert [len(g) for g in got] == [30, 31] and "i1i" not in got[0] and "i1" in got[0]
    # k larger than what is left: exactly what is left comes back.
    small = FaissIndex.build(base[:50], list(range(50)), factory if factory != "IVF64,Flat" else "Flat")
    left, _ = small.search(queries[:3], 50, exclude_all=set(range(45)))
    assert [sorted(r) for r in left] == [[45, 46, 47, 48, 49]] * 3


def test_a_short_exclude_all_on_flat_is_folded_into_the_fetch_and_answers_as_the_selector_does(saved, data,
                                                                                                monkeypatch):
    import index.faiss_index as fi

    base, queries, truth = data
    index = fresh(saved, "Flat")
    index.remove([int(truth[0, 1])])  # a removed item among query 0's nearest
    shared = {int(i) for i in truth[:5, :4].ravel()} | {"not-an-id"}  # what the first queries rank first
    assert len(shared) - 1 <= min(fi.FLAT_FOLD_MAX, fi.FLAT_FOLD_SHARE * N)
    own = [{int(truth[b, 5])} for b in range(len(queries))]
    hidden = []
    real = FaissIndex._selector
    monkeypatch.setattr(FaissIndex, "_selector", lambda self, *a: hidden.append(a) or real(self, *a))
    folded, folded_scores = index.search(queries, 10, exclude=own, exclude_all=shared)
    assert hidden == []  # no IDSelector: the Flat scan stays batched
    monkeypatch.setattr(fi, "FLAT_FOLD_SHARE", 0.0)
    kept, kept_scores = index.search(queries, 10, exclude=own, exclude_all=shared)
    assert len(hidden) == 1  # the selector way, for the side-by-side check
    pos, _ = exact_search(base, queries, 60)
    gone = shared | {int(truth[0, 1])}
    oracle = [[int(i) for i in row if i not in gone and i not in o][:10] for row, o in zip(pos, own)]
    assert folded == kept == oracle
    for a, b in zip(folded_scores, kept_scores):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    small = FaissIndex.build(base[:1000], list(range(1000)), "Flat")  # k beyond what is left
    assert sorted(small.search(queries[:2], 1000, exclude_all={1, 2, 3})[0][1]) == [0, *range(4, 1000)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
@pytest.mark.parametrize("share", [0.002, 0.05, 0.9])  # a few, some, most of the items allowed
def test_only_keeps_the_candidates_and_meets_the_oracle(saved, data, factory, share):
    base, queries, _ = data
    index = fresh(saved, factory)
    index.remove(list(range(1, 2000, 2)))  # HNSW: tombstones; a removed id in `only` stays gone
    if factory.startswith("IVF"):
        index.nprobe = 64  # every list: exact, so the oracle is exact too
    rng = np.random.default_rng(7)
    only = set(rng.choice(N, size=int(share * N), replace=False).tolist()) | {"not-an-id"}
    shared = set(range(0, 600, 3))
    own = [{int(i)} for i in range(len(queries))]
    found, scores = index.search(queries, 10, exclude=own, exclude_all=shared, only=only)
    gone = set(range(1, 2000, 2)) | shared
    pos, sims = exact_search(base, queries, N)
    truth = [[int(i) for i in row if i in only and i not in gone and i not in o][:10] for row, o in zip(pos, own)]
    assert [len(f) for f in found] == [len(t) for t in truth]
    assert all(set(f) <= only - gone - o for f, o in zip(found, own))
    assert recall_at_k(found, truth, 10) >= (0.97 if factory == "HNSW32" else 1.0)
    if factory != "HNSW32":
        assert found == truth
        exact = {(b, int(i)): s for b in range(len(queries)) for i, s in zip(pos[b], sims[b])}
        for b, (f, sc) in enumerate(zip(found, scores)):
            np.testing.assert_allclose(sc, [exact[(b, i)] for i in f], rtol=1e-5, atol=1e-6)


def test_only_edge_cases():
    x = clustered_vectors(60, DIM, n_clusters=3, seed=5)
    for factory in ("Flat", "HNSW8"):
        index = FaissIndex.build(x, [f"i{j}" for j in range(60)], factory)
        assert index.search(x[:2], 5, only=set())[0] == [[], []]  # nothing allowed: nothing back
        assert index.search(x[:1], 5, only="i7")[0] == [["i7"]]  # one id, not its characters
        got, _ = index.search(x[:1], 5, only={"i3", "i4", "i5"}, exclude=[{"i4"}], exclude_all={"i5"})
        assert got == [["i3"]]
        index.remove(["i3"])
        assert index.search(x[:1], 5, only={"i3", "i4"})[0] == [["i4"]]


def test_only_on_ivf_probes_as_widely_as_the_candidates_are_rare(saved, data):
    # With the default nprobe, the nearest of a few candidates can lie in lists an unrestricted
    # search never probes: every share must still find the exact top 10 (nprobe 16 of 64 lists
    # finds it unrestricted, see MIN_RECALL).
    base, queries, _ = data
    index = fresh(saved, "IVF64,Flat")
    rng = np.random.default_rng(3)
    for size in (50, 499, 500, 2000):
        only = rng.choice(N, size, replace=False)
        pos, _ = exact_search(base[only], queries, 10)
        truth = [[int(only[i]) for i in row] for row in pos]
        assert recall_at_k(index.search(queries, 10, only=set(only.tolist()))[0], truth, 10) == 1.0, size


def test_hnsw_scans_its_storage_once_a_widened_walk_would_cost_more(saved, data, monkeypatch):
    # A user with many known items inside a small candidate set widens efSearch towards N: past
    # ef * M >= N a scan of the storage is cheaper than the walk, and exact.
    base, queries, _ = data
    index = fresh(saved, "HNSW32")
    calls = []
    raw = index._raw_search
    monkeypatch.setattr(index, "_raw_search",
                        lambda q, fetch, nprobe, ef, exhaustive, sel=None: calls.append((ef, exhaustive))
                        or raw(q, fetch, nprobe, ef, exhaustive, sel))
    only = set(range(0, N, 10))  # 1,000 candidates
    known = set(range(0, 6000, 10))  # 600 of them excluded for this query
    found, _ = index.search(queries[:1], 10, exclude=[known], only=only)
    assert calls[0][1] and calls[0][0] * 32 >= N  # widened past the break-even, so scanned
    pos, _ = exact_search(base, queries[:1], N)
    assert found[0] == [int(i) for i in pos[0] if i in only and i not in known][:10]
    calls.clear()
    index.search(queries[:1], 10)  # the index's own efSearch is never traded for a scan
    assert calls == [(256, False)]


def test_hnsw_that_scans_for_want_of_live_nodes_keeps_scanning_when_it_widens(saved, data, monkeypatch):
    # Fewer than one node in M live: the first search scans. A candidate set far from the query leaves
    # it short; the widened search must scan again, not walk the mostly dead graph (it went back to
    # the walk whenever ef stayed below N and the walk's own cost test said no, as on a large index).
    base, queries, _ = data
    index = fresh(saved, "HNSW32")
    index.remove(list(range(200, N)))  # 200 live of 10,000 stored
    monkeypatch.setattr(index, "_walk_costs_more", lambda ef: False)  # (a graph large enough for that)
    calls = []
    raw = index._raw_search
    monkeypatch.setattr(index, "_raw_search",
                        lambda q, fetch, nprobe, ef, exhaustive, sel=None: calls.append((fetch, exhaustive))
                        or raw(q, fetch, nprobe, ef, exhaustive, sel))
    pos, _ = exact_search(base[:200], queries[:1], 200)
    only = {int(i) for i in pos[0][60:]}  # 140 of the 200 (post-filtered): the 60 nearest left out
    found, _ = index.search(queries[:1], 5, only=only)
    assert len(calls) > 1 and all(exhaustive for _, exhaustive in calls)
    assert found[0] == [int(i) for i in pos[0][60:65]]


def test_sweep_knob_errors(saved, data):
    queries = data[1]
    with pytest.raises(ValueError, match="Flat search is exact"):
        fresh(saved, "Flat").sweep_knob(queries)
    with pytest.raises(ValueError, match="empty"):
        FaissIndex(DIM, "IVF64,Flat").sweep_knob(queries)
    with pytest.raises(ValueError, match=r"target recall must be in \(0, 1\]"):
        fresh(saved, "IVF64,Flat").sweep_knob(queries, target=1.5)
    with pytest.raises(ValueError, match="no queries"):
        fresh(saved, "IVF64,Flat").sweep_knob(queries[:0])
    assert FaissIndex(DIM, "HNSW32").knob == "ef_search" and FaissIndex(DIM).knob is None


# ----------------------------------------------------------------------------- add / remove / exclude
@pytest.mark.parametrize("factory", FACTORIES)
def test_add_remove_search(saved, data, factory):
    base, queries, _ = data
    index = fresh(saved, factory)
    gone = list(range(0, N, 2))
    assert index.remove(gone) == len(gone)
    assert len(index) == N // 2 and 0 not in index and 1 in index
    new = clustered_vectors(50, DIM, seed=99)
    index.add(new, [f"new{i}" for i in range(50)])
    assert len(index) == N // 2 + 50
    assert index.ids[:3] == [1, 3, 5] and index.ids[-1] == "new49"
    found, _ = index.search(queries, 10)
    assert all(len(row) == 10 for row in found)
    assert not {i for row in found for i in row} & set(gone)
    # a new item is its own nearest neighbour (PQ codes blur it with its cluster: top 5)
    found, _ = index.search(new[:5], 5)
    assert all(f"new{i}" in row for i, row in enumerate(found))
    if "PQ" not in factory:
        assert [row[0] for row in found] == [f"new{i}" for i in range(5)]
    # a removed id can come back
    index.add(base[:1], [0])
    assert 0 in index and index.ids[-1] == 0


@pytest.mark.parametrize("factory", FACTORIES)
def test_exclude_refills_to_exactly_k(saved, data, factory):
    base, queries, _ = data
    index = fresh(saved, factory)
    if factory.startswith("IVF"):
        index.nprobe = 1  # the probed list alone cannot supply k items once its best are hidden
    top, _ = exact_search(base, queries[:20], 300)
    hidden = [set(row.tolist()) for row in top]
    found, scores = index.search(queries[:20], 10, exclude=hidden)
    assert [len(row) for row in found] == [10] * 20
    assert [len(s) for s in scores] == [10] * 20
    for row, h in zip(found, hidden):
        assert not set(row) & h and len(set(row)) == 10


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat"])
def test_a_batch_fetches_per_group_of_similar_needs_and_equals_single_searches(saved, data, factory, monkeypatch):
    base, queries, _ = data
    index = fresh(saved, factory)
    top, _ = exact_search(base, queries[:6], 400)
    sizes = [0, 4, 0, 150, 300, 2]  # needs k + 1 + size: 11, 15, 11, 161, 311, 13
    hidden = [set(row[:n].tolist()) for row, n in zip(top, sizes)]
    single = [index.search(queries[b : b + 1], 10, exclude=[hidden[b]]) for b in range(6)]
    fetches = []
    raw = index._raw_search
    monkeypatch.setattr(index, "_raw_search", lambda q, fetch, *a: fetches.append((len(q), fetch)) or raw(q, fetch, *a))
    found, scores = index.search(queries[:6], 10, exclude=hidden)
    # Three FAISS calls, one per factor-of-two band of needs, each at its band's largest need:
    # {11, 15, 11, 13} -> 15, {161} -> 161, {311} -> 311 (not six queries at 311).
    assert sorted(fetches) == [(1, 161), (1, 311), (4, 15)]
    assert found == [ids[0] for ids, _ in single]
    for got, (_, want) in zip(scores, single):  # one query or four: BLAS may round differently (1 ulp)
        np.testing.assert_allclose(got, want[0], rtol=1e-6)


@pytest.mark.parametrize("factory", FACTORIES)
def test_few_survivors_all_returned_in_exact_order(saved, data, factory):
    # Remove all but 8 items: every factory (HNSW through its tombstones) must return exactly
    # those 8, best-first, for k=10; approximate codecs may only permute near-ties.
    base, queries, _ = data
    index = fresh(saved, factory)
    keep = [5, 77, 1234, 4000, 5555, 7001, 8080, 9999]
    index.remove([i for i in range(N) if i not in keep])
    assert len(index) == 8 and index.ids == keep
    found, scores = index.search(queries[:5], 10, exclude=[[keep[0]]] + [[]] * 4)
    pos, _ = exact_search(base[keep], queries[:5], 10)
    expected = [[keep[p] for p in row] for row in pos]
    expected[0].remove(keep[0])
    assert [len(row) for row in found] == [7, 8, 8, 8, 8]
    if factory in ("Flat", "HNSW32", "IVF64,Flat"):
        assert found == expected
    else:
        assert [set(r) for r in found] == [set(r) for r in expected]


def test_search_on_empty_index_and_everything_excluded():
    index = FaissIndex(3)
    found, scores = index.search(np.ones((2, 3)), 5)
    assert found == [[], []] and [s.shape for s in scores] == [(0,), (0,)]
    index = hand_built(list("abcde"))
    found, scores = index.search(np.ones((1, 3)), 5, exclude=[list("abcde")])
    assert found == [[]] and scores[0].shape == (0,)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("factory", FACTORIES)
def test_save_load_round_trip_with_tombstones_and_knobs(saved, data, tmp_path, factory):
    base, queries, _ = data
    index = fresh(saved, factory)
    index.remove(list(range(0, N, 3)))
    extra = clustered_vectors(4, DIM, seed=7)
    index.add(extra, ["7", 9, "x", 10**15])  # 9 was removed above: re-added under a new label
    if factory.startswith("IVF"):
        index.nprobe = 5
    elif factory.startswith("HNSW"):
        index.ef_search = 40
    checksums = index.save(tmp_path)
    assert sorted(checksums) == ["ids.json", "index.faiss"] and all(len(v) == 64 for v in checksums.values())
    loaded = FaissIndex.load(tmp_path)
    assert repr(loaded) == repr(index)
    assert loaded.ids == index.ids
    assert [type(i) for i in loaded.ids[-4:]] == [str, int, str, int]
    hide = [{1, 2, "7"}] * len(queries)
    want_ids, want_scores = index.search(np.vstack([queries, extra]), 10, exclude=hide + [[]] * 4)
    got_ids, got_scores = loaded.search(np.vstack([queries, extra]), 10, exclude=hide + [[]] * 4)
    assert got_ids == want_ids
    for a, b in zip(got_scores, want_scores):
        np.testing.assert_array_equal(a, b)
    assert not {i for row in got_ids for i in row} & (set(range(0, N, 3)) - {9})
    assert [row[0] for row in got_ids[-4:]] == ["7", 9, "x", 10**15]
    # labels continue after load: adding and removing still works
    loaded.add(base[:1], ["after"])
    assert loaded.remove(["after", 1]) == 2 and len(loaded) == len(index) - 1


def test_load_rejects_inconsistent_files(saved, tmp_path):
    index = fresh(saved, "Flat")
    index.save(tmp_path)
    meta = json.loads((tmp_path / "ids.json").read_text())
    meta["ids"], meta["labels"] = meta["ids"][:-1], meta["labels"][:-1]
    (tmp_path / "ids.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="field 'ids' lists 9999 items .* holds 10000 vectors"):
        FaissIndex.load(tmp_path)
    index.save(tmp_path)
    meta = json.loads((tmp_path / "ids.json").read_text())
    meta["ids"], meta["labels"] = meta["ids"][:-1] + [0], meta["labels"][:-1] + [9999]
    (tmp_path / "ids.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="field 'ids' contains duplicates"):
        FaissIndex.load(tmp_path)
    meta["ids"], meta["labels"] = meta["ids"][:-1] + [1.5], meta["labels"][:-1] + [9999]
    (tmp_path / "ids.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="'ids' / 'labels' / 'next_label' are corrupt: item id 1.5"):
        FaissIndex.load(tmp_path)
    (tmp_path / "ids.json").unlink()
    with pytest.raises(IndexFormatError, match="missing ids.json"):
        FaissIndex.load(tmp_path)


def test_save_needs_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        hand_built(list("abcde")).save(tmp_path / "nope")


# ----------------------------------------------------------------------------- errors
def test_wrong_dim_shape_nan_zero():
    index = hand_built(list("abcde"))
    with pytest.raises(ValueError, match=r"vectors must have shape \(N, 3\), got \(1, 4\)"):
        index.add(np.ones((1, 4)), ["f"])
    with pytest.raises(ValueError, match=r"queries must have shape \(N, 3\), got \(3,\)"):
        index.search(np.ones(3), 1)
    with pytest.raises(ValueError, match="vectors row 1 contains NaN or inf"):
        index.add(np.array([[1.0, 0, 0], [np.nan, 0, 0]]), ["f", "g"])
    with pytest.raises(ValueError, match="queries row 0 contains NaN or inf"):
        index.search(np.array([[np.inf, 0, 0]]), 1)
    with pytest.raises(ValueError, match="vectors row 0 is a zero vector"):
        index.add(np.zeros((1, 3)), ["f"])
    with pytest.raises(ValueError, match="cannot be converted to float32"):
        index.add([["a", "b", "c"]], ["f"])
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(np.ones((1, 3)), 0)
    with pytest.raises(ValueError, match="exclude has 2 entries for 1 queries"):
        index.search(np.ones((1, 3)), 1, exclude=[[], []])
    assert len(index) == 5  # nothing was added by the failed calls


def test_bad_ids():
    index = hand_built(list("abcde"))
    with pytest.raises(ValueError, match="duplicate ids in this call: 'f'"):
        index.add(np.ones((2, 3)), ["f", "f"])
    with pytest.raises(ValueError, match="2 id\\(s\\) already in the index: 'a', 'c'"):
        index.add(np.ones((3, 3)), ["a", "z", "c"])
    with pytest.raises(ValueError, match="got 2 vectors but 1 ids"):
        index.add(np.ones((2, 3)), ["f"])
    with pytest.raises(TypeError, match="item id 1.5 has type float"):
        index.add(np.ones((1, 3)), [1.5])
    with pytest.raises(TypeError, match="is a bool"):
        index.add(np.ones((1, 3)), [True])
    with pytest.raises(TypeError, match="not a single string"):
        index.add(np.ones((1, 3)), "f")
    assert len(index) == 5


def test_remove_unknown_ids_is_all_or_nothing():
    index = hand_built(list("abcde"))
    with pytest.raises(UnknownIdError) as err:
        index.remove(["a", "zz", 3, "b"])
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "2 id(s) not in the index: 'zz', 3"
    assert err.value.ids == ["zz", 3]
    assert len(index) == 5 and "a" in index
    assert index.remove(["a", "a"]) == 1
    with pytest.raises(UnknownIdError, match="'a'"):
        index.remove(["a"])


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown factory 'IVF64,PQ'; accepted forms: Flat, HNSW"):
        FaissIndex(8, "IVF64,PQ")
    with pytest.raises(ValueError, match="unknown factory 'LSH'"):
        FaissIndex.resolve_factory("LSH", 10)
    with pytest.raises(ValueError, match="unknown factory 'flat'"):
        FaissIndex.build(np.ones((3, 8)), [1, 2, 3], "flat")
    with pytest.raises(ValueError, match="'auto' needs the catalog size"):
        FaissIndex(8, "auto")
    with pytest.raises(ValueError, match="dim must be a positive int"):
        FaissIndex(0)


def test_ivf_training_too_small_says_what_fits():
    x = clustered_vectors(1000, 8, seed=0)
    with pytest.raises(ValueError, match=r"'IVF64,Flat' needs at least 2496 training vectors .* got 1000 .*use IVF25"):
        FaissIndex.build(x, list(range(1000)), "IVF64,Flat")
    with pytest.raises(ValueError, match=r"got 500 \(catalog 1000, train_size 500\)"):
        FaissIndex.build(x, list(range(1000)), "IVF16,Flat", train_size=500)
    with pytest.raises(ValueError, match="PQ codebooks need 9984 rows"):
        FaissIndex.build(x, list(range(1000)), "IVF4,PQ4")
    untrained = FaissIndex(8, "IVF4,Flat")
    with pytest.raises(ValueError, match="not trained"):
        untrained.add(x[:2], [1, 2])
    untrained.train(x)
    untrained.add(x[:2], [1, 2])
    assert untrained.search(x[:1], 1)[0] == [[1]]
    with pytest.raises(ValueError, match="already trained"):
        untrained.train(x)
    with pytest.raises(ValueError, match="Flat needs no training"):
        FaissIndex(8).train(x)


def test_a_pq_width_that_does_not_divide_the_vectors_is_padded_with_zero_columns(tmp_path):
    # 17-d vectors under PQ4: stored 20 wide. The oracle is FAISS itself on the rows padded by hand
    # (same training sample and seed), so every score and label must agree exactly.
    import faiss

    x = clustered_vectors(10_000, 17, n_clusters=50, seed=5)
    unit = (x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)  # as FaissIndex
    index = FaissIndex.build(x, list(range(len(x))), "IVF4,PQ4", seed=0)
    assert index.dim == 17 and index.faiss_index.d == 20
    oracle = faiss.index_factory(20, "IVF4,PQ4", faiss.METRIC_INNER_PRODUCT)
    oracle.do_polysemous_training = False
    faiss.extract_index_ivf(oracle).cp.seed = 0
    padded = np.ascontiguousarray(np.pad(unit, ((0, 0), (0, 3))))
    oracle.train(padded)
    oracle.add_with_ids(padded, np.arange(len(x), dtype=np.int64))
    q = padded[:50]
    deep_scores, deep_labels = oracle.search(q, 100, params=faiss.SearchParametersIVF(nprobe=index.nprobe))
    # PQ scores tie often: equal ones rank by label (FAISS's own order among them varies with the depth)
    order = [np.lexsort((labels, -row))[:10] for labels, row in zip(deep_labels, deep_scores)]
    want_scores = np.stack([row[o] for row, o in zip(deep_scores, order)])
    want_labels = np.stack([labels[o] for labels, o in zip(deep_labels, order)])
    assert (deep_scores[:, -1] < want_scores[:, -1]).all()  # (100 deep holds every tie crossing the 10th)
    ids, scores = index.search(x[:50], 10)
    assert [list(r) for r in ids] == want_labels.tolist()
    np.testing.assert_array_equal(np.stack(scores), want_scores)
    (tmp_path / "pq").mkdir()
    index.save(tmp_path / "pq")
    back = FaissIndex.load(tmp_path / "pq")
    again, again_scores = back.search(x[:50], 10)
    assert again == ids and np.array_equal(np.stack(again_scores), np.stack(scores))
    back.add(x[:1] * 2, ["new"])  # added rows are padded too: the same codes as row 0's
    found, found_scores = back.search(x[:1], 100)
    score = dict(zip(found[0], found_scores[0].tolist()))
    assert score["new"] == score[0]


def test_vectors_far_from_unit_length_normalise_exactly_and_true_is_no_id():
    # Norms in float64: float32 squares overflow near 1e19 and underflow near 1e-23.
    vecs = np.array([[3e19, 0, 0], [0, 1e-23, 0], [0, 0, 1]], np.float32)
    idx = FaissIndex.build(vecs, ["big", "tiny", "z"], factory="Flat")
    ids, scores = idx.search(np.array([[1, 0, 0], [0, 1, 0]], np.float32), k=1)
    assert [ids[0][0], ids[1][0]] == ["big", "tiny"]
    np.testing.assert_allclose([scores[0][0], scores[1][0]], [1.0, 1.0], atol=1e-6)
    ints = FaissIndex.build(np.eye(3, dtype=np.float32), [0, 1, 2], factory="Flat")
    q = np.ones((1, 3), np.float32)
    assert ints.search(q, k=3, only=[True])[0] == [[]]  # True is not id 1
    assert sorted(ints.search(q, k=3, exclude_all=[True])[0][0]) == [0, 1, 2]
    assert sorted(ints.search(q, k=3, exclude=[[True]])[0][0]) == [0, 1, 2]


def test_an_ids_file_whose_factory_is_not_the_index_files_is_refused(tmp_path):
    # it loaded an IVF index as Flat (searched as exact) or HNSW as Flat (tombstones ignored)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    for built, claimed in (("IVF4,Flat", "Flat"), ("HNSW8", "Flat"), ("IVF4,Flat", "IVF8,Flat"),
                           ("IVF4,Flat", "IVF4,SQ8"), ("Flat", "HNSW8"), ("HNSW8", "HNSW16")):
        d = tmp_path / f"{built}-{claimed}"
        d.mkdir()
        FaissIndex.build(x, list(range(400)), built).save(d)
        meta = json.loads((d / "ids.json").read_text())
        meta |= {"factory": claimed, "nprobe": 4, "ef_search": 16}
        (d / "ids.json").write_text(json.dumps(meta))
        with pytest.raises(IndexFormatError, match=rf"field 'factory' is '{claimed}' in ids.json, but index.faiss "
                                                   r"holds another kind of index"):
            FaissIndex.load(d)


def test_remove_takes_one_string_id_as_one_id():
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    index = FaissIndex.build(x, ["a", "b", "ab", "c"], "Flat")
    assert index.remove("ab") == 1 and index.ids == ["a", "b", "c"]  # (it removed "a" and "b")
    numbered = FaissIndex.build(x, [1, 2, 3, 4], "Flat")
    assert numbered.remove(np.array(4)) == 1 and numbered.remove(np.int64(3)) == 1 and numbered.ids == [1, 2]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_equal_scores_rank_by_index_order_whatever_the_depth(factory, tmp_path):
    # Items with one vector score the same: FAISS's order among them, and which of them a top-k
    # crossing the tie returned, changed with the depth fetched (k=1 gave 11, k=3 gave 21, 11, 5).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    twins = [5, 11, 20, 21, 22, 23, 350]
    x[twins] = x[20]
    index = FaissIndex.build(x, list(range(400)), factory, seed=0)
    if factory.startswith("IVF"):
        index.nprobe = 4  # every list: the search is exact
    q = x[20:21]
    for k in range(1, 9):
        ids, scores = index.search(q, k)
        assert ids[0][: len(twins)] == twins[:k] and len(ids[0]) == k, (k, ids)
        assert np.all(scores[0][: min(k, 7)] == scores[0][0])
    assert index.search(q, 3, exclude=[[20]])[0][0] == [5, 11, 21]
    assert index.search(q, 2, only=[23, 350, 22, 11, 7])[0][0] == [11, 22]
    assert index.search(q, 2, exclude_all=[5, 11])[0][0] == [20, 21]
    ids, _ = index.search(np.concatenate([q, q]), 2, exclude=[[], list(range(5, 21))])
    assert ids == [[5, 11], [21, 22]]
    # a twin given a new vector and then its old one back keeps its place among the ties (a remove and an
    # add ranked it last, as a new item: update's moved items ranked apart from --by cosine and evaluate)
    index.replace(rng.normal(size=(1, 8)), [11])
    index.replace(x[[11, 5]], [11, 5])
    assert index.search(q, 7)[0][0] == twins
    index.remove([21])
    index.replace(x[[5]], [5])  # (the place of a replaced label is carried on)
    assert index.search(q, 3)[0][0] == [5, 11, 20]
    index.save(tmp_path)
    back = FaissIndex.load(tmp_path)
    assert back.search(q, 6)[0][0] == [5, 11, 20, 22, 23, 350]
    with pytest.raises(UnknownIdError, match="21"):
        index.replace(x[[21]], [21])
    with pytest.raises(ValueError, match="replace takes one vector for each of distinct ids; got 2 vectors for 2 "
                                         "ids [(]1 distinct[)]"):
        index.replace(x[[5, 11]], [5, 5])
    assert index.search(q, 3)[0][0] == [5, 11, 20] and len(index) == 399  # nothing changed


def test_a_query_s_tie_is_settled_as_alone_when_another_query_of_its_batch_comes_back_short():
    # the tie's widening was one flag for the batch: spent by another query's (short, under `only`) smaller
    # widening, the tie was cut where FAISS's storage order left it (similar --item A B differed from --item A)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    v = x[12].copy()
    x[12:60] = v
    x[60:90] = -v + 0.01 * rng.normal(size=(30, 8))  # the second query's nearest, outside `only`
    index = FaissIndex.build(x, list(range(300)), "Flat", seed=0)
    index.replace(np.repeat(v[None], 12, axis=0), list(range(12)))  # twins of v that keep their earlier places
    only = list(range(60)) + list(range(90, 230))
    alone = index.search(v[None], 3, only=only)
    both = index.search(np.stack([v, -v]), 3, only=only)
    assert alone[0][0] == both[0][0] == [0, 1, 2] and np.array_equal(alone[1][0], both[1][0])
    assert both[0][1] == index.search(-v[None], 3, only=only)[0][0]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat"])
def test_a_tie_longer_than_tie_fetch_costs_one_more_search_not_a_scan(factory, monkeypatch):
    # widening until a tie ended took 9-10 FAISS calls a query (every IVF list, an HNSW full scan)
    # where 2,000 duplicate rows sat near it
    from index.faiss_index import TIE_FETCH

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    x[:500] = x[0]
    index = FaissIndex.build(x, list(range(2000)), factory, seed=0)
    fetches = []
    raw = index._raw_search
    monkeypatch.setattr(index, "_raw_search", lambda q, fetch, *a: fetches.append(fetch) or raw(q, fetch, *a))
    ids, scores = index.search(x[:1], 10)
    assert fetches == [11, 11 + TIE_FETCH]
    # the part of the tie fetched, by label (which part FAISS returns from a tie past TIE_FETCH is its own)
    assert ids[0] == sorted(ids[0]) and set(ids[0]) <= set(range(500)) and np.all(scores[0] == scores[0][0])
