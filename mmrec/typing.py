"""Domain type aliases shared across mmrec, encoders, fusion and index.

Shapes use one notation everywhere: B batch, N items, U users, E edges, M modalities,
D model dim, D_t / D_v encoder dims, K top-k.
"""
from __future__ import annotations

from typing import Union

import numpy as np
from torch import Tensor

ItemId = Union[str, int]  # the catalog's own item id, as the user wrote it
UserId = Union[str, int]
EdgeIndex = Tensor  # [2, E] int64, users and items in one node space
Vectors = np.ndarray  # [N, D] float32
