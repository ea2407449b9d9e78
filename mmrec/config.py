"""Frozen configuration dataclasses, saved as ``config.json`` and turned into CLI options.

Each field carries its one-line help in ``metadata["help"]``; :func:`add_dataclass_options`
derives ``--option`` flags from the fields so the CLI never re-declares them by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mmrec.errors import ConfigError

T = TypeVar("T")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A field with its ``--help`` text and, for a closed set of values, the choices the CLI offers."""
    return field(default=default, metadata={"help": help} | ({"choices": choices} if choices else {}))


# The values fusion.FusedGraphModel accepts, repeated here so that `mmrec --help` and config
# checks need no torch import; tests/mmrec/test_train.py checks that the two stay equal.
ID_MODES = ("token", "residual")
ID_INITS = ("normal", "xavier")
LOSSES = ("bpr", "softmax")
REG_FORMS = ("squared", "norm")
EVAL_MASKS = ("all", "train")  # mmrec.metrics.MASKS (which imports torch); tests/mmrec/test_train.py keeps them equal


def check_field_types(config: Any) -> None:
    """Each field of a frozen config dataclass of the type it declares, as a :class:`ConfigError`
    naming the field otherwise (``epochs=2.5`` failed deep inside training, after the encoding;
    ``True`` passed for 1): an ``int`` field takes a whole number (a numpy one, or a float of a
    whole value such as ``5.0``, which older versions saved, kept as ``int``), a ``float`` one any
    real number (kept as ``float``), a ``bool`` one ``True`` / ``False`` (or ``0`` / ``1``, as
    older versions saved them), a ``str`` one text."""
    import numbers

    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), f.type if isinstance(f.type, str) else f.type.__name__
        is_bool = isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))
        if kind == "bool":
            ok = is_bool or (isinstance(value, numbers.Integral) and value in (0, 1))
            value = bool(value) if ok else value
        elif kind == "int":
            whole = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) \
                and float(value).is_integer()
            ok = (isinstance(value, numbers.Integral) or whole) and not is_bool
            value = int(value) if ok else value
        elif kind == "float":
            ok = isinstance(value, numbers.Real) and not is_bool
            value = float(value) if ok else value
        elif kind == "str":
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            wanted = {"int": "a whole number", "float": "a number", "bool": "True or False", "str": "text"}[kind]
            raise ConfigError(f"{f.name} must be {wanted}, got {value!r} ({type(value).__name__})")
        object.__setattr__(config, f.name, value)


@dataclass(frozen=True)
class TrainConfig:
    """How a fused graph recommender is trained (saved as ``config.json`` beside the weights)."""

    dim: int = _f(64, "model dimension D of every token and output vector")
    layers: int = _f(3, "LightGCN propagation layers")
    heads: int = _f(4, "attention heads of the modality fusion (must divide dim)")
    use_id: bool = _f(True, "give every item a learned ID token (off: content only)")
    use_content: bool = _f(True, "use the content modalities (off: plain ID-only LightGCN)")
    id_mode: str = _f("residual", "how the ID joins content: residual (added to the fused content) or token (one attention token)", ID_MODES)
    content_gain: float = _f(0.01, "initial scale (Xavier gain) of the content projections: content starts near zero and grows where it helps")
    item_graph_k: int = _f(0, "add the mean layer-0 vector of each item's k nearest content neighbours, the item itself one of them (FREEDOM-style item-item graph; a model without content features has none, with a warning); 0: off")
    edge_dropout: float = _f(0.0, "fraction of training edges dropped anew each epoch, low-degree edges kept preferentially (FREEDOM's degree-sensitive pruning); 0: off")
    loss: str = _f("bpr", "ranking loss: bpr or softmax (sampled softmax)", LOSSES)
    negatives: int = _f(1, "negatives sampled per positive (known positives excluded)")
    temperature: float = _f(0.1, "sampled-softmax temperature")
    lr: float = _f(1e-3, "Adam learning rate")
    reg: float = _f(1e-4, "L2 weight on the batch's layer-0 embeddings (LightGCN convention)")
    reg_form: str = _f("squared", "regulariser: squared (sum ||e||^2 / 2B, LightGCN's code) or norm (sum ||E||_F / B, MMRec's and RecBole's EmbLoss)", REG_FORMS)
    id_init: str = _f("normal", "ID embedding initialisation: normal (N(0, 0.1^2), LightGCN's code) or xavier (MMRec, RecBole)", ID_INITS)
    batch_size: int = _f(2048, "training pairs per step")
    epochs: int = _f(100, "maximum epochs")
    ema: float = _f(0.0, "decay per step of an exponential moving average of the weights, which validation, early stopping and the saved model use (e.g. 0.99); 0: off")
    patience: int = _f(20, "stop after this many evaluations without a better validation Recall@20")
    eval_every: int = _f(1, "validate every this many epochs")
    modality_dropout: float = _f(0.1, "training-time probability of masking each modality token")
    id_dropout: float = _f(0.0, "training-time probability of masking the ID token (cold-start robustness)")
    align_weight: float = _f(0.1, "weight of the loss pulling content-only vectors to trained ones (cold start)")
    cold_neighbours: int = _f(10, "an item known by content borrows the mean trained vector of its k nearest indexed items by content (0: content path alone)")
    cold_neighbour_weight: float = _f(0.5, "weight of the item's own content-path direction in that blend (1: its own direction alone, its length still the neighbours'; --cold-neighbours 0 ignores them)")
    cold_start: float = _f(0.0, "fraction of items held out of training and ranked from content alone (cold-start test)")
    untrained_via_content: bool = _f(False, "index the catalog items with no training interaction as index add places new items (their content's trained neighbours), not by the vectors training left them")
    dropout: float = _f(0.0, "dropout inside projections and attention")
    projection_hidden: int = _f(0, "hidden width of a 2-layer projection MLP (0: linear)")
    finetune: str = _f("frozen", "encoder mode: frozen, top:N (last N blocks trainable) or full")
    encoder_lr_scale: float = _f(0.1, "encoder learning rate as a fraction of lr when fine-tuning")
    content_lr_scale: float = _f(1.0, "learning rate of the content side (projections, attention) as a fraction of lr; the user and item ID embeddings keep lr")
    mask: str = _f("all", "evaluation mask: all (the user's training items and those rated below the threshold, and when testing the validation items too, as serving does) or train (training items only, MMRec)", EVAL_MASKS)
    eval_batch_size: int = _f(1024, "users scored per evaluation batch (fewer where a batch's scores would pass 256 MB)")
    seed: int = _f(0, "random seed (splits, initialisation, sampling)")
    device: str = _f("cpu", "torch device of training and of encoding the catalog (cpu, cuda, cuda:N)")

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be bpr or softmax, got {self.loss!r}")
        if self.id_mode not in ID_MODES:
            raise ConfigError(f"id_mode must be token or residual, got {self.id_mode!r}")
        if self.reg_form not in REG_FORMS:
            raise ConfigError(f"reg_form must be squared or norm, got {self.reg_form!r}")
        if self.id_init not in ID_INITS:
            raise ConfigError(f"id_init must be normal or xavier, got {self.id_init!r}")
        if self.mask not in EVAL_MASKS:
            raise ConfigError(f"mask must be all or train, got {self.mask!r}")
        if not (self.use_id or self.use_content):
            raise ConfigError("use_id and use_content cannot both be off")
        parse_finetune(self.finetune)
        for name in ("dim", "layers", "heads", "batch_size", "epochs", "negatives"):
            if getattr(self, name) < (0 if name == "layers" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # what numpy's generators take
            raise ConfigError(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.item_graph_k < 0:
            raise ConfigError(f"item_graph_k must be >= 0 (0: no item-item graph), got {self.item_graph_k}")
        if self.cold_neighbours < 0 or not 0.0 <= self.cold_neighbour_weight <= 1.0:
            raise ConfigError(
                f"cold_neighbours must be >= 0 and cold_neighbour_weight in [0, 1], got "
                f"{self.cold_neighbours} and {self.cold_neighbour_weight}"
            )
        if not 0.0 <= self.edge_dropout < 1.0:
            raise ConfigError(f"edge_dropout must lie in [0, 1), got {self.edge_dropout}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must lie in [0, 1), got {self.ema}")
        if self.ema > 0 and self.finetune != "frozen":
            raise ConfigError(f"ema averages the model's weights, not fine-tuned encoders: use it with finetune frozen, not {self.finetune!r}")
        if not 0.0 <= self.cold_start < 1.0:
            raise ConfigError(f"cold_start must lie in [0, 1), got {self.cold_start}")
        if self.untrained_via_content and not self.use_content:
            raise ConfigError("untrained_via_content places items by their content, and use_content is off: leave one "
                              "of the two out")
        if self.use_content and self.dim % self.heads:  # (an ID-only model has no attention to split)
            raise ConfigError(f"heads ({self.heads}) must divide dim ({self.dim})")
        # (inf passed, and failed after the catalog's encoding: NaN scores, or a diverged first epoch)
        for name in ("lr", "temperature", "content_gain", "encoder_lr_scale", "content_lr_scale"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a positive finite number, got {getattr(self, name)}")
        for name in ("reg", "align_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("modality_dropout", "id_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.projection_hidden < 0:
            raise ConfigError(f"projection_hidden must be >= 0 (0: linear), got {self.projection_hidden}")


def config_changes(config: Any) -> dict[str, Any]:
    """The fields a :class:`TrainConfig` or a mapping of field names gives, else :class:`ConfigError`
    naming the fields that are no :class:`TrainConfig` field (a mapping's typo)."""
    if isinstance(config, TrainConfig):
        return dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a TrainConfig or a mapping of its fields, got {type(config).__name__}")
    unknown = set(config) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown training options {sorted(map(str, unknown))}")
    return dict(config)


def parse_finetune(mode: str) -> tuple[str, int]:
    """``frozen`` -> (frozen, 0); ``top:2`` -> (top, 2); ``full`` -> (full, 0)."""
    if mode in ("frozen", "full"):
        return mode, 0
    if mode.startswith("top:") and mode[4:].isdigit() and int(mode[4:]) > 0:
        return "top", int(mode[4:])
    raise ConfigError(f"finetune must be frozen, top:N (N >= 1) or full, got {mode!r}")


def save_config(config: Any, path: str | Path, **extra: Any) -> None:
    data = {"config": dataclasses.asdict(config), **extra}
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_config(cls: type[T], path: str | Path) -> tuple[T, dict[str, Any]]:
    """Rebuild a config from ``config.json``; unknown keys are an error, missing ones default."""
    data = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data["config"]) - names
    if unknown:
        raise ConfigError(f"{path}: unknown config fields {sorted(unknown)}")
    extra = {k: v for k, v in data.items() if k != "config"}
    return cls(**data["config"]), extra


# TrainConfig fields that fix the shapes of a model's weights: fine-tuning cannot change them.
ARCHITECTURE = ("dim", "layers", "heads", "use_id", "use_content", "projection_hidden", "id_mode")


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    default_from: str | None = None,
    fixed: tuple[str, ...] = (),
    own_defaults: dict[str, str] | None = None,
) -> None:
    """Add one ``--field-name`` option per dataclass field (defaults left as None = unset).

    Args:
        parser: where the options go.
        cls: the dataclass.
        skip: fields that get no option.
        default_from: where an option left out takes its value, when not from ``cls``'s defaults
            (e.g. ``"the source model"``); the help then says so instead of printing ``cls``'s.
        fixed: fields whose value ``default_from`` fixes (the help says they cannot change).
        own_defaults: field -> the default its help states instead (a field that does not
            follow ``default_from``).
    """
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in (own_defaults or {}):
            where = own_defaults[f.name]
        elif f.name in fixed:
            where = f"{default_from}'s; cannot change"
        elif default_from is not None:
            where = f"{default_from}'s"
        else:
            where = str(f.default)
        help_text = f"{f.metadata.get('help', '')} (default {where})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                                choices=f.metadata.get("choices"))


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A config from parsed options: given options override the defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**(values | overrides))
