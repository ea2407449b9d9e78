"""Vectors -> retrieval: FAISS index wrapper with id mapping, removal and persistence.

``FaissIndex`` is the index; ``persist`` makes saved directories crash-safe and checkable;
``oracle`` holds the exact brute-force search and recall that every fast path is tested against.
"""
from __future__ import annotations

from index.faiss_index import AUTO_EXACT_BELOW, FaissIndex, ItemId, UnknownIdError
from index.oracle import clustered_vectors, exact_search, recall_at_k
from index.persist import (
    FORMAT_VERSION,
    IndexFormatError,
    atomic_directory,
    read_manifest,
    sha256_file,
    write_manifest,
)

__all__ = [
    "AUTO_EXACT_BELOW",
    "FORMAT_VERSION",
    "FaissIndex",
    "IndexFormatError",
    "ItemId",
    "UnknownIdError",
    "atomic_directory",
    "clustered_vectors",
    "exact_search",
    "read_manifest",
    "recall_at_k",
    "sha256_file",
    "write_manifest",
]
