"""Training loop of the fused graph recommender: sampling, BPR / sampled softmax, early stopping.

The loop is plain PyTorch on the full graph (``pyg-lib`` / ``torch-sparse`` do not install here,
so there is no neighbour sampling): every step propagates all users and items, scores a batch of
(user, positive, negatives) triples and steps Adam. Validation ranks every item for every
validation user (in batches of users), masks known items, and keeps the best state by
Recall@20; training stops after ``patience`` evaluations without improvement. With
``edge_dropout`` each epoch's steps propagate over a new degree-sensitive subgraph
(:func:`mmrec.graph.prune_edges`); validation and the saved vectors use every training edge.
With ``ema`` the trainer keeps an exponential moving average of the weights (updated after each
step, started from the weights ``fit`` starts from); validation, early stopping and the kept
best state are those of the average, and without a validation split the model ends holding it.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fusion.item_graph import knn_item_graph
from fusion.losses import alignment_loss, bpr_loss, l2_regularization, norm_regularization, sampled_softmax_loss
from fusion.model import FusedGraphModel
from mmrec.config import TrainConfig
from mmrec.errors import MMRecError
from mmrec.graph import build_edge_index, prune_edges
from mmrec.interactions import Interactions
from mmrec.metrics import NonFiniteScores, evaluate, score_users

logger = logging.getLogger(__name__)

# The TrainConfig fields that act on items' content alone: an ID-only model given one says so.
CONTENT_OPTIONS = ("content_gain", "modality_dropout", "align_weight", "cold_neighbours", "cold_neighbour_weight",
                   "dropout", "projection_hidden", "encoder_lr_scale")

EVAL_KEY = "recall@20"


@dataclass
class TrainData:
    """Everything a training run reads, in contiguous index space.

    Attributes:
        inter: split interactions (users x items of the whole item space).
        features: modality -> ``[N, D_m]`` float32 features (rows of absent items ignored).
        present: modality -> ``[N]`` bool.
        has_id: ``[N]`` bool, False for items that must be learned from content alone
            (cold-start items held out of training); default every item.
        negatives: ``[N]`` bool, the items that may be sampled as negatives; default all
            (held-out cold items are excluded: training must not see them at all).
    """

    inter: Interactions
    features: dict[str, Tensor] = field(default_factory=dict)
    present: dict[str, Tensor] = field(default_factory=dict)
    has_id: Tensor | None = None
    negatives: np.ndarray | None = None


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the best validation epoch (0 when no epoch beat the
    starting weights given as ``Trainer.start_valid``, which are then kept), its validation
    metrics (of the averaged weights with ``ema``), one row per epoch, and the mean seconds per
    epoch; and, set by :func:`mmrec.pipeline.fit`, the validation and test metrics of ranking
    by training popularity (``popularity``: ``{"valid": {...}, "test": {...}}``, for reference)
    and, where the served index places items otherwise than training did
    (``untrained_via_content``), ``best_valid`` measured on the served index, with the training
    vectors' metrics kept as ``trained_valid``.
    """

    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]]
    seconds_per_epoch: float
    popularity: dict[str, dict[str, float]] = field(default_factory=dict)
    # untrained_via_content: best_valid is then measured on the served index (set by fit), and this
    # is the training vectors' validation, which early stopping chose the epoch by.
    trained_valid: dict[str, float] | None = None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def build_model(cfg: TrainConfig, num_users: int, num_items: int, modality_dims: Mapping[str, int]) -> FusedGraphModel:
    """The model a config describes (``use_content=False`` drops every content modality)."""
    return FusedGraphModel(
        num_users,
        num_items,
        dict(modality_dims) if cfg.use_content else {},
        dim=cfg.dim,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        use_id=cfg.use_id,
        modality_dropout=cfg.modality_dropout,
        id_dropout=cfg.id_dropout,
        dropout=cfg.dropout,
        projection_hidden=cfg.projection_hidden or None,
        id_mode=cfg.id_mode,
        content_gain=cfg.content_gain,
        id_init=cfg.id_init,
    )


class NegativeSampler:
    """Uniform negatives that are never one of the user's known positives.

    Args:
        positives: ``[U, N]`` CSR of every interaction the model may learn from (train split).
        seed: generator seed.
        candidates: ``[N]`` bool, the items that may be drawn; default all (``train --cold-start``
            leaves out the items it holds out).
        user_ids: the users' external ids, named when one has no negative to draw.

    Raises:
        MMRecError: a user whose known items are every item that may be drawn.
    """

    def __init__(self, positives: sp.csr_matrix, seed: int, candidates: np.ndarray | None = None,
                 user_ids: Sequence[object] | None = None) -> None:
        coo = positives.tocoo()
        self.num_items = positives.shape[1]
        self.pool = np.arange(self.num_items) if candidates is None else np.flatnonzero(candidates)
        self.keys = np.unique(coo.row.astype(np.int64) * self.num_items + coo.col)  # sorted
        allowed = np.ones(self.num_items, bool) if candidates is None else np.asarray(candidates, bool)
        # Known items each user may not draw, counted once each (not summed: a rating or a
        # duplicate entry is still one item).
        known_allowed = np.bincount(self.keys[allowed[self.keys % self.num_items]] // self.num_items,
                                    minlength=positives.shape[0])  # [U]
        full = np.flatnonzero(known_allowed >= len(self.pool))
        if len(full):
            names = [repr(user_ids[u]) if user_ids is not None else f"#{u}" for u in full[:10]]
            scope = "every item" if candidates is None else "every item training may draw (not those held out)"
            raise MMRecError(
                f"{len(full)} user(s) ({', '.join(names)}{' ...' if len(full) > 10 else ''}) interacted with {scope} "
                f"in the training split: no negative item exists to train them against; leave them out of the "
                f"interactions" + ("" if candidates is None else ", or hold fewer items out (--cold-start) or "
                                   "another draw of them (--seed)"))
        self.rng = np.random.default_rng(seed)

    def _draw(self, size: int) -> np.ndarray:
        return self.pool[self.rng.integers(0, len(self.pool), size=size)]

    def __call__(self, users: np.ndarray, num: int) -> np.ndarray:
        """``[B, num]`` negative item indices for ``users`` ``[B]``."""
        users = np.repeat(users, num)  # [B*num]
        neg = self._draw(len(users))
        todo = np.arange(len(users))
        while len(todo):  # resample the ones that hit a positive; terminates since no user has all items
            keys = users[todo] * self.num_items + neg[todo]
            pos = np.searchsorted(self.keys, keys)
            hit = (pos < len(self.keys)) & (self.keys[np.minimum(pos, len(self.keys) - 1)] == keys)
            todo = todo[hit]
            neg[todo] = self._draw(len(todo))
        return neg.reshape(-1, num)


class Trainer:
    """Fits a :class:`FusedGraphModel` on :class:`TrainData` as a :class:`TrainConfig` says.

    Args:
        model: the model (built with :func:`build_model`).
        data: interactions with a split, features, presence.
        cfg: the configuration.
        tuner: fine-tuned encoders (:class:`mmrec.encoder_tuning.EncoderTuner`), or ``None``
            for frozen features. Its ``param_groups()`` join the optimiser, its
            ``step_features(items, features)`` gives the features of a step (the batch's rows
            recomputed with gradients) and ``end_epoch(features)`` refreshes the features in place.
        show_progress: a progress bar over epochs.
    """

    def __init__(
        self,
        model: FusedGraphModel,
        data: TrainData,
        cfg: TrainConfig,
        *,
        tuner: Any = None,
        show_progress: bool = True,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.device = torch.device(cfg.device)
        self.model.to(self.device)
        inter = data.inter
        train = inter.split_mask("train")
        self.train_users = inter.users[train]
        self.train_items = inter.items[train]
        if not len(self.train_users):
            raise MMRecError("no training interactions: the split left no row in 'train' (a split column without "
                             "train rows; --cold-start holding out every item that had some: another --seed or a "
                             "smaller --cold-start)")
        self.edge_index = build_edge_index(
            self.train_users, self.train_items, inter.num_users, num_items=inter.num_items
        ).to(self.device)
        self.epoch_graph = self.edge_index  # the graph training steps propagate over (pruned per epoch)
        self.sampler = NegativeSampler(inter.user_items("train"), cfg.seed, data.negatives, inter.user_ids)
        # The embeddings (users, item IDs) learn at lr, the content side (projections, attention)
        # at lr * content_lr_scale.
        embeddings = [model.user_embedding.weight]
        embeddings += [model.item_embedding.weight] if model.item_embedding is not None else []
        content = [p for p in model.parameters() if p.requires_grad and all(p is not e for e in embeddings)]
        groups = [{"params": [p for p in embeddings if p.requires_grad]}]
        groups += [{"params": content, "lr": cfg.lr * cfg.content_lr_scale}] if content else []
        groups += tuner.param_groups() if tuner is not None else []
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr)
        self.tuner = tuner
        self.show_progress = show_progress
        # Fine-tuned encoders rewrite the features every epoch: on a copy, never the caller's arrays.
        self.features = {m: x.to(self.device, copy=tuner is not None) for m, x in data.features.items()}
        self.present = {m: x.to(self.device) for m, x in data.present.items()}
        for m, x in self.features.items():  # not given: every item has it (as FusedGraphModel reads it)
            self.present.setdefault(m, torch.ones(x.size(0), dtype=torch.bool, device=self.device))
        self.has_id = data.has_id.to(self.device) if data.has_id is not None else None
        self.item_graph = None
        if not model.modality_dims:  # content options asked of an ID-only model: said, not ignored
            if cfg.item_graph_k > 0:
                logger.warning("item_graph_k=%d builds the item-item graph from content features, and this model "
                               "has none (ID embeddings only): trained without an item graph", cfg.item_graph_k)
            if cfg.content_lr_scale != 1.0:
                logger.warning("content_lr_scale=%g sets the learning rate of content projections, and this model "
                               "has none (ID embeddings only): every parameter trains at lr", cfg.content_lr_scale)
            changed = [f"{name}={getattr(cfg, name)}" for name in CONTENT_OPTIONS
                       if getattr(cfg, name) != TrainConfig.__dataclass_fields__[name].default]
            if changed:
                logger.warning("%s act%s on items' content, and this model has none (ID embeddings only): trained as "
                               "without %s", ", ".join(changed), "s" if len(changed) == 1 else "",
                               "it" if len(changed) == 1 else "them")
        if not cfg.use_id and cfg.id_dropout > 0:
            logger.warning("id_dropout=%g masks the ID token, and use_id is off (no ID token): trained as without it",
                           cfg.id_dropout)
        if cfg.item_graph_k > 0 and model.modality_dims:
            # Built once from the starting features (frozen, as FREEDOM's); held-out cold items
            # (not negatives-eligible) take no part.
            nodes = torch.from_numpy(np.asarray(data.negatives, bool)) if data.negatives is not None else None
            # A one-column modality (a price, a year) has no direction: the cosine of any two of its
            # values is +-1, so its "nearest" items were whichever the top-k's order took first.
            flat = [m for m, x in self.features.items() if x.size(1) < 2]
            graphed = {m: x for m, x in self.features.items() if m not in flat}
            if flat:
                logger.warning("item_graph_k=%d: %s ha%s one column, whose cosine ranks no neighbours: the item "
                               "graph %s", cfg.item_graph_k, ", ".join(map(repr, flat)), "s" if len(flat) == 1 else "ve",
                               f"uses {', '.join(map(repr, graphed))} alone" if graphed else "is not built")
            if graphed:
                self.item_graph = knn_item_graph(graphed, self.present, cfg.item_graph_k, nodes=nodes)
        self.rng = np.random.default_rng(cfg.seed)
        # The moving average of the weights (cfg.ema > 0), updated after every step; validation
        # and the kept best state use it (see :meth:`averaged`).
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.trained] if cfg.ema > 0 else None
        # Validation metrics of the weights before any step, when they are worth keeping (a
        # fine-tuning start): :meth:`fit` then counts them as epoch 0, kept if no epoch beats them.
        self.start_valid: dict[str, float] | None = None
        # ``[U]`` bool: the users whose vectors start from a source model's (a fine-tuning start),
        # not drawn at random; ``None``: every one is drawn.
        self.kept_users: np.ndarray | None = None

    # ------------------------------------------------------------------------------ vectors
    def forward(
        self, features: Mapping[str, Tensor] | None = None, edge_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Full-graph pass: (user_vecs [U, D], item_vecs [N, D], weights [N, M]).

        Over ``edge_index``, default the whole training graph.
        """
        graph = self.edge_index if edge_index is None else edge_index
        return self.model(self.features if features is None else features, self.present, graph,
                          has_id=self.has_id, item_graph=self.item_graph)

    @torch.no_grad()
    def vectors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Eval-mode user and item vectors and attention weights."""
        self.model.eval()
        return self.forward()

    def validate(self, split: str = "valid") -> dict[str, float]:
        """Full-ranking metrics of ``split``; items held out of training (``data.negatives``
        False) are not candidates, as in the test metrics of :func:`mmrec.pipeline.fit`."""
        users, items, _ = self.vectors()
        held = None if self.data.negatives is None else ~np.asarray(self.data.negatives, bool)
        return evaluate(partial(score_users, users, items, held), self.data.inter, split=split, mask=self.cfg.mask,
                        ks=(10, 20), batch_size=self.cfg.eval_batch_size, fresh_scores=True,
                        candidates=None if held is None else len(held) - int(held.sum()))

    def state_dict(self) -> dict[str, Any]:
        """Model (and fine-tuned encoder) state, for keeping the best epoch."""
        state = {"model": self.model.state_dict()}
        if self.tuner is not None:
            state["tuner"] = self.tuner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.tuner is not None:
            self.tuner.load_state_dict(state["tuner"])
            self.tuner.end_epoch(self.features)  # features of the restored encoders

    # ------------------------------------------------------------------------------- steps
    def step(self, users: np.ndarray, pos: np.ndarray) -> float:
        cfg, model = self.cfg, self.model
        model.train()
        neg = self.sampler(users, cfg.negatives)  # [B, S]
        features = None
        if self.tuner is not None:
            features = self.tuner.step_features(np.unique(np.concatenate([pos, neg.ravel()])), self.features)
        user_vecs, item_vecs, _ = self.forward(features, self.epoch_graph)
        u = torch.as_tensor(users, device=self.device)
        p = torch.as_tensor(pos, device=self.device)
        n = torch.as_tensor(neg, device=self.device)
        uv = user_vecs[u]  # [B, D]
        pos_scores = (uv * item_vecs[p]).sum(-1)  # [B]
        neg_scores = torch.einsum("bd,bsd->bs", uv, item_vecs[n])  # [B, S]
        if cfg.loss == "bpr":
            loss = bpr_loss(pos_scores.unsqueeze(1).expand_as(neg_scores).reshape(-1), neg_scores.reshape(-1))
        else:
            un = torch.nn.functional.normalize(uv, dim=-1)
            inorm = torch.nn.functional.normalize(item_vecs, dim=-1)
            loss = sampled_softmax_loss(
                (un * inorm[p]).sum(-1), torch.einsum("bd,bsd->bs", un, inorm[n]), temperature=cfg.temperature
            )
        reg_terms = [model.user_embedding.weight[u]]
        if model.item_embedding is not None:
            reg_terms += [model.item_embedding.weight[p], model.item_embedding.weight[n.reshape(-1)]]
        regularize = norm_regularization if cfg.reg_form == "norm" else l2_regularization
        loss = loss + cfg.reg * regularize(*reg_terms, batch_size=len(users))
        if cfg.align_weight > 0 and model.modality_dims and cfg.use_content:
            batch_items = torch.unique(p)
            # Items without any modality have no content-only vector to align (a zero one, or none in token mode).
            batch_items = batch_items[torch.stack([x[batch_items] for x in self.present.values()]).any(dim=0)]
            if len(batch_items):
                feats = self.features if features is None else features
                content = model.content_only(
                    {m: x[batch_items] for m, x in feats.items()}, {m: x[batch_items] for m, x in self.present.items()}
                )  # [B', D]
                loss = loss + cfg.align_weight * alignment_loss(content, item_vecs[batch_items].detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:  # (torch's multi-tensor ops, as its optimisers use them)
            with torch.no_grad():
                torch._foreach_lerp_(self.average, self.trained, 1.0 - cfg.ema)
        return float(loss.detach())

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside, the model holds the moving average of its weights (``cfg.ema > 0``; else
        its weights as they are); the trained weights come back on exit."""
        if self.average is None:
            yield
            return
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.trained]
            torch._foreach_copy_(self.trained, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.trained, kept)

    def fit(self) -> TrainResult:
        """Train with early stopping; the model ends holding its best validation state (with
        ``ema``: the average's; without a validation split: the last weights, or their average)."""
        cfg = self.cfg
        if self.average is not None:  # the average starts from the weights training starts from
            with torch.no_grad():  # (a fine-tuning run loads them after __init__)
                torch._foreach_copy_(self.average, self.trained)
        best, best_epoch, best_state, bad = -1.0, 0, None, 0
        last_finite: tuple[dict[str, Any], int] | None = None  # without validation: (state, epoch) to fall back on
        start_row: dict[str, float] = {}
        if self.start_valid is not None:  # the starting weights are the one to beat
            best, best_state = self.start_valid[EVAL_KEY], copy.deepcopy(self.state_dict())
            start_row = {"epoch": 0, **{f"valid_{k}": v for k, v in self.start_valid.items()}}
        history: list[dict[str, float]] = []
        seconds = []
        has_valid = bool(self.data.inter.split_mask("valid").any())
        if not has_valid:
            rule = self.data.inter.report.get("split", {}).get("method")  # (none: the file's own split column)
            why = (f"users need at least 3 interactions for the {rule} split to give one, or give a split column"
                   if rule in ("random", "temporal") else "the file's split column has no 'valid' rows")
            logger.warning("no validation interactions (%s): no early stopping, every one of the %d epochs runs and "
                           "the last one's weights (their average, with ema) are kept", why, cfg.epochs)
        # Advanced at each epoch's end, before the early-stop line (iterating the bar counted an epoch when
        # the next one began: it stood one short when training stopped, and any redraw between showed that).
        bar = tqdm(total=cfg.epochs, desc="training", unit="epoch", disable=not self.show_progress)
        for epoch in range(1, cfg.epochs + 1):
            t = time.perf_counter()
            order = self.rng.permutation(len(self.train_users))
            if cfg.edge_dropout > 0:
                self.epoch_graph = prune_edges(self.edge_index, self.model.num_users + self.model.num_items,
                                               cfg.edge_dropout, self.rng)
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                losses.append(self.step(self.train_users[idx], self.train_items[idx]))
            if self.tuner is not None:
                self.tuner.end_epoch(self.features)
            seconds.append(time.perf_counter() - t)
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": seconds[-1]}
            # Diverged: the weights are NaN or inf from here on. (The loss is each step's before its update,
            # so the epoch's last step, the only one on small data, could leave NaN weights behind a finite
            # loss: validation then failed on NaN scores and the best epoch was lost.) Weights finite but so
            # large that the scores overflow (an lr of 1e30) are found by validation, below.
            diverged = not np.isfinite(row["loss"]) or not all(bool(torch.isfinite(p).all())
                                                                for p in self.model.parameters())
            metrics = None
            if not diverged and has_valid and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                with self.averaged():  # (validated, and kept when best, as the moving average)
                    try:
                        metrics = self.validate("valid")
                    except NonFiniteScores:
                        diverged = True
                    else:
                        score = metrics[EVAL_KEY]
                        if score > best:
                            best, best_epoch, bad = score, epoch, 0
                            best_state = copy.deepcopy(self.state_dict())
                        else:
                            bad += 1
            if diverged and not has_valid and last_finite is not None:  # (it lost every epoch before)
                best_state, best_epoch = last_finite
            if diverged:
                if best_state is None:
                    keep = "any validated state" if has_valid else "a finite epoch"
                    raise MMRecError(f"training diverged at epoch {epoch} (loss {row['loss']}), before {keep} to "
                                     f"keep: lower the learning rate (--lr, now {cfg.lr:g})")
                logger.warning("training diverged at epoch %d (loss %s): stopped, keeping the %s weights so far "
                               "(epoch %d); a lower learning rate (--lr, now %g) may train further", epoch,
                               row["loss"], "best" if has_valid else "last finite", best_epoch, cfg.lr)
                # (NaN in the history made train_report.json no JSON a strict parser reads)
                history.append(row | {"loss": row["loss"] if np.isfinite(row["loss"]) else None, "diverged": True})
                break
            if metrics is not None:
                row |= {f"valid_{k}": v for k, v in metrics.items()}
                logger.info(
                    "epoch %d loss %.4f valid recall@20 %.4f ndcg@20 %.4f (%.1fs)",
                    epoch, row["loss"], score, metrics.get("ndcg@20", float("nan")), seconds[-1],
                )
                # shown at the bar's next redraw (not forcing one: a bar in a log file redraws seldom)
                bar.set_postfix(loss=f"{row['loss']:.4f}", r20=f"{score:.4f}", best=f"{best:.4f}", refresh=False)
            else:
                logger.info("epoch %d loss %.4f (%.1fs)", epoch, row["loss"], seconds[-1])
            if not has_valid and epoch < cfg.epochs:  # kept should a later epoch diverge (the last needs no copy)
                with self.averaged():
                    last_finite = (copy.deepcopy(self.state_dict()), epoch)
            history.append(row)
            bar.update(1)
            if has_valid and bad >= cfg.patience:
                logger.info("early stop at epoch %d: best valid recall@20 %.4f at epoch %d", epoch, best, best_epoch)
                break
        bar.close()
        if best_state is not None:
            self.load_state_dict(best_state)
        else:
            best_epoch = len(history)
            if self.average is not None:  # no validation: the model ends holding the average
                with torch.no_grad():
                    torch._foreach_copy_(self.trained, self.average)
        best_row = next((h for h in [start_row, *history] if h.get("epoch") == best_epoch), {})
        return TrainResult(
            best_epoch=best_epoch,
            best_valid={k[6:]: v for k, v in best_row.items() if k.startswith("valid_")},
            history=history,
            seconds_per_epoch=float(np.mean(seconds)),
        )
