"""The helpers the benchmark scripts share (scripts/machine.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import machine  # noqa: E402


def test_command_line_drops_where_files_go_and_notes():
    argv = ["--datasets", "tiktok", "--out", "x", "--note", "two words", "--cache-dir=cache", "--tag", "(stage 2)"]
    assert machine.command_line("quality.py", argv) == "python scripts/quality.py --datasets tiktok --tag '(stage 2)'"


def test_mean_std_is_the_sample_std():
    assert machine.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert machine.mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}


def test_pick_metrics_rounds_the_stored_four_and_counts_users_on_request():
    got = {"recall@10": 0.12345678, "recall@20": 0.2, "ndcg@10": 1 / 3, "ndcg@20": 0.25, "hit@10": 0.9,
           "num_users": 7.0}
    assert machine.pick_metrics(got) == {"recall@10": 0.123457, "recall@20": 0.2, "ndcg@10": 0.333333,
                                         "ndcg@20": 0.25}
    with_users = machine.pick_metrics(got, users=True)
    assert with_users["num_users"] == 7 and isinstance(with_users["num_users"], int)
    assert "num_users" not in machine.pick_metrics({k: 0.0 for k in machine.METRICS}, users=True)


def test_update_results_merges_and_leaves_only_its_two_files(tmp_path):
    seen = []

    def add(key):
        def update(old):
            seen.append(old)
            return {"runs": (old or {"runs": {}})["runs"] | {key: len(seen)}}
        return update

    def markdown(results):
        return "\n".join(f"- {k}: {v}" for k, v in sorted(results["runs"].items())) + "\n"

    machine.update_results(tmp_path / "out", "q", add("a"), markdown)
    machine.update_results(tmp_path / "out", "q", add("b"), markdown)
    assert seen == [None, {"runs": {"a": 1}}]
    assert json.loads((tmp_path / "out" / "q.json").read_text()) == {"runs": {"a": 1, "b": 2}}
    assert (tmp_path / "out" / "q.md").read_text() == "- a: 1\n- b: 2\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q.json", "q.md"]


def test_update_results_keeps_the_old_file_when_the_update_fails(tmp_path):
    machine.update_results(tmp_path, "q", lambda old: {"runs": {"a": 1}}, lambda r: "ok\n")

    def broken(old):
        raise ValueError("bad entry")

    with pytest.raises(ValueError, match="bad entry"):
        machine.update_results(tmp_path, "q", broken, lambda r: "ok\n")
    assert json.loads((tmp_path / "q.json").read_text()) == {"runs": {"a": 1}}


def test_feature_cache_is_the_given_folder_or_a_temporary_one(tmp_path):
    with machine.feature_cache(str(tmp_path / "c")) as got:
        assert got == tmp_path / "c"
    with machine.feature_cache(None) as got:
        assert got.is_dir()
        (got / "x").write_text("1")
    assert not got.exists()


def test_begin_run_sets_threads_and_returns_the_stored_command():
    import argparse

    import torch

    before = torch.get_num_threads()
    try:
        command, info = machine.begin_run("bench_x.py", argparse.Namespace(threads=1), ["--out", "o", "--steps", "3"])
        assert command == "python scripts/bench_x.py --steps 3" and torch.get_num_threads() == 1
        assert info["torch_threads"] == 1 and info["cores"] >= 1
    finally:
        torch.set_num_threads(before)


def test_brute_force_top_ranks_only_the_kept_rows_and_set_recall_counts_shares():
    import numpy as np

    base = np.eye(12, dtype=np.float32) + 0.01  # row i is nearest itself, then all others tie
    queries = base[:2]
    assert machine.brute_force_top(base, queries, 1) == [{0}, {1}]
    kept = np.array([1, 4, 7])
    assert machine.brute_force_top(base, queries, 1, keep=kept)[1] == {1}
    assert machine.brute_force_top(base, queries, 5, keep=kept) == [{1, 4, 7}, {1, 4, 7}]  # k above what is kept
    assert machine.set_recall([[0, 3], [2]], [{0, 1}, {2}]) == 0.75
    seconds, out = machine.median_seconds(lambda: 7, 3)
    assert out == 7 and seconds >= 0.0
