"""scripts/bench_candidates.py: both ways to restrict, timed and checked against brute force."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_candidates  # noqa: E402


def test_a_small_run_checks_every_list(tmp_path):
    bench_candidates.main(["--items", "2000", "--dim", "16", "--queries", "50", "--shares", "0.01", "0.5",
                           "--factories", "Flat", "IVF8,Flat", "--rounds", "1", "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "candidates.json").read_text())["candidates"]
    for factory, ways in (("Flat", [None, "selector", "kept"]), ("IVF8,Flat", [None, "selector", "selector"])):
        rows = entry["factories"][factory]
        assert [r["candidates"] for r in rows] == [2000, 20, 1000]
        assert [r.get("way") for r in rows] == ways  # IVF always lets the candidates through its selector
        assert all(r["only_lists_ok"] and r["only_short"] == 0.0 for r in rows[1:])
    assert all(r["only_recall"] == 1.0 for r in entry["factories"]["Flat"])  # exact, both ways
    assert [m["matched"] for m in entry["matching"].values()][-1] <= entry["matching"]["common category"]["matched"]
    assert "| Flat | 20 (1.00%) | selector |" in (tmp_path / "candidates.md").read_text()
    assert all(m["query_kept_set_seconds"] > 0 and m["query_plain_set_seconds"] > 0 for m in entry["matching"].values())
    assert entry["query_unfiltered_seconds"] > 0
