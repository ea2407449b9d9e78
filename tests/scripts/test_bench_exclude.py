"""scripts/bench_exclude.py: both ways to exclude, timed and checked against brute force."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_exclude  # noqa: E402


def test_a_small_run_checks_every_list(tmp_path):
    bench_exclude.main(["--items", "2000", "--dim", "16", "--queries", "50", "--sizes", "20", "500",
                        "--factories", "Flat", "IVF8,Flat", "--rounds", "1", "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "exclude.json").read_text())["exclude"]
    for factory in ("Flat", "IVF8,Flat"):
        rows = entry["factories"][factory]
        assert [r["excluded"] for r in rows] == [0, 20, 500] and all(r["lists_ok"] for r in rows)
    flat = entry["factories"]["Flat"][1:]
    assert all(r["shared_recall"] == r["per_query_recall"] == r["selector_recall"] == 1.0 for r in flat)
    assert [r["folded"] for r in flat] == [True, False]  # 20 ids are 1% of 2,000: folded into the fetch
    assert all("selector_s" not in r for r in entry["factories"]["IVF8,Flat"])
    md = (tmp_path / "exclude.md").read_text()
    assert "| Flat | 20 (folded) |" in md and "| Flat | 500 |" in md and "| IVF8,Flat | 20 |" in md
    assert "at most 20 ids is left out" in md
