"""Tiny randomly initialised models and small images, built once per session in a temp dir.

Nothing here downloads: every model is constructed from a config with random weights (seeded)
and saved with ``save_pretrained`` / ``torch.save`` so the encoders load them as users' local
models.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

WORDS = (
    "the a an of and to in is it that with for on as was by at from this film movie story about "
    "cat dog sat mat toy toys boy girl space war love city night police spy cartoon animated "
    "family friends journey world young old man woman life death house music"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TEXTS = [
    "the cat sat on the mat",
    "a",
    "",
    "a young boy and his toys in an animated family film about friends",
    "spy",
    "the police story of a city at night with music and love and death in the old house",
    "zebra unknown words here",
    "a dog",
]


def _vocab_file(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return path


def _tokenizer(directory: Path):
    from transformers import BertTokenizer

    # The vocabulary file goes in positionally: transformers 4 names that argument vocab_file,
    # 5 names it vocab (and silently ignores vocab_file=, leaving a 5-token vocabulary).
    tok = BertTokenizer(str(_vocab_file(directory)), do_lower_case=True)
    assert tok.convert_tokens_to_ids("space") == len(SPECIAL) + WORDS.index("space"), "vocabulary not loaded"
    return tok


def _text_config_kwargs(tok) -> dict:
    return dict(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, pad_token_id=tok.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BertModel with a 60-word WordPiece vocabulary."""
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("models") / "tiny-bert"
    d.mkdir()
    tok = _tokenizer(d)
    torch.manual_seed(0)
    BertModel(BertConfig(**_text_config_kwargs(tok), max_position_embeddings=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _clip_text_kwargs(tok) -> dict:
    # The BERT tokenizer stands in for CLIP's BPE: [SEP] plays end-of-text, so CLIP pools at [SEP].
    return dict(
        **_text_config_kwargs(tok), max_position_embeddings=32, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )


@pytest.fixture(scope="session")
def tiny_clip_text_dir(tmp_path_factory) -> Path:
    """A CLIPTextModelWithProjection (hidden 32 -> projection 16) with a WordPiece tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    d = tmp_path_factory.mktemp("models") / "tiny-clip-text"
    d.mkdir()
    tok = _tokenizer(d)
    torch.manual_seed(1)
    CLIPTextModelWithProjection(CLIPTextConfig(**_clip_text_kwargs(tok), projection_dim=16)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A full CLIPModel (text + 32-px vision tower, projection 16) with tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    d = tmp_path_factory.mktemp("models") / "tiny-clip"
    d.mkdir()
    tok = _tokenizer(d)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(2)
    config = CLIPConfig(text_config=_clip_text_kwargs(tok), vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def _vit(d: Path, pooler: bool) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    d.mkdir()
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    torch.manual_seed(3)
    ViTModel(config, add_pooling_layer=pooler).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 ViT on 32-px images (8-px patches), saved with its pooler."""
    return _vit(tmp_path_factory.mktemp("models") / "tiny-vit", pooler=True)


@pytest.fixture(scope="session")
def tiny_vit_nopool_dir(tmp_path_factory) -> Path:
    """The same ViT saved without pooler weights (as classification checkpoints are)."""
    return _vit(tmp_path_factory.mktemp("models") / "tiny-vit-nopool", pooler=False)


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A randomly initialised torchvision resnet18 state dict saved to a file."""
    import torchvision

    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory) -> list[str]:
    """Seven small images: JPEG/PNG, RGB/RGBA/greyscale/palette, 32 px on the short side or so."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    specs = [
        ("a.jpg", "RGB", (32, 32)), ("b.png", "RGBA", (40, 32)), ("c.jpg", "L", (32, 48)),
        ("d.png", "P", (33, 35)), ("e.jpg", "RGB", (64, 32)), ("f.png", "RGB", (32, 32)), ("g.jpg", "RGB", (36, 36)),
    ]
    paths = []
    for name, mode, (w, h) in specs:
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = rgb.convert(mode) if mode != "RGB" else rgb
        img.save(d / name)
        paths.append(str(d / name))
    return paths
