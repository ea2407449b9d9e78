"""scripts/bench_update.py: each night's counts, both ways giving the same index."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_update  # noqa: E402


def test_a_small_run_counts_each_night_and_renders(tmp_path):
    bench_update.main(["--items", "12", "--changed", "0.25", "--width", "64", "--height", "48", "--rounds", "1",
                       "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "update.json").read_text())
    assert entry["changed"] == 3 and entry["items"] == 12
    counts = {name: night["counts"] for name, night in entry["nights"].items()}
    assert counts == {
        "unchanged": {"updated": 0, "unchanged": 12, "content": 0, "moved": 0, "added": 0, "removed": 0, "skipped": 0},
        "prices": {"updated": 3, "unchanged": 9, "content": 0, "moved": 0, "added": 0, "removed": 0, "skipped": 0},
        "pictures": {"updated": 3, "unchanged": 9, "content": 3, "moved": 3, "added": 0, "removed": 0, "skipped": 0},
    }
    assert all(night["same_index"] for night in entry["nights"].values())
    md = (tmp_path / "update.md").read_text()
    assert "| prices | 3 updated, 0 new content, 9 unchanged |" in md and "--out" not in md
