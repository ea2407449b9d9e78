"""Vectors + graph -> user/item vectors: projection, attention fusion, propagation, losses."""
from __future__ import annotations

from fusion.attention import AttentionFusion
from fusion.fixed import combine_modalities, modality_centers
from fusion.foldin import HistoryFoldIn, history_mean
from fusion.item_graph import ItemGraph, knn_item_graph
from fusion.losses import alignment_loss, bpr_loss, l2_regularization, norm_regularization, sampled_softmax_loss
from fusion.model import FusedGraphModel
from fusion.projection import ModalityProjection
from fusion.propagation import GraphPropagation

__all__ = [
    "AttentionFusion",
    "FusedGraphModel",
    "GraphPropagation",
    "HistoryFoldIn",
    "ItemGraph",
    "ModalityProjection",
    "alignment_loss",
    "bpr_loss",
    "combine_modalities",
    "history_mean",
    "knn_item_graph",
    "l2_regularization",
    "modality_centers",
    "norm_regularization",
    "sampled_softmax_loss",
]
