"""scripts/quality.py: the grid each model is selected from."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import quality  # noqa: E402


def _args(*argv: str):
    return quality.parse_args(["--datasets", "ml100k-plus", *argv])


def test_id_only_grid_is_the_shared_grid() -> None:
    grid = [{"lr": 0.01, "reg": 1e-3}]
    args = _args("--grid-finetune", "frozen", "top:1")
    assert quality.grid_points("id-only", grid, args) == grid


def test_frozen_points_run_once_without_an_encoder_learning_rate() -> None:
    grid = [{"lr": 0.01, "reg": 1e-3}]
    args = _args("--grid-finetune", "frozen", "top:1", "--grid-encoder-lr-scale", "0.01", "0.1")
    assert quality.grid_points("fused", grid, args) == [
        {"lr": 0.01, "reg": 1e-3, "finetune": "frozen"},
        {"lr": 0.01, "reg": 1e-3, "finetune": "top:1", "encoder_lr_scale": 0.01},
        {"lr": 0.01, "reg": 1e-3, "finetune": "top:1", "encoder_lr_scale": 0.1},
    ]


def test_fused_options_multiply_in_order() -> None:
    grid = [{"lr": 0.01, "reg": 1e-4}, {"lr": 0.01, "reg": 1e-3}]
    args = _args("--grid-content-gain", "0.1", "1.0", "--fused-id-mode", "token")
    assert quality.grid_points("fused", grid, args) == [
        {"lr": 0.01, "reg": 1e-4, "id_mode": "token", "content_gain": 0.1},
        {"lr": 0.01, "reg": 1e-3, "id_mode": "token", "content_gain": 0.1},
        {"lr": 0.01, "reg": 1e-4, "id_mode": "token", "content_gain": 1.0},
        {"lr": 0.01, "reg": 1e-3, "id_mode": "token", "content_gain": 1.0},
    ]
