"""The ``Recommender`` facade: one directory, every question a user asks of it.

A directory made by ``mmrec index build`` answers :meth:`similar`, :meth:`search_text` and
:meth:`search_image`; one made by ``mmrec train`` answers :meth:`recommend` too (and is
evaluated by :func:`mmrec.pipeline.evaluate_directory`). The facade only delegates: retrieval to
:class:`ItemIndex`, the content path to the trained :class:`fusion.FusedGraphModel`.

A trained directory adds to the index files (see :mod:`mmrec.item_index`)::

    config.json          TrainConfig + model sizes + the MIPS norm bound
    model.safetensors    fusion / projection / graph weights
    users.json           user ids, and the item ids of the training item space
    users.safetensors    user vectors [U, D], each user's known items (CSR) and, when a
                         rating threshold left some of them out, each user's liked items (CSR)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file as load_torch, save_file as save_torch
from tqdm.auto import tqdm

from fusion.foldin import HistoryFoldIn, history_mean
from fusion.model import FusedGraphModel
from index import IndexFormatError
from index.mips import MipsTransform
from index.persist import MANIFEST_NAME, leftovers
from mmrec.coldstart import blend_with_neighbours, neighbour_mean
from mmrec.config import TrainConfig, load_config, save_config
from mmrec.diversity import check_weight, mmr_rerank
from mmrec.errors import ConfigError, MMRecError, UnknownIdError, check_count
from mmrec.explain import (DEFAULT_HISTORY, ItemExplanation, explain_history, explain_item, explain_recommendations,
                           explain_similar)
from mmrec.foldin import DEFAULT_FOLD_IN_REG
from mmrec.ids import id_list, id_shown, one_id, too_long
from mmrec.item_index import ItemIndex, MipsVectorizer, Result, read_whole
from mmrec.typing import ItemId, UserId

logger = logging.getLogger(__name__)

TRAINED_FILES = ["config.json", "model.safetensors", "users.json", "users.safetensors"]


class TrainedContent(MipsVectorizer):
    """Index vectors of a trained model for items and queries known only by their content.

    A new item (or a text / image query) is fused from its modality features with the ID
    token masked (:meth:`FusedGraphModel.content_only`), then multiplied by ``cold_scale``, the
    factor that puts content-only vectors on the score scale of trained item vectors
    (:func:`mmrec.pipeline.content_scale`: matched over the training pairs), so they compete
    with warm items in one ranking. Items without training interactions get their index vectors this way at training
    time too. Items similar to an item are the items a user placed at that item's vector would
    score highest.

    Args:
        model: the trained model (put in eval mode).
        mips: the index's MIPS transform.
        cold_scale: factor applied to content-only item vectors.
        neighbours: how many indexed items a new item borrows from (0: none).
        neighbour_weight: weight of the item's own content-path direction in that blend.
        centers: modality -> ``[D_m]`` mean that the content similarity choosing those items is
            measured from (:func:`fusion.fixed.modality_centers`); default none.
    """

    query_by_cosine = True  # text / image queries: see ItemIndex._search_queries

    def __init__(self, model: FusedGraphModel, mips: MipsTransform, cold_scale: float,
                 neighbours: int = 0, neighbour_weight: float = 0.5,
                 centers: dict[str, np.ndarray] | None = None) -> None:
        super().__init__(mips)
        self.model = model.eval()
        self.cold_scale = cold_scale
        self.neighbours = neighbours
        self.neighbour_weight = neighbour_weight
        self.centers = dict(centers or {})

    @torch.no_grad()
    def content_only(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """Raw ``[N, D]`` content-only vectors of the model (modalities it lacks are an error)."""
        unknown = set(features) - set(self.model.modality_dims)
        if unknown:
            raise ConfigError(
                f"the model was trained without the modalities {sorted(unknown)} "
                f"(it knows {list(self.model.modality_dims) or 'none: it is ID-only'})"
            )
        if not self.model.modality_dims:
            raise ConfigError("an ID-only model cannot place items or queries by content: train with content")
        feats = {m: torch.from_numpy(np.asarray(x, np.float32)) for m, x in features.items()}
        has = {m: torch.from_numpy(np.asarray(present[m], bool)) for m in features}
        return self.model.content_only(feats, has).cpu().numpy()

    def content_vectors(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray],
                        pool: tuple[dict, dict, np.ndarray] | None = None,
                        exclude: np.ndarray | None = None) -> np.ndarray:
        """``[N, D]`` vectors of items known by content: content-only, blended with the mean of
        their ``neighbours`` nearest ``pool`` items' vectors when a pool is given, times
        ``cold_scale``.

        Args:
            features, present: the items' modality vectors and presence.
            pool: ``(features, present, vectors [P, D])`` of the indexed items to borrow from.
            exclude: per item, a pool row it may not pick (``-1``: none).
        """
        c = self.content_only(features, present)  # [N, D]
        if pool is not None and self.neighbours > 0 and len(pool[2]):
            n = neighbour_mean(features, present, pool[0], pool[1], pool[2], self.neighbours, exclude,
                               centers=self.centers)
            c = blend_with_neighbours(c, n, self.neighbour_weight)
        return c * self.cold_scale

    def item_vectors(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray],
                     pool: tuple[dict, dict, np.ndarray] | None = None) -> np.ndarray:
        return self.mips.items(self.content_vectors(features, present, pool))

    @property
    def tokens(self) -> list[str]:
        """The model's token names: its modalities, then ``id`` when it has ID embeddings."""
        return list(self.model.modalities)

    @torch.no_grad()
    def attention(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """``[N, T]`` attention of content-only items (the ``id`` column is exactly 0)."""
        self.content_vectors(features, present)  # the same checks
        feats = {m: torch.from_numpy(np.asarray(x, np.float32)) for m, x in features.items()}
        has = {m: torch.from_numpy(np.asarray(present[m], bool)) for m in features}
        return self.model.item_content(feats, has, item_ids=None)[1].numpy()

    def query_vector(self, modality: str, vector: np.ndarray, dims: dict[str, int]) -> np.ndarray:
        q = self.content_vectors({modality: vector.reshape(1, -1)}, {modality: np.ones(1, bool)})
        return self.mips.queries(q)




class _NoMetaDraws(torch.overrides.TorchFunctionMode):
    """Random draws into meta tensors (``normal_``, as ``nn.Embedding`` and the model's own
    initialisation make) returned untouched, for a model built on the meta device whose weights
    all come from a file: on meta tensors ``normal_`` goes through ``torch._refs``, whose first use
    imports ``torch._dynamo`` (0.85 s and about 150 MB of each process's first load, measured).
    Torch function modes are per thread: nothing else running is affected."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "normal_":  # Tensor.normal_(self, ...), nn.init.normal_(tensor=...)
            target = args[0] if args else kwargs.get("tensor")
            if getattr(target, "is_meta", False):
                return target
        return func(*args, **kwargs)


class Recommender:
    """Similar items, content search, user recommendations and evaluation from one directory.

    Args:
        items: the item index.
        model: the trained model, or ``None`` for a content-only index.
        config: its training configuration.
        user_ids: external user ids, in user-vector order.
        user_vectors: ``[U, D]`` trained user vectors.
        known: ``[U, N_train]`` CSR of each user's interactions (excluded from recommendations).
        liked: ``[U, N_train]`` CSR of each user's positives: ``known`` less the pairs rated
            below the training rating threshold (the history that explanations name and that
            :meth:`recommend_history` starts a known user from). ``None``: every known pair.
        train_item_ids: the item ids of ``known``'s columns.
        cold_items: items held out of training under the cold-start protocol.
        split_rule: how the training split was made (``given``, ``random``, ``temporal``;
            ``auto`` in directories trained before the rule was recorded resolved); evaluation
            rebuilds it the same way by default.
        rating_threshold: the implicit-feedback threshold applied at training time, if any.
        fold_in_reg: the ridge of :meth:`recommend_history`'s fold-in (chosen on validation by
            :func:`mmrec.foldin.select_fold_in_reg` when trained).
        split_keys: the keys of the random split it was trained on (:func:`mmrec.split.split_random`):
            ``"pairs"``, or ``"rows"`` for directories from before the pair keys; evaluation
            rebuilds the split with them.
        skip_invalid: whether training skipped invalid interaction rows (``--skip-invalid``);
            evaluation skips them too, before rebuilding the split.
        skipped_items: the catalog rows training skipped as invalid (``--skip-invalid``);
            evaluation drops their interaction rows too, before rebuilding the split.
        items_from_interactions: the model's items are the interaction file's (no catalog, no
            feature files): an item rated only below ``rating_threshold`` is none of them, and
            evaluation reads its rows as below the threshold, not as unknown items.
        untrained_users: users with no training interaction whose vectors are their random start
            (their rows are all validation or test rows): :meth:`recommend` warns for them.
    """

    def __init__(
        self,
        items: ItemIndex,
        model: FusedGraphModel | None = None,
        config: TrainConfig | None = None,
        user_ids: Sequence[UserId] = (),
        user_vectors: np.ndarray | None = None,
        known: sp.csr_matrix | None = None,
        train_item_ids: Sequence[ItemId] = (),
        cold_items: Sequence[ItemId] = (),
        split_rule: str = "auto",
        rating_threshold: float | None = None,
        fold_in_reg: float = DEFAULT_FOLD_IN_REG,
        liked: sp.csr_matrix | None = None,
        split_keys: str = "pairs",
        skip_invalid: bool = False,
        skipped_items: Sequence[ItemId] = (),
        items_from_interactions: bool = False,
        untrained_users: Sequence[UserId] = (),
    ) -> None:
        self.items = items
        self.model = model
        self.config = config
        self.user_ids = list(user_ids)
        self.user_vectors = user_vectors
        self.known = known
        self.liked = known if liked is None else liked
        self.train_item_ids = list(train_item_ids)
        self.cold_items = list(cold_items)  # held out of training (cold-start protocol)
        self.split_rule = split_rule
        self.rating_threshold = rating_threshold
        self.fold_in_reg = fold_in_reg
        self.split_keys = split_keys
        self.skip_invalid = skip_invalid
        self.skipped_items = list(skipped_items)
        self.items_from_interactions = items_from_interactions
        self.untrained_users = list(untrained_users)
        self._untrained = {str(u) for u in self.untrained_users}
        self._warned: set[str] = set()  # untrained users already warned about (a server: once each, not a request)
        self._user_pos = {u: i for i, u in enumerate(self.user_ids)}
        self._user_pos_str = {str(u): i for i, u in enumerate(self.user_ids)}
        self._foldin: tuple[np.ndarray, HistoryFoldIn] | None = None  # (the vectors it was built on, it)

    def __repr__(self) -> str:
        kind = "trained" if self.model is not None else "content"
        return f"Recommender({kind}, items={len(self.items)}, users={len(self.user_ids)})"

    @property
    def trained(self) -> bool:
        return self.model is not None

    # ------------------------------------------------------------------------------ persist
    @classmethod
    def load(cls, directory: str | Path, *, show_progress: bool = True) -> "Recommender":
        """Open an index or trained directory: all its files of one version (read again when
        another command rewrote it meanwhile, :func:`mmrec.item_index.read_whole`)."""
        directory = Path(directory)
        return read_whole(directory, lambda: cls._load_once(directory, show_progress=show_progress))

    @classmethod
    def _load_once(cls, directory: Path, *, show_progress: bool = True) -> "Recommender":
        items = ItemIndex._load_once(directory, show_progress=show_progress, trained=True)
        if items.manifest.get("kind") != "trained":
            return cls(items)
        missing = [name for name in TRAINED_FILES if not (directory / name).is_file()]
        if missing:
            raise IndexFormatError(f"{directory}: a trained directory without {', '.join(missing)}; train it again "
                                   f"(or restore the files from a copy)")
        unlisted = [name for name in TRAINED_FILES if name not in items.manifest["checksums"]]
        if unlisted:  # as the index's own files: a manifest without them would load them unverified (every
            # trained directory written lists them)
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: 'checksums' does not list {', '.join(unlisted)} "
                                   "(the manifest was edited, or not written by this library)")
        cfg, extra = load_config(TrainConfig, directory / "config.json")
        # config.json sorts its keys; the manifest's tokens keep the model's token order, which is
        # the column order of the stored attention weights (and of those of items added later).
        dims = extra["modality_dims"]
        dims = {m: dims[m] for m in items.manifest.get("tokens", []) if m in dims} | dims
        from mmrec.train import build_model

        with torch.device("meta"), _NoMetaDraws():  # no random start to draw: every weight comes from the file
            model = build_model(cfg, extra["num_users"], extra["num_items"], dims)
        model.load_state_dict(load_torch(str(directory / "model.safetensors")), assign=True)
        left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:  # (load_state_dict is strict: only a tensor outside the state dict could be left)
            raise MMRecError(f"{directory / 'model.safetensors'}: no weights for {', '.join(left)}")
        items.vectorizer = TrainedContent(model, MipsTransform(extra["mips_max_norm"]), extra["cold_scale"],
                                          extra.get("cold_neighbours", 0), extra.get("cold_neighbour_weight", 0.5),
                                          items.centers)
        users = json.loads((directory / "users.json").read_text())
        t = load_numpy(str(directory / "users.safetensors"))
        shape = (len(users["user_ids"]), len(users["item_ids"]))

        def csr(name: str) -> sp.csr_matrix:
            indices = t[f"{name}_indices"]
            return sp.csr_matrix((np.ones(len(indices), np.float32), indices, t[f"{name}_indptr"]), shape=shape)

        known = csr("known")
        liked = csr("liked") if "liked_indices" in t else None  # absent: no pair was below a threshold
        return cls(items, model.eval(), cfg, users["user_ids"], t["user_vectors"], known, users["item_ids"],
                   cold_items=extra.get("cold_items", []), split_rule=extra.get("split", "auto"),
                   rating_threshold=extra.get("rating_threshold"),
                   fold_in_reg=extra.get("fold_in_reg", DEFAULT_FOLD_IN_REG), liked=liked,
                   split_keys=extra.get("split_keys", "rows"),  # older directories: one key a row
                   skip_invalid=extra.get("skip_invalid", False), skipped_items=extra.get("skipped_items", []),
                   items_from_interactions=extra.get("items_from_interactions", False),
                   untrained_users=extra.get("untrained_users", []))

    def attach_files(self, extra: dict[str, Any], tuner: Any = None):
        """A writer for :meth:`ItemIndex.save` that adds the trained files to the directory.

        Fine-tuned encoders (``tuner``) are saved under ``encoders/<modality>/`` and the
        manifest's encoder entries point there, so queries use the tuned weights.
        """

        def write(tmp: Path) -> list[str]:
            files = list(TRAINED_FILES)
            if tuner is not None:
                specs = tuner.save(tmp / "encoders")  # modality -> spec with "model": "encoders/<m>"
                self.items.manifest["encoders"].update(specs)
                files += sorted(str(p.relative_to(tmp)) for p in (tmp / "encoders").rglob("*") if p.is_file())
            save_config(self.config, tmp / "config.json", **extra)
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_torch(state, str(tmp / "model.safetensors"))
            (tmp / "users.json").write_text(json.dumps({"user_ids": self.user_ids, "item_ids": self.train_item_ids}))
            arrays = {
                "user_vectors": np.ascontiguousarray(self.user_vectors, np.float32),
                "known_indptr": self.known.indptr.astype(np.int64),
                "known_indices": self.known.indices.astype(np.int64),
            }
            if self.liked is not self.known:  # pairs rated below the threshold: known, not liked
                arrays |= {"liked_indptr": self.liked.indptr.astype(np.int64),
                           "liked_indices": self.liked.indices.astype(np.int64)}
            save_numpy(arrays, str(tmp / "users.safetensors"))
            return files

        return write

    # ------------------------------------------------------------------------------ queries
    def similar(self, item_id: object, k: int = 10, *, explain: bool = False, by: str = "index",
                exclude: Sequence[object] = (), only: Sequence[object] | None = None) -> list[Result]:
        """The k items most similar to an item (``by``, ``exclude`` and ``only`` as
        :meth:`ItemIndex.similar`); ``explain`` attaches each one's attention weights and
        per-modality similarity to the item (:func:`mmrec.explain.explain_similar`)."""
        results = self.items.similar(item_id, k, by=by, exclude=exclude, only=only)
        return explain_similar(self.items, item_id, results) if explain else results

    def explain(self, item_id: object, k: int = 5) -> ItemExplanation:
        """An item's attention weights and nearest neighbours per modality and fused
        (:func:`mmrec.explain.explain_item`)."""
        return explain_item(self.items, item_id, k)

    def similar_many(self, item_ids: Sequence[object], k: int = 10, *, by: str = "index", batch_size: int = 1024,
                     show_progress: bool = False, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None) -> list[list[Result]]:
        """:meth:`similar` for many items, batched (:meth:`ItemIndex.similar_many`); no ``explain``."""
        return self.items.similar_many(item_ids, k, by=by, batch_size=batch_size, show_progress=show_progress,
                                       exclude=exclude, only=only)

    def search_text(self, text: str, k: int = 10, *, exclude: Sequence[object] = (),
                    only: Sequence[object] | None = None, by: str = "index") -> list[Result]:
        """The k items closest to a text query (``by="content"``: by the items' own text features
        alone, as the untrained content index ranks; :meth:`ItemIndex.search_texts`)."""
        return self.items.search_text(text, k, exclude=exclude, only=only, by=by)

    def search_texts(self, texts: Sequence[str], k: int = 10, *, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None, by: str = "index") -> list[list[Result]]:
        """:meth:`search_text` for many queries, encoded together (:meth:`ItemIndex.search_texts`)."""
        return self.items.search_texts(texts, k, exclude=exclude, only=only, by=by)

    def search_image(self, path: str | Path, k: int = 10, *, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None, by: str = "index") -> list[Result]:
        return self.items.search_image(path, k, exclude=exclude, only=only, by=by)

    def search_images(self, paths: Sequence[str | Path], k: int = 10, *, exclude: Sequence[object] = (),
                      only: Sequence[object] | None = None, by: str = "index") -> list[list[Result]]:
        """:meth:`search_image` for many image files, encoded together (:meth:`ItemIndex.search_images`)."""
        return self.items.search_images(paths, k, exclude=exclude, only=only, by=by)

    def user_index(self, user_id: object) -> int:
        """The user's row in the model; ids are read as item ids are (``"7"`` finds the int id
        ``7``, surrounding spaces ignored; ``True`` is no id)."""
        if not self.trained:
            raise MMRecError("this directory holds a content index, which has no users: run `mmrec train` first, "
                             "or recommend from a history (recommend_history)")
        if isinstance(user_id, (bool, np.bool_)):
            raise UnknownIdError(f"{user_id!r} is not a user id")
        user_id = one_id(user_id)
        if not isinstance(user_id, Hashable) or isinstance(user_id, (tuple, frozenset, np.ndarray)):  # a Series too
            raise MMRecError(f"one user id was expected, got a {type(user_id).__name__}: recommend_many takes several")
        if isinstance(user_id, str):
            user_id = user_id.strip()
        if user_id in self._user_pos:
            return self._user_pos[user_id]
        long = too_long(user_id)
        if long:
            raise UnknownIdError(f"{long} is not known to this model ({len(self.user_ids)} users)")
        text = str(user_id)
        if text in self._user_pos_str:
            return self._user_pos_str[text]
        raise UnknownIdError(f"user '{user_id}' is not known to this model ({len(self.user_ids)} users)")

    def known_items(self, user_id: object) -> list[ItemId]:
        """The items a user interacted with in the training file, in every split (validation and
        test rows too: what serving knows of the user), those rated below the rating threshold
        and those removed from the index since included (never recommended back). To measure
        recommendations against held-out rows, use :func:`mmrec.pipeline.evaluate_directory`, or
        ``recommend(..., exclude_known=False, exclude=<the user's training items>)``."""
        return self._row_items(self.known, self.user_index(user_id))

    def liked_items(self, user_id: object) -> list[ItemId]:
        """The user's positives still in the index: the known items (every split of the training
        file) less those rated below the training rating threshold and those removed since
        (``index remove``). This is the
        history that ``explain`` names and that :meth:`recommend_history` extends for a known user."""
        return [i for i in self._row_items(self.liked, self.user_index(user_id)) if i in self.items._pos]

    def _row_items(self, matrix: sp.csr_matrix, row: int) -> list[ItemId]:
        return [self.train_item_ids[j] for j in matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]]

    def recommend(
        self, user_id: object, k: int = 10, *, exclude_known: bool = True, explain: bool = False,
        history: int = DEFAULT_HISTORY, diversity: float = 0.0, candidates: int | None = None,
        exclude: Sequence[object] = (), only: Sequence[object] | None = None,
    ) -> list[Result]:
        """Top-k items for a user from the FAISS index, known items (:meth:`known_items`: every
        split of the training file) excluded.

        ``exclude``: further item ids never to return (a business rule: out of stock, already in
        the basket), with or without ``exclude_known``; ids not in the index are ignored.
        ``only``: ``None`` (every item) or the candidate ids, nothing outside them returned (a
        category, a region's stock; :meth:`ItemIndex.matching` builds it from display fields).

        The index over-fetches and refills, so exactly k results come back whenever k items
        remain, even with an approximate index. ``explain`` attaches to each result its
        attention weights and the (at most ``history``) items of the user's history most similar
        to it (:func:`mmrec.explain.explain_recommendations`).

        ``diversity`` (``w`` in ``[0, 1]``, default 0: off) re-ranks the top ``candidates``
        (default ``max(5 k, 50)``) by maximal marginal relevance (:mod:`mmrec.diversity`) over the
        cosine of the model's item vectors; scores stay the model's scores.
        """
        if not self.trained:
            raise MMRecError("this directory holds a content index, not a trained model: run `mmrec train` first")
        diversity = check_weight(diversity)
        row = self.user_index(user_id)
        self._warn_untrained([row])
        known = set(self.known_items(user_id)) if exclude_known else None
        results = self._serve(self.user_vectors[row : row + 1], k, known, diversity, candidates,
                              *self.items.filters(exclude, only))
        return explain_recommendations(self, user_id, results, history) if explain else results

    def info(self) -> dict[str, Any]:
        """What this directory holds (``mmrec index info``): kind, counts, the FAISS index and its
        search setting, the modalities and encoders, and for a trained directory its training
        configuration and the summary of ``train_report.json`` (best epoch, epochs run, seconds
        per epoch, validation and test Recall / NDCG @10 / @20)."""
        m, index = self.items.manifest, self.items.index
        out: dict[str, Any] = {
            "directory": None if self.items.directory is None else str(self.items.directory),
            "kind": "trained" if self.trained else "content",
            "format_version": m.get("format_version"),
            "written": m.get("created"),  # the manifest's time: set again by every save (index add, remove, ...)
            "items": len(self.items),
            "users": len(self.user_ids),
            "index": {"factory": index.factory, "dim": index.dim}
            | ({index.knob: getattr(index, index.knob)} if index.knob else {}),
            "modalities": {mod: {"weight": m.get("weights", {}).get(mod), "centered": mod in m.get("centered", []),
                                 "masked": mod in m.get("masked", [])}
                           for mod in self.items.modalities},
            # items placed by content since the catalog means were taken (index add / update)
            "placed_since_build": int(m.get("placed_since_build", 0)),
            "encoders": dict(m.get("encoders", {})),
            # What `index add` encodes from a new catalog: only the modalities an encoder gives.
            "catalog": {"text_fields": list(m.get("text_fields") or []) if "text" in m.get("encoders", {}) else [],
                        "image_field": m.get("image_field") if "image" in m.get("encoders", {}) else None,
                        "mask_bad_images": bool(m.get("mask_bad_images", False))},
            # versions an interrupted write left beside the directory (whole copies, maybe): a person deletes them
            "left_beside": [] if self.items.directory is None else
            [str(p) for p in leftovers(Path(os.path.realpath(self.items.directory)))],
        }
        if not self.trained:
            return out
        out["config"] = dataclasses.asdict(self.config)
        out["cold_items"] = len(self.cold_items)
        path = None if self.items.directory is None else self.items.directory / "train_report.json"
        if path is not None and path.is_file():
            report = json.loads(path.read_text(encoding="utf-8"))
            pick = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
            out["training"] = {
                "best_epoch": report.get("best_epoch"), "epochs_run": len(report.get("history", [])),
                "seconds_per_epoch": report.get("seconds_per_epoch"),
                **{part: {k: report[part][k] for k in pick if k in report[part]}
                   for part in ("valid", "test") if isinstance(report.get(part), dict)},
            }
        return out

    def tune_search(self, recall: float = 0.99, k: int = 10, *, sample: int = 2000, seed: int = 0,
                    save: bool = True) -> dict[str, Any]:
        """Set the index's search knob (IVF ``nprobe``, HNSW ``ef_search``) to the smallest
        setting whose recall@k reaches ``recall`` for the queries this directory answers.

        Measured with :meth:`index.FaissIndex.sweep_knob` on up to ``sample`` random items, as
        :meth:`similar` queries them (the item itself excluded), and for a trained directory as
        many random users, as :meth:`recommend` queries them (their known items excluded);
        the recall is against the index's own exhaustive search. The setting chosen is the
        larger of the two kinds' and, with ``save`` on an index opened from disk, written to
        the directory in place (atomically), where ``mmrec serve`` picks it up; without ``save``
        it is set on this object alone, as :meth:`set_search` sets it (a later write of the
        directory from this object, ``add`` or ``remove``, saves it: to measure only, set ``before``
        back with ``set_search(result["before"], save=False)``).

        Returns:
            ``{"factory", "knob", "before", "value", "recall", "reached", "k", "saved", "sweeps":
            {"items": [...], "users": [...]}}``, each sweep the rows of ``sweep_knob``; ``recall``
            is the target, ``reached`` each query kind's recall where its sweep stopped (at
            ``value``, or below it when the other kind needed more: ``value`` searches at least as
            wide).

        Raises:
            MMRecError: a Flat index (exact: nothing to tune), an empty index, ``recall`` outside
                ``(0, 1]``, ``k`` or ``sample`` below 1, queries that leave nothing to find (a
                one-item index); before any work, a directory that cannot be rewritten in place
                (:func:`mmrec.item_index.check_rewrite`) or that another command rewrote since it
                was loaded.
        """
        index = self.items.index
        if index.knob is None:
            raise MMRecError(f"this index is {index.factory}: exact search, nothing to tune (for approximate search, "
                             f"mmrec index rebuild --factory IVF{{n}},Flat or HNSW{{M}} first; rebuild(factory) in Python)")
        if isinstance(recall, bool) or not isinstance(recall, (int, float, np.integer, np.floating)) \
                or not 0.0 < recall <= 1.0:
            raise MMRecError(f"recall must be a number in (0, 1], got {recall!r}")
        k, sample = check_count(k), check_count(sample, "sample")
        if not len(self.items):
            raise MMRecError("the index is empty: nothing to tune")
        if save and self.items.directory is not None:
            self.items._check_in_place()  # before the sweep, not after: foreign files, another writer
        rng = np.random.default_rng(seed)

        def pick(n: int) -> np.ndarray:
            return np.sort(rng.choice(n, min(sample, n), replace=False))

        kinds = {"items": self.items.similar_queries(pick(len(self.items)))}
        if self.trained and self.user_ids:
            kinds["users"] = self._user_queries(pick(len(self.user_ids)))
        sweeps = {}
        for kind, (q, ex) in kinds.items():
            logger.info("measuring %s's recall@%d on %d %s", index.knob, k, len(q), kind)
            try:
                sweeps[kind] = index.sweep_knob(q, k, exclude=ex, target=recall)
            except ValueError as e:  # e.g. a one-item index: similar() leaves it nothing to return
                raise MMRecError(f"cannot measure the {kind}' queries: {e}") from e
        before = getattr(index, index.knob)
        value = max(sweep[-1]["value"] for sweep in sweeps.values())  # each sweep stops at its first hit
        saved = self.set_search(value, save=save)
        reached = {kind: sweep[-1]["recall"] for kind, sweep in sweeps.items()}
        # Where only the exhaustive setting reaches the target, the graph is no help: say so.
        short = {kind: sweep[-2] for kind, sweep in sweeps.items()
                 if index.knob == "ef_search" and len(sweep) > 1 and sweep[-1]["value"] >= index.knob_top}
        if short:
            logger.warning("only efSearch %d, the number of stored vectors, reaches recall %g: every search now scans "
                           "them all, as Flat does (%s); an HNSW graph with more links (`mmrec index rebuild --factory "
                           "HNSW32`, or more) or Flat is faster", value, recall,
                           ", ".join(f"{kind}: {row['recall']:.4f} at efSearch {row['value']}" for kind, row in short.items()))
        return {"factory": index.factory, "knob": index.knob, "before": before, "value": value, "recall": recall,
                "reached": reached, "k": k, "saved": saved, "sweeps": sweeps}

    def set_search(self, value: int, *, save: bool = True) -> bool:
        """Set the index's search knob (:attr:`index.FaissIndex.knob`: IVF ``nprobe``, HNSW
        ``ef_search``) and, with ``save`` on an index opened from disk, write it to the directory
        in place (atomically; a failed write leaves both the directory and this object as they
        were). Returns whether it was written. Without ``save`` the setting is this object's,
        and any later write of the directory from it (``add``, ``remove``, ``rebuild``) saves it.

        Raises:
            MMRecError: a Flat index, a value out of the knob's range; a directory that cannot be
                rewritten in place.
        """
        index = self.items.index
        if index.knob is None:
            raise MMRecError(f"this index is {index.factory}: exact search has no nprobe or ef_search to set")
        before = getattr(index, index.knob)
        try:
            setattr(index, index.knob, value)
        except ValueError as e:
            raise MMRecError(str(e)) from e
        if not (save and self.items.directory is not None):
            return False
        try:
            self.items.save(self.items.directory)
        except BaseException:
            setattr(index, index.knob, before)
            raise
        return True

    def recommend_many(
        self, user_ids: Sequence[object], k: int = 10, *, exclude_known: bool = True, batch_size: int = 1024,
        show_progress: bool = False, exclude: Sequence[object] = (), only: Sequence[object] | None = None,
    ) -> list[list[Result]]:
        """Top-k for many users: what :meth:`recommend` returns for each, in ``user_ids`` order,
        from batched FAISS searches instead of one per user (:meth:`index.FaissIndex.search`
        fetches k plus each user's known items, users whose counts are within a factor of two
        sharing one call, then refills).

        ``exclude`` and ``only`` (as for :meth:`recommend`) apply to every user.

        For exports (a nightly batch of every user's recommendations); ``explain`` and
        ``diversity`` stay per user (:meth:`recommend`). With an exact or IVF index the results
        are :meth:`recommend`'s; HNSW searches each such group as deep as its user with the most
        known items needs, so it can find items a single search would have missed. A batched
        product may round a score differently from a single one (one float32 ulp).

        Raises:
            MMRecError: a content index, an unknown user (named before any search), ``k < 1``,
                ``batch_size < 1``.
        """
        if not self.trained:
            raise MMRecError("this directory holds a content index, not a trained model: run `mmrec train` first")
        k, batch_size = check_count(k), check_count(batch_size, "batch_size")
        rows = [self.user_index(u) for u in id_list(user_ids)]  # "u1" is one user, not "u" and "1"
        self._warn_untrained(rows)
        dropped, allowed = self.items.filters(exclude, only)
        out: list[list[Result]] = []
        with tqdm(total=len(rows), desc="recommending", unit="user", disable=not show_progress) as bar:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                queries, known = self._user_queries(batch, exclude_known)
                out += self.items.search_vectors(queries, k, exclude=known, exclude_all=dropped, only=allowed)  # [B]
                bar.update(len(batch))
        return out

    def _warn_untrained(self, rows: Sequence[int]) -> None:
        """Warn, once per user and object, about the users at ``rows`` with no training
        interaction: their vectors are the random start, and answering by them said nothing."""
        pending = self._untrained - self._warned  # (once: it was taken anew for every row)
        if not pending:
            return
        new = list(dict.fromkeys(self.user_ids[r] for r in rows if str(self.user_ids[r]) in pending))
        if not new:
            return
        self._warned.update(str(u) for u in new)
        named = ", ".join(repr(u) for u in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        logger.warning("user(s) %s had no training interaction: their vectors are the random start they were given, so "
                       "these recommendations are chance; recommend --history (recommend_history([], user=...)) "
                       "places a user by their items", named)

    def _user_queries(self, rows: Sequence[int], exclude_known: bool = True) -> tuple[np.ndarray, list[set] | None]:
        """What :meth:`recommend_many` sends the index for the users at these rows: their queries
        ``[B, D + 1]`` and, per query, the ids it excludes (the user's known items)."""
        exclude = [set(self._row_items(self.known, r)) for r in rows] if exclude_known else None
        return self.items.vectorizer.mips.queries(self.user_vectors[rows]), exclude

    def recommend_history(
        self, items: Sequence[object] | ItemId = (), k: int = 10, *, user: object = None, method: str = "auto",
        exclude_history: bool = True, explain: bool = False, explain_items: int = DEFAULT_HISTORY,
        diversity: float = 0.0, candidates: int | None = None, exclude: Sequence[object] = (),
        only: Sequence[object] | None = None,
    ) -> list[Result]:
        """Top-k items for a history of item ids: a user the model never trained on, an
        anonymous session, or a known user with the items they chose since training (``user``).

        The history becomes one user vector against the index's item vectors, then the index
        answers as for :meth:`recommend` (history excluded, over-fetch and refill, ``diversity``):

        * ``method="fold-in"`` (the default for a trained directory): the least-squares fold-in of
          :class:`fusion.foldin.HistoryFoldIn`, every other item weighing against the history,
          with the ridge ``fold_in_reg`` (chosen on validation when the model was trained);
        * ``method="mean"`` (the default for a content index): the mean of the history's item
          vectors, so an item scores its mean similarity to the history (for a content index,
          the centred content cosine, as ``similar``).

        With ``user``, a user the model trained on, the history is that user's liked items
        (:meth:`liked_items`) followed by ``items`` (which may then be empty), and every known
        item of the user is excluded as well: the answer once a user has chosen more items since
        training, without retraining.

        Items added with ``index add`` may be in the history. ``explain`` attaches to each
        result its attention weights and the (at most ``explain_items``) history items most
        similar to it.

        A single id (a string or an int) is a history of one item. Ids not in the index (items
        removed since, or typos) are left out with a warning, as long as one item (or ``user``'s
        liked items) remains. ``exclude`` (as for :meth:`recommend`) is left out whatever
        ``exclude_history`` says; ``only`` (as for :meth:`recommend`) restricts the answer, not
        the history.

        Raises:
            MMRecError: an empty history, one none of whose ids is in the index, an unknown
                ``user``, an unknown ``method``, or history vectors that sum to zero (no direction
                to rank by).
        """
        if method not in ("auto", "fold-in", "mean"):
            raise ConfigError(f"method must be 'auto', 'fold-in' or 'mean', got {method!r}")
        diversity = check_weight(diversity)
        given = id_list(items)  # "12" is item 12, not the items "1" and "2"
        found = [self.items._try_resolve(i) for i in given]
        ids = [i for i in found if i is not None]
        missing = [id_shown(g) for g, i in zip(given, found) if i is None]
        if missing:  # removed from the catalog since (out of stock), or a typo: the others still place the user
            names = ", ".join(f"'{m}'" for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
            if not ids and user is None:
                raise UnknownIdError(f"history item{'s' if len(missing) > 1 else ''} {names} "
                                     f"{'are' if len(missing) > 1 else 'is'} not in this index ({len(self.items)} "
                                     f"items): no history left to recommend from")
            logger.warning("%d history item(s) not in this index left out (removed, or never added): %s",
                           len(missing), names)
        history_set = set(ids)
        if user is not None:
            if not self.trained:
                raise MMRecError("this directory holds a content index, which has no users: give the history alone")
            ids = self.liked_items(user) + ids
            history_set.update(self.known_items(user))
        ids = list(dict.fromkeys(ids))
        if not ids and user is not None and missing:  # ids were given, and none is in the index: as without a user
            raise UnknownIdError(f"the history is empty: user '{user}' has no liked items in this index, and the "
                                 f"history items given ({names}) are not in it either")
        if not ids:
            raise MMRecError(f"the history is empty: user '{user}' has no liked items in this index, give item ids"
                             if user is not None else "the history is empty: give at least one item id")
        rows = [self.items._pos[i] for i in ids]
        if method == "auto":
            method = "fold-in" if self.trained else "mean"
        mips = self.items.vectorizer.mips
        if method == "mean":
            vector = history_mean(mips.original(self.items.vectors[rows]), [range(len(rows))])  # [1, D]
        else:
            if self._foldin is None or self._foldin[0] is not self.items.vectors:  # the index changed (add, remove)
                self._foldin = (self.items.vectors, HistoryFoldIn(mips.original(self.items.vectors)))
            if self._foldin[1].reg != self.fold_in_reg:  # the Gram matrix stays
                self._foldin = (self._foldin[0], self._foldin[1].with_settings(reg=self.fold_in_reg))
            vector = self._foldin[1]([rows])  # [1, D]
        if not np.any(vector):
            raise MMRecError("the history's vectors sum to zero: it has no direction to rank items by")
        results = self._serve(vector, k, history_set if exclude_history else None, diversity, candidates,
                              *self.items.filters(exclude, only))
        return explain_history(self.items, ids, results, explain_items) if explain else results

    def _serve(self, user: np.ndarray, k: int, exclude: set | None, diversity: float,
               candidates: int | None, exclude_all: set = frozenset(), only: set | None = None) -> list[Result]:
        """Top-k for one ``[1, D]`` user vector: FAISS over the index, ``exclude`` (the user's own
        items) and ``exclude_all`` (a business rule's, hidden inside FAISS) left out, within
        ``only`` when given, then the MMR re-ranking of the top ``candidates`` when ``diversity`` > 0."""
        k = check_count(k)
        if candidates is not None:
            candidates = check_count(candidates, "candidates")
        q = self.items.vectorizer.mips.queries(user)  # [1, D + 1]
        exclude_list = [exclude] if exclude else None
        if diversity == 0.0:
            return self.items.search_vectors(q, k, exclude=exclude_list, exclude_all=exclude_all, only=only)[0]
        pool = self.items.search_vectors(q, max(candidates or max(5 * k, 50), k), exclude=exclude_list,
                                         exclude_all=exclude_all, only=only)[0]
        vecs = self.items.vectorizer.mips.original(
            self.items.vectors[[self.items._pos[r.item_id] for r in pool]])  # [C, D]
        picks = mmr_rerank(np.array([r.score for r in pool]), vecs, k, diversity) if pool else []
        return [pool[i] for i in picks]
