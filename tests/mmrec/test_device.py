"""--device: checked before any work, and passed to the encoders that encode a catalog."""
from __future__ import annotations

import pytest
import torch

import mmrec.item_index as item_index
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError
from mmrec.item_index import ItemIndex, check_device, same_device
from mmrec.pipeline import fit, load_content
from tests.mmrec.conftest import write_planted

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")


def _catalog(tmp_path, n: int = 8):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n" + "".join(f"{i},film number {i}\n" for i in range(n)))
    return path


def test_check_device_accepts_cpu_and_names_what_is_wrong():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"device 'gpu0' is not a torch device .*use cpu, cuda or cuda:N"):
        check_device("gpu0")
    with pytest.raises(ConfigError, match=r"device 'meta': mmrec runs on cpu, cuda, mps or xpu, not meta"):
        check_device("meta")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"device 'mps': torch .* sees no Apple GPU \(mps\) on this machine"):
            check_device("mps")


def test_same_device_reads_cuda_as_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cuda", "cuda:1") and same_device(torch.device("cuda:1"), "cuda")
    assert not same_device("cuda", "cuda:0") and not same_device("cpu", "cuda:1")
    assert same_device("cpu", torch.device("cpu"))


class _Stop(Exception):
    pass


def test_training_and_fine_tuning_encode_on_their_device(tmp_path, monkeypatch):
    import mmrec.pipeline as pipeline
    import mmrec.transfer as transfer

    inter, feats = write_planted(tmp_path)
    fit(inter, features={"content": feats}, out=tmp_path / "src",
        config=TrainConfig(dim=16, layers=1, heads=2, epochs=1), show_progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend; stopped before any GPU work
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    asked = []

    def recording(*args, device="cpu", **kwargs):
        asked.append(device)
        raise _Stop

    monkeypatch.setattr(pipeline, "load_content", recording)
    monkeypatch.setattr(transfer, "load_content", recording)
    with pytest.raises(_Stop):
        fit(inter, features={"content": feats}, config=TrainConfig(device="cuda"), show_progress=False)
    with pytest.raises(_Stop):
        transfer.finetune(tmp_path / "src", inter, features={"content": feats}, config={"device": "cuda:0"},
                          show_progress=False)
    assert asked == ["cuda", "cuda:0"]


@no_gpu
def test_a_gpu_device_on_a_machine_without_one_fails_before_any_work(tmp_path, tiny_bert_dir):
    with pytest.raises(ConfigError, match=r"device 'cuda': torch .* sees no CUDA GPU on this machine; use cpu"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        ItemIndex.build(_catalog(tmp_path), tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                        device="cuda", show_progress=False)
    assert not (tmp_path / "idx").exists()
    ItemIndex.build(_catalog(tmp_path), tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                    show_progress=False)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title\n100,a new film\n")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        ItemIndex.load(tmp_path / "idx", show_progress=False).add(new, device="cuda")
    assert len(ItemIndex.load(tmp_path / "idx", show_progress=False)) == 8  # nothing added
    inter, feats = write_planted(tmp_path)
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(device="cuda:0"),
            show_progress=False)
    assert not (tmp_path / "m").exists()


def test_device_reaches_the_catalog_encoders(tmp_path, tiny_bert_dir, monkeypatch):
    # Pretend a GPU is there, and record which device each encoder is asked for (built on cpu).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked = []
    real = item_index.make_encoder

    def recording(modality, spec, show_progress=True, device="cpu"):
        asked.append((modality, device))
        return real(modality, spec, show_progress, device="cpu")

    monkeypatch.setattr(item_index, "make_encoder", recording)
    ItemIndex.build(_catalog(tmp_path), text_encoder=tiny_bert_dir, image_encoder=None, device="cuda:1",
                    show_progress=False)
    load_content(_catalog(tmp_path), None, text_encoder=tiny_bert_dir, image_encoder=None, cache_dir=None,
                 device="cuda", show_progress=False)
    assert asked == [("text", "cuda:1"), ("text", "cuda")]
    # index add: the index's own encoders, loaded on first use, on the device asked for.
    ItemIndex.build(_catalog(tmp_path), tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                    show_progress=False)
    opened = ItemIndex.load(tmp_path / "idx", show_progress=False)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title\n100,a new film\n")
    asked.clear()
    assert opened.add(new, device="cuda:1") == 1 and asked == [("text", "cuda:1")]
    with pytest.raises(ConfigError, match=r"device 'cuda:2': this machine has 2 CUDA GPU\(s\)"):
        check_device("cuda:2")


def test_index_add_checks_the_device_before_opening_the_index(tmp_path, capsys):
    from mmrec.cli import main

    code = main(["index", "add", "--index", str(tmp_path / "absent"), "--catalog", str(tmp_path / "new.csv"),
                 "--device", "meta"])
    assert code != 0 and "device 'meta': mmrec runs on cpu, cuda, mps or xpu, not meta" in capsys.readouterr().err


def test_a_factory_that_cannot_be_built_is_refused_before_encoding_or_training(tmp_path, tiny_bert_dir, monkeypatch):
    import mmrec.pipeline as pipeline

    encoded = []
    monkeypatch.setattr(item_index, "encode_catalog", lambda *a, **k: encoded.append(1))
    with pytest.raises(ConfigError, match=r"unknown factory 'bogus'; accepted forms"):
        ItemIndex.build(_catalog(tmp_path), text_encoder=tiny_bert_dir, image_encoder=None, factory="bogus",
                        show_progress=False)
    with pytest.raises(ConfigError, match=r"factory 'IVF16,Flat' needs at least 624 training vectors.*got 8"):
        ItemIndex.build(_catalog(tmp_path), text_encoder=tiny_bert_dir, image_encoder=None, factory="IVF16,Flat",
                        show_progress=False)
    assert encoded == []
    inter, feats = write_planted(tmp_path)
    monkeypatch.setattr(pipeline, "load_content", lambda *a, **k: encoded.append(1))
    with pytest.raises(ConfigError, match="unknown factory 'bogus'"):
        fit(inter, features={"content": feats}, factory="bogus", show_progress=False)
    assert encoded == []
    monkeypatch.undo()
    monkeypatch.setattr(pipeline.Trainer, "fit", lambda self: encoded.append("trained"))
    with pytest.raises(ConfigError, match=r"IVF2,Flat.*needs at least 78 training vectors.*got 32"):
        fit(inter, features={"content": feats}, factory="IVF2,Flat", show_progress=False)
    assert encoded == []  # refused before training
