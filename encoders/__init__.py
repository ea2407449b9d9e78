"""Content -> vectors: text and image encoders and the on-disk feature cache.

``TextEncoder`` and ``ImageEncoder`` load a pretrained model once and turn texts / images into
L2-normalised float32 vectors; ``FeatureCache`` + ``encode_with_cache`` make re-runs encode only
what changed. Nothing here imports ``mmrec`` or ``fusion``.

Names are re-exported lazily, so ``import encoders.cache`` does not pay for importing torch,
torchvision and transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FeatureCache": "encoders.cache",
    "content_hash": "encoders.cache",
    "encode_with_cache": "encoders.cache",
    "file_hash": "encoders.cache",
    "fingerprint_files": "encoders.cache",
    "ImageDecodeError": "encoders.image",
    "ImageEncoder": "encoders.image",
    "check_image": "encoders.image",
    "TextEncoder": "encoders.text",
    "mean_pool": "encoders.text",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from encoders.cache import FeatureCache, content_hash, encode_with_cache, file_hash, fingerprint_files
    from encoders.image import ImageDecodeError, ImageEncoder, check_image
    from encoders.text import TextEncoder, mean_pool


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
