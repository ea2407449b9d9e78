"""Fine-tuning the content encoders together with the recommender (``--finetune top:N|full``).

``mmrec train`` encodes the catalog once with frozen encoders by default. With
``TrainConfig.finetune`` set to ``top:N`` or ``full``, an :class:`EncoderTuner` makes the text
and image encoders trainable and the :class:`~mmrec.train.Trainer` drives it through four hooks:

* ``param_groups()``: the encoder parameters, one Adam group per modality at
  ``lr * encoder_lr_scale`` (pretrained weights move slower than the freshly initialised
  recommender).
* ``step_features(items, features)``: full-graph training needs the layer-0 vector of *every*
  item at every step, so the cached features of all items are kept and only a random sample of
  at most ``max_items`` of the batch's items (positives and negatives) that have the modality is
  re-encoded with gradients; their rows are replaced out of place (``index_put``), the others
  stay constant. Encoder cost per step is then bounded whatever the batch size.
* ``end_epoch(features)``: re-encodes the whole catalog with the current weights (no gradient,
  batched) and writes the rows in place, so validation and the next epoch see the tuned
  encoders everywhere. This costs one encoding pass over the catalog per epoch (on top of the
  ``max_items`` forward/backward passes per step) -- the price of fine-tuning.
* ``state_dict()`` / ``load_state_dict()``: the trained encoder parameters, so the trainer can
  keep and restore the best epoch.

Modes:

* ``top:N``: every encoder parameter is frozen, then the last N blocks are unfrozen (text:
  transformer layers; images: EfficientNet-Lite MBConv blocks, ResNet stages, ViT layers) with
  what runs after them (final layer norm, head convolution, pooler, projection). N larger than
  an encoder's block count is a :class:`~mmrec.errors.ConfigError`.
* ``full``: every parameter the embedding depends on.

Encoders run in eval mode throughout (a deterministic forward): dropout stays off and batch-norm
layers keep their pretrained statistics, which a step's few images would otherwise overwrite.
Sampling is seeded with ``TrainConfig.seed``; the encoders move to ``TrainConfig.device``.

:meth:`EncoderTuner.save` writes the tuned weights into the model directory (``encoders/text/``
a Hugging Face directory; ``encoders/image/`` a ``weights.pt`` state dict or a Hugging Face
directory) and returns the manifest entries that point there (``"bundled": true``; ``model`` is
always that directory, a state dict adds ``architecture`` and ``weights``), so a loaded
directory encodes queries and new items with the tuned encoders.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from mmrec.config import TrainConfig, parse_finetune
from mmrec.errors import ConfigError

if TYPE_CHECKING:
    from mmrec.pipeline import Content

logger = logging.getLogger(__name__)

PREFIX_BYTES = 2 << 30  # frozen-layer states kept for top:N text fine-tuning, at most (bytes)


class EncoderTuner:
    """Trainable text / image encoders of a training run.

    Args:
        content: the run's :class:`~mmrec.pipeline.Content`: its ``encoder_objects`` (loaded
            encoders), ``catalog`` (texts, image paths), ``present`` masks and ``encoders``
            (manifest specs of the frozen encoders).
        config: the training configuration (``finetune``, ``lr``, ``encoder_lr_scale``,
            ``seed``, ``device``).
        max_items: items per modality re-encoded with gradients at each step (default 32).
        show_progress: progress bars of the per-epoch re-encoding and of saving.

    Raises:
        ConfigError: ``finetune`` is ``frozen`` or malformed; no modality comes from an encoder
            (precomputed ``.npy`` features cannot be fine-tuned); N exceeds an encoder's blocks;
            an encoder cannot be fine-tuned.
    """

    def __init__(self, content: Content, config: TrainConfig, *, max_items: int = 32, show_progress: bool = True,
                 max_prefix_bytes: int = PREFIX_BYTES) -> None:
        mode, top = parse_finetune(config.finetune)
        if mode == "frozen":
            raise ConfigError("finetune is 'frozen': there is nothing to fine-tune")
        if max_items < 1:
            raise ConfigError(f"max_items must be positive, got {max_items}")
        if not content.encoder_objects or content.catalog is None:
            # (a fine-tune's source modality the new data lacks is in features too, all masked: no .npy)
            absent = [m for m in content.features if not np.asarray(content.present.get(m, True)).any()]
            given = [m for m in content.features if m not in absent]
            raise ConfigError(
                f"finetune {config.finetune!r} needs features computed by mmrec's encoders from a catalog; "
                f"precomputed .npy features ({', '.join(given) or 'none'}) cannot be fine-tuned"
                + (f", and the new data has no {', '.join(absent)} to encode (masked for every item)" if absent else "")
            )
        self.mode, self.top, self.max_items, self.show_progress = mode, top, max_items, show_progress
        self.lr = config.lr * config.encoder_lr_scale
        self.device = torch.device(config.device)
        self.rng = np.random.default_rng(config.seed)
        self.encoders: dict[str, Any] = {}
        self.sources: dict[str, dict] = {}
        self.inputs: dict[str, list] = {}  # modality -> text / image path per item
        self.present: dict[str, np.ndarray] = {}  # modality -> [N] bool
        self.rows: dict[str, np.ndarray] = {}  # modality -> indices of the items that have it
        self.params: dict[str, dict[str, nn.Parameter]] = {}  # modality -> name -> trained parameter
        skipped = sorted(set(content.features) - set(content.encoder_objects))
        if skipped:
            logger.info("modalities %s are precomputed features: they stay frozen", skipped)
        for m, enc in content.encoder_objects.items():
            self.encoders[m] = enc.to(self.device)
            self.sources[m] = dict(content.encoders.get(m, {}))
            self.inputs[m] = list(content.catalog.texts if m == "text" else content.catalog.images)
            self.present[m] = np.asarray(content.present[m], bool)
            self.rows[m] = np.flatnonzero(self.present[m])
            self.params[m] = self._unfreeze(m, enc)
            # Its weights change from the first step: its features are no longer the pretrained
            # encoder's, so it must not read or write that encoder's feature-cache entries (save()
            # gives it the identity of the copy it writes).
            enc.identity = enc.cache_identity = f"{enc.identity}:tuned-{uuid.uuid4().hex[:12]}"
            logger.info(
                "fine-tuning the %s encoder %s (%s): %d of %d parameters trainable", m, enc.name, config.finetune,
                sum(p.numel() for p in self.params[m].values()), sum(p.numel() for p in enc.model.parameters()),
            )
        # top:N text encoders start from the cached states of their frozen layers (see _prefix).
        self.prefix: dict[str, Any] = {}
        self.prefix_row: dict[str, np.ndarray] = {}  # modality -> [N] position in prefix, -1 where absent
        if self.mode == "top" and "text" in self.encoders:
            got = self._prefix("text", max_prefix_bytes)
            if got is not None:
                self.prefix["text"] = got
                self.prefix_row["text"] = np.full(len(self.present["text"]), -1, dtype=np.int64)
                self.prefix_row["text"][self.rows["text"]] = np.arange(len(self.rows["text"]))

    def _unfreeze(self, modality: str, enc: Any) -> dict[str, nn.Parameter]:
        try:
            chosen = enc.tunable_parameters(self.top if self.mode == "top" else None)
        except ValueError as e:
            raise ConfigError(f"finetune {self.mode}{':' + str(self.top) if self.top else ''}: {e}") from None
        ids = {id(p) for p in chosen}
        enc.model.eval()
        named = {}
        for name, p in enc.model.named_parameters():  # named_parameters yields a tied weight once
            p.requires_grad_(id(p) in ids)
            if id(p) in ids:
                named[name] = p
        return named

    def __repr__(self) -> str:
        mode = f"top:{self.top}" if self.mode == "top" else self.mode
        return f"EncoderTuner({mode!r}, modalities={list(self.encoders)}, max_items={self.max_items})"

    # ------------------------------------------------------------------------------- trainer hooks
    def param_groups(self) -> list[dict]:
        """One Adam parameter group per modality, at ``lr * encoder_lr_scale``."""
        return [{"params": list(ps.values()), "lr": self.lr} for ps in self.params.values()]

    def _prefix(self, modality: str, max_bytes: int) -> Any:
        """The text encoder's frozen-layer states of every item, when they fit ``max_bytes`` and
        reproduce the full forward pass; else ``None`` (the full pass runs every time)."""
        enc = self.encoders[modality]
        texts = [self.inputs[modality][i] for i in self.rows[modality]]
        was, enc.show_progress = enc.show_progress, self.show_progress
        try:
            prefix = enc.prefix_states(texts, self.top, max_bytes)
            # The shortest, the longest and three lengths between: padding differs most across them.
            by_length = np.argsort([len(t) for t in prefix.ids], kind="stable")
            check = sorted({int(by_length[round(q * (len(by_length) - 1))]) for q in (0, 0.25, 0.5, 0.75, 1)})
            with torch.no_grad():
                fast, full = enc.embed_from_prefix(prefix, check), enc.embed_trainable([texts[i] for i in check])
        except Exception as e:  # noqa: BLE001  states over max_bytes, or a model whose layers cannot run from
            # states (e.g. a projection between embeddings and layers, as ELECTRA / ALBERT have): the whole encoder
            logger.info("%s: no cached frozen layers (%s: %s): every step runs the whole encoder", modality,
                        type(e).__name__, e)
            return None
        finally:
            enc.show_progress = was
        if not torch.allclose(fast, full, atol=1e-5, rtol=1e-4):
            logger.warning("%s: the top layers from cached states differ from the full encoder (max %.2g): every "
                           "step runs the whole encoder", modality, float((fast - full).abs().max()))
            return None
        logger.info("%s: the frozen layers ran once (%.0f MB of states kept); steps run the top %d layer(s)",
                    modality, prefix.nbytes / 2**20, self.top)
        return prefix

    def embed(self, modality: str, items: np.ndarray) -> Tensor:
        """Encode some items with gradients (they must have the modality).

        Shapes: items (B,) -> embeddings (B, D_m)
        """
        enc, inputs = self.encoders[modality], self.inputs[modality]
        if modality in self.prefix:
            rows = self.prefix_row[modality][np.asarray(items, dtype=np.int64)]
            if (rows < 0).any():
                raise ValueError(f"items {np.asarray(items)[rows < 0].tolist()[:5]} have no {modality}")
            return enc.embed_from_prefix(self.prefix[modality], rows.tolist())  # [B, D_m]
        return enc.embed_trainable([inputs[i] for i in items])  # [B, D_m]

    def step_features(self, items: np.ndarray, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The features of one training step: a sample of the batch's rows recomputed with gradients.

        Args:
            items: the batch's unique item indices (positives and negatives).
            features: modality -> ``[N, D_m]`` current features of every item (left unchanged).

        Returns:
            a new dict: for each tuned modality, ``[N, D_m]`` equal to ``features`` except the
            rows of at most ``max_items`` sampled items, which carry gradients to the encoder;
            other modalities are passed through.

        Shapes: items (B,), features {m: (N, D_m)} -> {m: (N, D_m)}
        """
        out = dict(features)
        items = np.asarray(items, dtype=np.int64)
        for m in self.encoders:
            have = items[self.present[m][items]]
            if not len(have):
                continue
            pick = np.sort(self.rng.choice(have, size=min(self.max_items, len(have)), replace=False))
            fresh = self.embed(m, pick).to(features[m].dtype)  # [S, D_m]
            idx = torch.as_tensor(pick, device=features[m].device)
            out[m] = features[m].detach().index_put((idx,), fresh)  # [N, D_m], out of place
        return out

    @torch.no_grad()
    def encode_all(self, modality: str) -> np.ndarray:
        """Encode every item that has the modality with the current weights.

        Shapes: -> (N_m, D_m) in ``rows[modality]`` order
        """
        enc, inputs, rows = self.encoders[modality], self.inputs[modality], self.rows[modality]
        if modality in self.prefix:
            return enc.encode_from_prefix(self.prefix[modality])  # prefix order is rows order
        was, enc.show_progress = enc.show_progress, self.show_progress
        try:
            batch = [inputs[i] for i in rows]
            return enc.encode(batch) if modality == "text" else enc.encode_paths(batch)
        finally:
            enc.show_progress = was

    @torch.no_grad()
    def end_epoch(self, features: dict[str, Tensor]) -> None:
        """Re-encode the catalog with the current weights and write the rows into ``features`` in place."""
        for m in self.encoders:
            fresh = torch.from_numpy(self.encode_all(m))  # [N_m, D_m]
            idx = torch.as_tensor(self.rows[m], device=features[m].device)
            features[m].index_copy_(0, idx, fresh.to(features[m].device, features[m].dtype))

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """modality -> parameter name -> tensor (the live tensors, as ``nn.Module.state_dict``)."""
        return {m: {name: p.detach() for name, p in ps.items()} for m, ps in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Copy a :meth:`state_dict` back into the encoders.

        Raises:
            ValueError: the state's modalities or parameter names differ from this tuner's.
        """
        if set(state) != set(self.params) or any(set(state[m]) != set(self.params[m]) for m in state):
            raise ValueError(f"encoder state does not match the tuned parameters (modalities {sorted(state)})")
        for m, ps in self.params.items():
            for name, p in ps.items():
                p.copy_(state[m][name])

    # ------------------------------------------------------------------------------------- saving
    def save(self, directory: str | Path) -> dict[str, dict]:
        """Write the tuned encoders under ``directory/<modality>`` and describe them for the manifest.

        Each saved encoder is loaded back once to record the identity that
        :class:`mmrec.item_index.Encoders` will check.

        Returns:
            modality -> manifest encoder spec: ``model`` (``<directory name>/<modality>``,
            relative to the directory that holds ``directory``), ``bundled: True``; for an
            image state dict also ``architecture`` (``efficientnet-lite0``, ``resnet50``, ...)
            and ``weights`` (the file, relative to ``model``); the reloaded encoder's
            ``identity`` and ``dim``, the fine-tuning mode and the spec of the encoder it started
            from (``tuned_from``).
        """
        from mmrec.item_index import make_encoder

        directory = Path(directory)
        specs = {}
        for m, enc in self.encoders.items():
            target = directory / m
            rel = f"{directory.name}/{m}"
            spec: dict[str, Any] = {"model": rel}
            if m == "text":
                enc.save(target)
                spec["max_length"] = int(enc.max_length)
            else:
                saved = enc.save(target)
                if saved["weights"] is not None:  # a state dict for a named architecture
                    spec["architecture"] = saved["model"]
                    spec["weights"] = Path(saved["weights"]).relative_to(target).as_posix()
            back = make_encoder(m, dict(spec, model=str(target)), show_progress=False)
            enc.identity = back.identity  # the saved copy's, which encodes as this one does
            enc.cache_identity = getattr(back, "cache_identity", back.identity)
            mode = f"top:{self.top}" if self.mode == "top" else self.mode
            specs[m] = {
                **spec, "bundled": True, "identity": back.identity, "dim": int(back.dim), "finetune": mode,
                "tuned_from": self.sources[m],
            }
        return specs
