"""scripts/bench_tune.py: the default and tuned settings, measured on the same queries."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_tune  # noqa: E402


def test_a_small_run_writes_each_setting_with_exact_recall(tmp_path):
    bench_tune.main(["--items", "400", "--users", "300", "--per-user", "20", "--factory", "IVF8,Flat",
                     "--recall", "1.0", "--users-checked", "40", "--items-checked", "60", "--requests", "3",
                     "--out", str(tmp_path)])
    entry = json.loads((tmp_path / "tune.json").read_text())["directories"]["synthetic"]
    assert entry["factory"] == "IVF8,Flat" and entry["knob"] == "nprobe"
    default, tuned = entry["settings"]
    assert default["setting"] == "default" and default["value"] == 8  # max(16, 8 // 64) lists, capped at all 8
    # All 8 lists scanned: IVF,Flat is exact, so the oracles must agree exactly, whatever was picked.
    assert default["recommend_recall@10_vs_exact"] == 1.0 and default["similar_recall@10_vs_exact"] == 1.0
    # A target of 1.0 is met on the tuning's own sample (here every item and user, the checked ones included).
    assert tuned["setting"] == "tuned for 1.0" and all(s[-1]["recall"] == 1.0 for s in tuned["sweeps"].values())
    assert tuned["value"] == max(s[-1]["value"] for s in tuned["sweeps"].values())
    assert set(tuned["sweeps"]) == {"items", "users"} and tuned["recommend"]["n"] == 3
    md = (tmp_path / "tune.md").read_text()
    assert "| default | 8 | 1.0000 | 1.0000 |" in md and "--factory IVF8,Flat" in md and "--out" not in md
