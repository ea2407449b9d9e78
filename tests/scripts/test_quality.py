"""scripts/quality.py: the grid each model is selected from."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import quality  # noqa: E402
from tests.encoders.conftest import tiny_bert_dir  # noqa: E402,F401  (fixture)


def _args(*argv: str):
    return quality.parse_args(["--datasets", "ml100k-plus", *argv])


def test_shared_grid_multiplies_lr_reg_edge_pruning_and_averaging() -> None:
    assert quality.shared_grid(_args("--grid-lr", "0.01", "--grid-reg", "1e-4", "1e-3")) == [
        {"lr": 0.01, "reg": 1e-4}, {"lr": 0.01, "reg": 1e-3}]
    args = _args("--grid-lr", "0.01", "--grid-reg", "1e-3", "--grid-edge-dropout", "0", "0.3", "--grid-ema", "0.99")
    assert quality.shared_grid(args) == [{"lr": 0.01, "reg": 1e-3, "edge_dropout": 0.0, "ema": 0.99},
                                         {"lr": 0.01, "reg": 1e-3, "edge_dropout": 0.3, "ema": 0.99}]
    label = quality.model_label("id-only", {"lr": 0.01, "reg": 1e-3, "edge_dropout": 0.3, "ema": 0.99})
    assert label == "id-only (lr 0.01, reg 0.001, edge_dropout 0.3, ema 0.99)"


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


def test_fine_tuned_runs_leave_the_loaded_content_as_it_was(tmp_path, tiny_bert_dir):
    # Every grid point and seed must start from the loaded encoder and features, never from the
    # weights or features a previous fine-tuned run left behind.
    import numpy as np
    import torch

    from mmrec.config import TrainConfig
    from mmrec.pipeline import interactions_for, load_content
    from tests.mmrec.conftest import write_planted

    words = ["cat", "dog", "space", "war", "love", "city"]
    (tmp_path / "items.csv").write_text(
        "item_id,title\n" + "".join(f"{i},{words[i % 6]} {words[(i * 5) % 6]} film\n" for i in range(24)))
    content = load_content(tmp_path / "items.csv", None, text_encoder=tiny_bert_dir, image_encoder=None,
                           cache_dir=None, show_progress=False)
    inter = interactions_for(content, write_planted(tmp_path, users=24, items=24)[0], split="random", seed=0)
    features = content.features["text"].copy()
    weights = {k: v.clone() for k, v in content.encoder_objects["text"].model.state_dict().items()}
    cfg = TrainConfig(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=2, finetune="top:1",
                      encoder_lr_scale=1.0, mask="train")
    trainer, _ = quality.fit_trainer(content, inter, cfg)
    assert not np.allclose(trainer.features["text"].numpy(), features)  # the run did tune
    np.testing.assert_array_equal(content.features["text"], features)
    for k, v in content.encoder_objects["text"].model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_bad_device_or_finetuning_precomputed_features_stop_before_any_work(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match=r"device 'meta': mmrec runs on cpu, cuda, mps or xpu"):
        quality.main(["--datasets", "tiktok", "--device", "meta", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"tiktok: --grid-finetune frozen top:1 needs a dataset encoded from a catalog"):
        quality.main(["--datasets", "tiktok", "--grid-finetune", "frozen", "top:1", "--data", str(tmp_path / "none"),
                      "--out", str(tmp_path)])
    # a grid point TrainConfig refuses stops the run before the data loads (--data does not exist)
    with pytest.raises(SystemExit, match=r"fused grid point .*'ema': 0.99.*use it with finetune frozen, not 'top:1'"):
        quality.main(["--datasets", "ml100k-plus", "--grid-ema", "0.99", "--grid-finetune", "top:1",
                      "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"id-only grid point .*edge_dropout must lie in \[0, 1\), got 1.0"):
        quality.main(["--datasets", "ml100k-plus", "--grid-edge-dropout", "1.0", "--data", str(tmp_path / "none"),
                      "--out", str(tmp_path)])
    for argv in (["--jobs", "0"], ["--jobs", "2", "--device", "cuda"], ["--jobs", "2", "--threads", "2"]):
        with pytest.raises(SystemExit, match=r"--jobs .*: give 1 or more, and more than 1 only on the CPU with "
                                             r"--threads 1"):
            quality.main(["--datasets", "tiktok", *argv, "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_runs_in_worker_processes_match_the_runs_in_one(tmp_path):
    import dataclasses

    import pytest

    from mmrec.config import TrainConfig
    from mmrec.pipeline import interactions_for, load_content
    from tests.mmrec.conftest import write_planted

    inter_path, feats = write_planted(tmp_path, users=24, items=16)
    content = load_content(None, {"x": feats}, show_progress=False)
    inter = interactions_for(content, inter_path, split="random", seed=0)
    cfgs = [TrainConfig(dim=8, layers=1, heads=2, lr=0.05, batch_size=32, epochs=3, mask="train", seed=seed,
                        use_content=use) for seed in (0, 1) for use in (False, True)]
    timings = ("wall_seconds", "seconds_per_epoch")
    alone = [{k: v for k, v in r.items() if k not in timings} for r in quality.run_all(content, inter, cfgs, jobs=1)]
    forked = [{k: v for k, v in r.items() if k not in timings} for r in quality.run_all(content, inter, cfgs, jobs=2)]
    assert [r["seed"] for r in forked] == [0, 0, 1, 1]
    assert forked == alone
    assert alone[0]["test"] != alone[1]["test"]  # the configs differ, so order is checked too
    assert quality._WORKER_DATA == {}  # nothing left pinned once the pool is done
    # A failing run stops the lot: its error reaches the caller, and the data is released.
    broken = dataclasses.replace(cfgs[1])
    object.__setattr__(broken, "heads", 3)  # past the config's own check: the model refuses 3 heads for dim 8
    bad = [cfgs[0], broken, *cfgs[2:]]
    runs = quality.run_all(content, inter, bad, jobs=2)
    assert next(runs)["seed"] == 0
    with pytest.raises(ValueError, match="divisible"):
        next(runs)
    assert quality._WORKER_DATA == {}


def test_hits_by_degree_counts_each_held_out_row_in_its_items_band() -> None:
    import numpy as np
    import scipy.sparse as sp

    degree = np.array([0, 25, 100, 5, 80, 19])  # bands [0,20): 0 3 5; [20,80): 1; [80,inf): 2 4
    truth = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0],    # user 0: items 0, 1
                                    [0, 0, 1, 1, 1, 0],    # user 1: items 2, 3, 4
                                    [0, 0, 0, 0, 0, 1]]))  # user 2: item 5
    topk = np.array([[1, 2], [4, 3], [-1, -1]])  # hits: (0,1), (1,3), (1,4); user 2 has an empty list
    got = quality.hits_by_degree(topk, truth, degree)
    assert got == {"[0,20)": {"rows": 3, "hits": 1}, "[20,80)": {"rows": 1, "hits": 1},
                   "[80,inf)": {"rows": 2, "hits": 1}}
    assert list(quality.hits_by_degree(topk, truth, degree, edges=(1,))) == ["[0,1)", "[1,inf)"]


def test_hits_by_degree_adds_up_to_the_ranking_metrics() -> None:
    import warnings

    import numpy as np
    import scipy.sparse as sp

    from mmrec.metrics import evaluate_ranking

    rng = np.random.default_rng(0)
    truth = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    with warnings.catch_warnings():  # storing zeros is the point here, however slow scipy finds it
        warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
        truth[0] = 0  # a user without held-out items (zeros stored in the matrix): no rows, never counted
    topk = np.stack([rng.permutation(30)[:5] for _ in range(40)])
    topk[0] = truth[0].indices[:5]  # the stored zeros "found": they must not count as hits
    got = quality.hits_by_degree(topk, truth, rng.integers(0, 150, 30))
    m = evaluate_ranking(topk, truth, ks=(5,))  # skips the user without held-out items
    assert sum(c["rows"] for c in got.values()) == truth.count_nonzero()
    assert sum(c["hits"] for c in got.values()) == round(m["precision@5"] * 5 * m["num_users"])


def test_hits_table_lists_each_model_by_band() -> None:
    cell = {"mean": 4.0, "std": 1.25, "n": 5}
    bands = {"[0,20)": {"rows": 942, "hits": cell}, "[20,inf)": {"rows": 10, "hits": {"mean": 3.0, "std": 0.0, "n": 1}}}
    lines = quality.hits_table({"fused": {"test_hits_by_degree": bands}, "id-only": {"test": {}}})
    assert lines[3:] == ["| model | [0,20) (942 rows) | [20,inf) (10 rows) |", "|---|---:|---:|",
                         "| fused | 4.0 ± 1.2 | 3.0 |"]
    assert quality.hits_table({"id-only": {"test": {}}}) == []


def test_the_test_split_report_counts_the_headline_rankings_hits(tmp_path):
    import numpy as np
    import torch

    from machine import pick_metrics
    from mmrec.metrics import evaluate
    from mmrec.pipeline import interactions_for, load_content
    from tests.mmrec.conftest import write_planted

    inter_path, feats = write_planted(tmp_path, users=24, items=30)
    content = load_content(None, {"x": feats}, show_progress=False)
    inter = interactions_for(content, inter_path, split="random", seed=0)
    scores = torch.from_numpy(np.random.default_rng(0).random((inter.num_users, inter.num_items)).astype(np.float32))

    def score(u):
        return scores[torch.as_tensor(u)]

    got = quality.report_test_split(score, inter)
    test = inter.user_items("test")
    assert sum(c["rows"] for c in got["test_hits_by_degree"].values()) == test.nnz
    assert set(got) == {"test", "test_mask_all", "test_hits_by_degree"}
    # The hits are those of the headline metrics: the same lists, as evaluate() ranks and scores them.
    headline = evaluate(score, inter, split="test", mask="train")
    assert got["test"] == pick_metrics(headline)
    hits = sum(c["hits"] for c in got["test_hits_by_degree"].values())
    assert hits > 0 and hits == round(headline["precision@20"] * 20 * headline["num_users"])


def test_beating_id_only_needs_a_significant_gap_and_seeds_to_test_it(monkeypatch) -> None:
    def entry(fused: list[float], id_only: list[float]) -> dict:
        runs = {k: [{"test": {"recall@20": v, "ndcg@20": v}} for v in vs] for k, vs in (("fused", fused), ("id-only", id_only))}
        summary = {k: {"test": {m: {"mean": float(np.mean(vs)), "std": float(np.std(vs, ddof=1)) if len(vs) > 1 else 0.0,
                                     "n": len(vs)} for m in ("recall@20", "ndcg@20")}}
                   for k, vs in (("fused", fused), ("id-only", id_only))}
        return {"runs": runs, "summary": summary}

    one_seed = quality.checks("tiktok", entry([0.30], [0.20]))["fused_beats_id_only_recall@20"]
    assert one_seed["ahead"] and one_seed["welch_p"] is None and not one_seed["met"]  # nothing to test it with
    clear = quality.checks("tiktok", entry([0.30, 0.31, 0.32], [0.20, 0.21, 0.20]))["fused_beats_id_only_recall@20"]
    assert clear["met"] and clear["welch_p"] < 0.05
    noisy = quality.checks("tiktok", entry([0.30, 0.10, 0.32], [0.20, 0.21, 0.20]))["fused_beats_id_only_recall@20"]
    assert noisy["ahead"] and not noisy["met"]
    # Judged on the p-value itself, stored to 3 digits: 0.04996 is below 0.05 though it is stored as 0.05.
    monkeypatch.setattr(quality.stats, "ttest_ind", lambda *a, **k: type("T", (), {"pvalue": 0.04996})())
    edge = quality.checks("tiktok", entry([0.30, 0.10, 0.32], [0.20, 0.21, 0.20]))["fused_beats_id_only_recall@20"]
    assert edge["met"] and edge["welch_p"] == 0.05
