"""scripts/bench_exclude.py: both ways to exclude, timed and checked against brute force."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_exclude  # noqa: E402


def test_a_small_run_checks_every_list(tmp_path):
    bench_exclude.main(["--items", "2000", "--dim", "16", "--queries", "50", "--sizes", "30", "500",
                        "--factories", "Flat", "IVF8,Flat", "--rounds", "1", "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "exclude.json").read_text())["exclude"]
    for factory in ("Flat", "IVF8,Flat"):
        rows = entry["factories"][factory]
        assert [r["excluded"] for r in rows] == [0, 30, 500] and all(r["lists_ok"] for r in rows)
    assert all(r["shared_recall"] == 1.0 and r["per_query_recall"] == 1.0 for r in entry["factories"]["Flat"][1:])
    assert "| Flat | 500 |" in (tmp_path / "exclude.md").read_text()
