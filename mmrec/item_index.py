"""The item index: a catalog's items as vectors in FAISS, with everything needed to query it.

An index directory holds::

    manifest.json        format version, kind, dim, metric, factory, item count, encoders,
                         modality order and weights, creation time, sha256 of every file
    index.faiss, ids.json    the FAISS index and its id map (see :class:`index.FaissIndex`)
    features.safetensors per-modality vectors of every item ([N, D_m]) and presence masks,
                         in ids.json order: item vectors are recomputed from them, so adds and
                         removals never re-encode untouched items
    items.jsonl          item id, content hashes and display fields, one item a line

It is written to a temporary directory beside the target and renamed, so a crash never leaves
a half-written index behind.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import decimal
import gc
import json
import logging
import os
import re
import reprlib
import stat
import shutil
import tempfile
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from fusion.fixed import CENTER_MIN_ITEMS, combine_modalities, modality_centers
from fusion.model import modality_name_problem
from index import FaissIndex, IndexFormatError, atomic_directory, read_manifest, sha256_file, write_manifest
from index.faiss_index import IDS_FILE, INDEX_FILE
from index.faiss_index import _canonical_id as canonical_id
from index.persist import MANIFEST_NAME, leftovers, manifest_stamp, umask, writer_lock
from index.mips import MipsTransform
from mmrec.catalog import (ID_FIELD, Catalog, cell_text, check_catalog_ids, compose_text, drop_rows, has_text,
                           is_image_url, load_catalog, local_image_path)
from mmrec.jsonlines import mend_surrogates
from mmrec.errors import ConfigError, DataError, MMRecError, Problem, UnknownIdError, check_count
from mmrec.ids import id_list, id_text, normalize_ids, one_id, too_long
from mmrec.typing import ItemId

MATCHING_IDS_PER_ITEM = 4  # the matching ids an index keeps for repeated --where filters, per item
MATCHING_ANSWERS = 256  # and the most filters it keeps answers of
COSINE_BATCH_SCORES = 1 << 26  # float32 scores in one batch of similar_many(by="cosine"): 256 MB

logger = logging.getLogger(__name__)

MODALITY_ORDER = ("text", "image")
# What every directory's manifest holds (and :meth:`ItemIndex.load` reads), and the files its
# checksums must cover.
MANIFEST_FIELDS = ("kind", "dim", "factory", "count", "modalities", "tokens", "weights", "encoders", "checksums")
CHECKSUMMED = (INDEX_FILE, IDS_FILE, "features.safetensors", "items.jsonl")
SKIP_REPORT = "skipped.jsonl"  # the rows commands skipped: a report, kept across writes, not checksummed


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused: parsing a catalog's items makes hundreds of thousands
    of dicts, none of them garbage, and the collections it triggered took 0.27-0.38 s of a 0.4-0.6 s
    parse at 200k items (measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _refuse_directionless(vectorizer: Any, vectors: np.ndarray, item_ids: Sequence[ItemId], source: str,
                          rows: Sequence[int] | None = None) -> None:
    """Refuse items whose content vectors are zero: features equal to the catalog means they are
    measured from, in every modality they have, point nowhere, so ``similar`` on them could rank
    nothing (and every item would score 0 against them). ``rows``: each item's 1-based row in
    ``source``, named in the error."""
    zero = np.flatnonzero(~np.any(vectorizer.mips.original(vectors), axis=1))
    if len(zero):
        raise DataError(source, [Problem(int(rows[i]) if rows is not None else None, None, (
            f"item {item_ids[i]!r}: its features equal the catalog mean in every modality it has, so measured "
            "from that mean (as similarity is; --no-center turns it off) it has no direction to be ranked by; "
            "give it other features, or leave it out")) for i in zero])


def _skipped_here(catalog: Catalog, read_here: bool, before: set[int]) -> list[Problem]:
    """The rows this call skipped: all of a file it read, else those a loaded catalog did not
    already list (``before``: the ids of its skipped problems when it was given)."""
    return [q for q in catalog.skipped if read_here or id(q) not in before]


def check_cache_dir(cache_dir: str | Path) -> None:
    """Refuse, before any encoding, a feature cache path where a file stands (a mistyped path),
    and warn about one that cannot be written (a cache shared read-only, a home folder that
    takes no writes): the vectors it holds are still read, and new ones are encoded without
    being kept, as when a disk fills up mid-run."""
    path = Path(cache_dir)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the nearest folder that exists: the cache is made under it
    if probe.exists() and not probe.is_dir():
        why = "is a file, not a directory" if probe == path else f"cannot be made: {probe} is a file"
        raise ConfigError(f"feature cache {path} {why} (--cache-dir, $MMREC_CACHE_DIR; --no-cache encodes without one)")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        why = "is not writable" if probe == path else f"cannot be made: {probe} is not writable"
        logger.warning("feature cache %s %s: the vectors it holds are used, new ones are not kept (--cache-dir, "
                       "$MMREC_CACHE_DIR; --no-cache to go without one)", path, why)


def _check_search_by(by: str) -> None:
    if by not in ("index", "content"):
        raise ConfigError(f"by must be 'index' or 'content', got {by!r}")


def default_cache_dir() -> Path:
    """Feature cache location: ``$MMREC_CACHE_DIR``, else ``~/.cache/mmrec/features``."""
    env = os.environ.get("MMREC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mmrec" / "features"


class CandidateSet(frozenset):
    """Item ids resolved against one version of an index (:meth:`ItemIndex.candidate_ids` of a
    ``where``): given back as ``only``, they are taken as they are, and the FAISS index keeps the
    labels and selector it made of them while the set is the last one it was given."""

    owner: Any = None  # the item vectors of the version they were resolved against


@dataclass
class Result:
    """One retrieved item: its id, its inner-product score, its display fields and, when asked
    for, why it was returned (see :mod:`mmrec.explain`)."""

    item_id: ItemId
    score: float
    fields: dict[str, str]
    explanation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"item_id": self.item_id, "score": round(float(self.score), 6),
               **shown_fields(self.fields, ("item_id", "score", "explanation"))}
        if self.explanation is not None:
            out["explanation"] = self.explanation
        return out


WHERE_OPS = ("!=", ">=", "<=", "=", ">", "<")  # the longer spelling of a shared first character first


def split_where(text: str) -> tuple[str, str, str] | None:
    """A condition such as ``"genres=Comedy"``, ``"genres!=Horror"`` or ``"year>=1990"`` (a
    ``--where`` option, a server's ``where=``) as ``(FIELD, OPERATOR, VALUE)`` without surrounding
    spaces; ``None`` when a part is missing. The field ends at its first ``!``, ``<``, ``>`` or ``=``.
    ``=`` and ``!=`` may have an empty value (``"price="``: items without a price)."""
    cut = next((i for i, ch in enumerate(text) if ch in "!<>="), None)
    if cut is None:
        return None
    op = next((o for o in WHERE_OPS if text.startswith(o, cut)), None)
    field, value = text[:cut].strip(), text[cut + len(op or ""):].strip()
    return (field, op, value) if op and field and (value or op in ("=", "!=")) else None


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def where_number(text: str) -> float | None:
    """A display field or a ``--where`` bound as a number: plain decimal notation (``7``,
    ``-2.5``, ``1e3``) with surrounding spaces, else ``None`` (``nan``, ``inf``, ``1_000``,
    ``n/a``: no number to compare)."""
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def exact_number(text: str) -> decimal.Decimal | None:
    """A display field or an ``=`` value as the exact number it writes (``100``, ``100.0`` and
    ``1e2`` are one number; ``12345678901234567890`` and ``...891`` two, as float64 would not
    tell them apart), else ``None`` (as :func:`where_number`)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:  # an exponent past Decimal's range (1e9999999999999999999): text only
        return None


def describe_where(conditions: Sequence[tuple[str, str, str]]) -> str:
    """Conditions as :meth:`ItemIndex.matching` combines them: a field's ``=`` values as
    alternatives (``genres=A or genres=B``), everything else joined by ``and``."""
    parts: dict[str, list[str]] = {}
    for field, op, value in dict.fromkeys(conditions):  # a repeated condition is one condition
        key = field if op == "=" else f"{field}{op}{value}"
        parts.setdefault(key, []).append(f"{field}{op}{value}")
    return " and ".join(" or ".join(texts) for texts in parts.values())


def shown_fields(fields: Mapping[str, str], reserved: Sequence[str]) -> dict[str, str]:
    """Display fields for a JSON object beside keys of its own: a catalog column named like one
    of ``reserved`` (a ``score`` column) is shown as ``catalog.<name>``, never over the key, nor
    over a column of that name (then ``catalog.catalog.<name>``, and so on)."""
    shown: dict[str, str] = {}
    for k, v in fields.items():
        if k in reserved:
            k = f"catalog.{k}"
            while k in fields or k in shown:  # (a catalog.score column as well: it lost to the renamed score)
                k = f"catalog.{k}"
        shown[k] = v
    return shown


def _skip_report(earlier: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``skipped.jsonl``'s records: the ``earlier`` commands', then this one's (``now``), where
    an item this command skipped again for the same field and message (a nightly export under a
    dated name with the same bad row) drops its earlier records, so the report grows with
    distinct problems, not with nights; every row this command skipped is listed, and an
    identical record (a catalog both pending and given to save) once."""
    def problem(r: dict[str, Any]) -> Any:
        return None if r.get("item_id") is None else (json.dumps(r["item_id"]), r.get("field"), r.get("message"))

    again = {problem(r) for r in now} - {None}
    kept = [r for r in earlier if problem(r) is None or problem(r) not in again]
    return list({json.dumps(r, sort_keys=True): r for r in kept + now}.values())


class Encoders:
    """Loads the encoders an index was built with, once, on first use.

    Args:
        spec: the manifest's ``encoders`` entry: modality -> {"model", "identity", "dim", ...}.
        show_progress: progress bars while encoding.
        root: the directory ``bundled`` encoders are stored in.
        modalities: every modality of the index (those without an encoder are precomputed
            features), for the error messages.
        device: torch device the encoders run on (see :meth:`to`).
    """

    def __init__(self, spec: dict[str, dict], show_progress: bool = True, root: Path | None = None,
                 modalities: Sequence[str] = (), device: str = "cpu") -> None:
        self.spec = spec
        self.show_progress = show_progress
        self.root = root
        self.modalities = list(modalities) or list(spec)
        self.device = device
        self._loaded: dict[str, Any] = {}

    def to(self, device: str) -> "Encoders":
        """Run the encoders on ``device`` from now on (those loaded already move there)."""
        self.device = check_device(device)
        for enc in self._loaded.values():
            enc.to(device)
        return self

    def adopt(self, other: "Encoders") -> list[str]:
        """Take over the encoders ``other`` has loaded for modalities whose manifest entry is the
        same here (same model and identity) and that run on this device: a directory loaded
        again keeps its warm encoders. Returns the modalities taken over."""
        taken = [m for m, enc in list(other._loaded.items())  # a copy: a query may load one meanwhile
                 if m not in self._loaded and self.spec.get(m) == other.spec.get(m) and other.device == self.device]
        for m in taken:
            self._loaded[m] = other._loaded[m]
        return taken

    def get(self, modality: str):
        if modality not in self.spec:
            encoded = ", ".join(self.spec) or "none"
            precomputed = [m for m in self.modalities if m not in self.spec]
            if modality in precomputed:
                raise ConfigError(f"the {modality} modality of this index is precomputed features: mmrec has no "
                                  f"encoder for it (encoded modalities: {encoded})")
            extra = f"; precomputed features: {', '.join(precomputed)}" if precomputed else ""
            raise ConfigError(f"this index has no {modality} modality (encoded: {encoded}{extra})")
        if modality not in self._loaded:
            spec = dict(self.spec[modality])
            if spec.get("bundled"):  # fine-tuned weights saved inside the directory
                if self.root is None:
                    raise ConfigError(f"the {modality} encoder is stored in the model directory, which is unknown")
                spec["model"] = str(self.root / spec["model"])
            else:
                _check_still_there(modality, spec)
            encoder = make_encoder(modality, spec, self.show_progress, self.device)
            got = encoder.identity
            if got != self.spec[modality]["identity"]:  # (not kept: a server's next query would have used it unchecked)
                raise ConfigError(
                    f"the {modality} encoder '{self.spec[modality]['model']}' is not the one this index was built "
                    f"with (identity {got} != {self.spec[modality]['identity']}): put that encoder back, or encode the "
                    f"catalog again with it (`mmrec index build`, or `mmrec train` for a trained directory; "
                    f"`index rebuild` encodes nothing)"
                )
            self._loaded[modality] = encoder
        return self._loaded[modality]


def _check_still_there(modality: str, spec: dict) -> None:
    """Refuse, naming it, a saved encoder path (kept absolute, :func:`local_path`) that no longer
    exists: the encoder's own error read it as a hub name and advised downloads, which no command
    that opens an index offers and which would not find a moved directory.

    Raises:
        ConfigError: the model directory or weights file is gone.
    """
    for key in ("model", "weights"):
        value = spec.get(key)
        if value and Path(value).is_absolute() and not Path(value).exists():
            raise ConfigError(
                f"the {modality} encoder this index was built with, {value!r}, is no longer there (moved or "
                "deleted): put it back at that path, or encode the catalog again with another (`mmrec index build`, "
                "or `mmrec train` for a trained directory; `index rebuild` encodes nothing)")


def check_device(device: str) -> str:
    """``device`` when torch can use it here; a :class:`ConfigError` naming it otherwise.

    Checked before any work starts, so a run asked for a GPU the machine lacks fails at once
    with the reason instead of deep inside torch. CPU, CUDA (``cuda``, ``cuda:N``), Apple's
    ``mps`` and Intel's ``xpu`` are accepted where torch has them.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return device
    backends = {
        "cuda": ("CUDA GPU", torch.cuda),
        "mps": ("Apple GPU (mps)", getattr(torch.backends, "mps", None)),
        "xpu": ("Intel GPU (xpu)", getattr(torch, "xpu", None)),
    }
    if dev.type not in backends:
        raise ConfigError(f"device {device!r}: mmrec runs on cpu, cuda, mps or xpu, not {dev.type}")
    what, backend = backends[dev.type]
    if backend is None or not backend.is_available():
        raise ConfigError(f"device {device!r}: torch {torch.__version__} sees no {what} on this machine; use cpu")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ConfigError(f"device {device!r}: this machine has {count()} {what}(s)")
    return device


def check_factory(factory: str, n: int | None) -> str:
    """The concrete FAISS factory for ``n`` items, or a :class:`ConfigError` when it cannot be
    built (unknown form, too few items to train it), checked before any encoding or training.
    ``n`` ``None``: the item count is not known yet, and only the form is checked (``"auto"`` is
    returned as it is)."""
    try:
        if n is None:
            return factory if factory == "auto" else FaissIndex.resolve_factory(factory, 1)
        return FaissIndex.check_factory(factory, n)
    except ValueError as e:
        message = str(e)  # (the CLI's --factory, Python's factory=): named once
        raise ConfigError(message if repr(factory) in message else f"factory {factory!r}: {message}") from None


def mmrec_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of an index or model that mmrec wrote in ``directory``; ``None`` when its
    ``manifest.json`` is missing or not mmrec's (``format_version``, ``kind``, ``checksums``),
    as a browser extension's or a web app's is not."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = (isinstance(manifest, dict) and "format_version" in manifest
            and manifest.get("kind") in ("content", "trained") and isinstance(manifest.get("checksums"), dict))
    return manifest if ours else None


def _within(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is ``root`` or lies inside it (both resolved: links followed)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


def _holds_cwd(directory: Path) -> bool:
    """Whether ``directory`` is the current working directory or one of its parents."""
    return _within(Path.cwd(), directory)


def check_rewrite(directory: Path, manifest: Mapping[str, Any], action: str) -> None:
    """Refuse to rewrite an mmrec directory as a whole (replace it, or save it in place) when that
    would lose something: files mmrec did not write there (a catalog, images), or the current
    directory (which cannot be renamed).

    Raises:
        MMRecError: naming the directory, the files and what to do.
    """
    if _holds_cwd(directory):
        raise MMRecError(f"{directory} is the current directory or holds it: it is rewritten as a whole, so "
                         f"{action} from outside it")
    files = {MANIFEST_NAME, SKIP_REPORT, *manifest.get("checksums", {}), *manifest.get("attachments", [])}
    folders = {Path(*Path(name).parts[:i]).as_posix() for name in files for i in range(1, len(Path(name).parts))}
    extra = []  # every path mmrec did not write, down the folders it did (a file of yours in encoders/)
    for root, dirs, names in os.walk(directory):
        rel = Path(root).relative_to(directory)
        extra += [(rel / name).as_posix() for name in names if (rel / name).as_posix() not in files]
        # A folder mmrec did not write is named, not walked: everything in it is someone else's.
        extra += [(rel / name).as_posix() for name in dirs if (rel / name).as_posix() not in folders]
        dirs[:] = [name for name in dirs if (rel / name).as_posix() in folders]
    extra.sort()
    if extra:
        raise MMRecError(f"{directory} holds files mmrec did not write ({', '.join(extra[:5])}"
                         f"{', ...' if len(extra) > 5 else ''}): rewriting it would delete them; move them out first")


def refuse_skipped_rows(source: str, skipped: Sequence[Problem]) -> None:
    """Refuse catalog rows skipped (``--skip-invalid``) from a file that ``--features`` come with:
    feature row ``i`` is the file's row ``i``, so the rows after a skipped one would take another
    item's features."""
    if skipped:
        rows = ", ".join(str(q.row) for q in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        were = f"row {rows} was" if len(skipped) == 1 else f"rows {rows} were"
        raise DataError(source, [Problem(None, None, f"{were} skipped (--skip-invalid), so the --features rows no "
                                                     "longer line up with the catalog: fix those rows instead of "
                                                     "skipping them")])


def check_out(out: str | Path | None, overwrite: bool, inputs: Sequence[object] = ()) -> None:
    """Refuse, before any work, an output directory whose writing would lose data.

    * ``out`` exists and ``overwrite`` is off;
    * ``out`` exists but is not a directory mmrec wrote: a file, or a non-empty directory
      without ``manifest.json`` (``--overwrite`` replaces indexes and models, nothing else);
    * ``out`` holds one of ``inputs`` (a catalog, interactions, features, an image folder, a
      source model), or the current directory: replacing ``out`` would delete it;
    * ``out`` lies inside an index or model directory (which would then hold files mmrec did not
      write there), or cannot be created (below a file, in a folder that takes no writes).

    Raises:
        MMRecError: naming ``out`` and what it would have lost.
    """
    if out is None:
        return
    out = Path(out)
    if _holds_cwd(out):
        raise MMRecError(f"--out {out} is the current directory or holds it: choose a directory below it")
    if out.exists() or out.is_symlink():
        # What --overwrite cannot replace first, so that the message never suggests it in vain.
        if not out.is_dir():
            raise MMRecError(f"{out} exists and is not a directory: choose another --out (--overwrite replaces only "
                             f"index and model directories)")
        manifest = mmrec_manifest(out)
        if manifest is None and any(out.iterdir()):
            raise MMRecError(f"{out} is not an index or model directory (no mmrec {MANIFEST_NAME}) and is not empty: "
                             f"--overwrite only replaces what mmrec wrote; choose another --out or empty it yourself")
        if manifest is not None:
            check_rewrite(out, manifest, "write it")
    root = out.resolve()
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):  # None, or an object in memory
            continue
        if _within(item, root):
            raise MMRecError(f"--out {out} holds the input {item}: writing it would delete that input; "
                             f"choose another --out")
    for parent in root.parents:
        if mmrec_manifest(parent) is not None:
            raise MMRecError(f"--out {out} is inside the index or model directory {parent}, which could then no longer "
                             f"be changed (index add / remove refuse files mmrec did not write there); choose a "
                             f"directory outside it")
    if (out.exists() or out.is_symlink()) and not overwrite:  # last: the one refusal --overwrite lifts
        raise MMRecError(f"{out} already exists: --overwrite (overwrite=True in Python) replaces it")
    _check_creatable(out)
    if out.is_dir():  # replaced: moved aside first, which a sticky folder allows its owner alone
        _check_renamable(out, f"--out {out} cannot be replaced")


def _check_creatable(out: Path, what: str | None = None) -> None:
    """Refuse an ``out`` that cannot be written where it is: below a file, or in a folder this
    process cannot create anything in (tried with an empty folder, removed at once). A symlinked
    ``out`` is written beside its target (:func:`index.persist.atomic_directory` of the resolved
    path): that is the folder tried. ``what`` begins the message (default ``--out OUT cannot be
    created``)."""
    what = what or f"--out {out} cannot be created"
    ancestor = out.resolve().parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MMRecError(f"{what}: {ancestor} is not a directory")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".mmrec-probe-", dir=ancestor))
    except OSError as e:
        raise MMRecError(f"{what}: nothing can be written in {ancestor} ({e.strerror or e})") from None


def _check_renamable(directory: Path, what: str) -> None:
    """Refuse, before any work, a directory this process may not rename aside: another user's, in
    a folder with the sticky bit (/tmp, shared scratch space), where only its owner (or the
    folder's, or root) may; the probe of :func:`_check_creatable` passes there, and the rewrite
    failed at its rename, after the encoding. ``what`` begins the message."""
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        return
    target = directory.resolve()
    parent = target.parent.stat()
    if parent.st_mode & stat.S_ISVTX and os.geteuid() not in (target.stat().st_uid, parent.st_uid):
        raise MMRecError(f"{what}: it belongs to another user, in {target.parent}, where only a folder's owner may "
                         "move it (the sticky bit)")


def read_whole(directory: Path, read: Any, attempts: int = 3) -> Any:
    """``read()`` of a directory's files, all of one version: a writer replaces the directory
    while a reader may be between its files (:func:`index.persist.manifest_stamp` differs after
    the read), and then it is read again, up to ``attempts`` times.

    Raises:
        MMRecError: it changed during every attempt; or what ``read`` raises on a directory that
            did not change.
    """
    for _ in range(attempts):
        before = manifest_stamp(directory)
        try:
            result = read()
        except Exception:
            if manifest_stamp(directory) == before:  # nothing changed (a directory missing all along too)
                raise
            continue  # a file of the next version, or one gone with the last: read again
        if before is not None and manifest_stamp(directory) == before:
            return result
    raise MMRecError(f"{directory} was rewritten by another command while it was read, {attempts} times in a row; "
                     f"try again when it is done")


def same_device(a: str | Any, b: str | Any) -> bool:
    """Whether two devices are the same, ``cuda`` and ``cuda:<current>`` included."""
    import torch

    def full(d: Any) -> Any:
        d = torch.device(d)
        if d.index is None and d.type != "cpu":
            backend = getattr(torch, d.type, None)
            if backend is not None and hasattr(backend, "current_device") and backend.is_available():
                return torch.device(d.type, backend.current_device())
        return d

    return full(a) == full(b)


def make_encoder(modality: str, spec: dict, show_progress: bool = True, device: str = "cpu"):
    """Instantiate a text or image encoder from its manifest spec (or CLI choice) on ``device``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar says nothing useful
    if modality == "text":
        from encoders.text import TextEncoder

        return TextEncoder(
            spec["model"], max_length=spec.get("max_length", 256), batch_size=spec.get("batch_size", 64),
            allow_download=spec.get("allow_download", False), show_progress=show_progress, device=device,
        )
    from encoders.image import ImageEncoder

    model, weights = spec["model"], spec.get("weights")
    if spec.get("architecture"):  # a state-dict file inside the directory `model` (a fine-tuned encoder)
        model, weights = spec["architecture"], str(Path(spec["model"]) / spec["weights"])
    return ImageEncoder(model, weights=weights, batch_size=spec.get("batch_size", 32), show_progress=show_progress,
                        device=device)


def local_path(value: str | Path | None, names: Collection[str] = ("default",)) -> str | None:
    """An encoder argument as the manifest keeps it: a path that exists, absolute (a relative one
    only worked from the directory the index was built in), anything else (``None``, a hub name,
    one of the ``names`` the encoder reads as a name before any path) as given."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if str(value) not in names and path.exists() else str(value)


def encoder_spec(encoder, model: str | Path, names: Collection[str] = ("default",), **extra) -> dict:
    return {"model": local_path(model, names), "identity": encoder.identity, "dim": int(encoder.dim), **extra}


def encoded_modalities(text_encoder: str | Path | None, image_encoder: str | Path | None) -> list[str]:
    """The catalog modalities these encoder choices read (``None`` / ``"none"`` turns one off)."""
    return [m for m, e in (("text", text_encoder), ("image", image_encoder)) if e not in (None, "none")]


def catalog_encoders(
    catalog: Catalog,
    text_encoder: str | Path | None = "default",
    image_encoder: str | Path | None = "default",
    image_weights: str | Path | None = None,
    *,
    max_length: int = 256,
    batch_size: int | None = None,
    allow_download: bool = False,
    show_progress: bool = True,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, dict]]:
    """Load the encoders a catalog needs, with their manifest specs, on ``device``.

    Text when some item has text, images when some item has an image; ``None`` / ``"none"``
    turns a modality off. The device is not part of the spec: a directory loads anywhere.

    Returns:
        (modality -> encoder, modality -> manifest spec)
    """
    encoders: dict[str, Any] = {}
    specs: dict[str, dict] = {}
    on = encoded_modalities(text_encoder, image_encoder)
    if any(catalog.texts) and "text" in on:
        try:
            encoders["text"] = make_encoder(
                "text", {"model": str(text_encoder), "max_length": max_length, "batch_size": batch_size or 64,
                         "allow_download": allow_download},
                show_progress, device,
            )
        except (ValueError, OSError) as e:  # a model that is not there or not one, a bad length
            raise ConfigError(f"text encoder {text_encoder}: {e}") from e
        specs["text"] = encoder_spec(encoders["text"], text_encoder, max_length=max_length,
                                     **({"allow_download": True} if allow_download else {}))
    for modality, named, has in (("text", text_encoder, any(catalog.texts)), ("image", image_encoder, catalog.has_images)):
        if modality in on and named != "default" and not has:  # asked for by name: say why it is not used
            logger.warning("%s encoder %s was named, but %s has no %s (%s): the index has no %s modality", modality,
                           named, catalog.source, "text" if modality == "text" else "images",
                           f"text columns: {', '.join(catalog.text_fields) or 'none'}" if modality == "text" else
                           f"image column: {catalog.image_field or 'none'}", modality)
    if catalog.has_images and "image" in on:
        try:
            encoders["image"] = make_encoder(
                "image", {"model": str(image_encoder), "weights": image_weights, "batch_size": batch_size or 32},
                show_progress, device,
            )
        except (ValueError, OSError) as e:
            raise ConfigError(f"image encoder {image_encoder}: {e}") from e
        from encoders.image import DEFAULT_IMAGE_MODEL, torchvision_names

        # (ImageEncoder reads these as names before any path: a folder "resnet18" beside it is no model)
        named = ("default", DEFAULT_IMAGE_MODEL, *torchvision_names())
        specs["image"] = encoder_spec(encoders["image"], image_encoder, named,
                                      weights=local_path(image_weights) if image_weights else None)
    return encoders, specs


def encode_catalog(
    catalog: Catalog,
    encoders: dict[str, Any],
    cache_dir: str | Path | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, str]]]:
    """Encode every modality of a catalog, reusing cached vectors.

    Returns:
        (modality -> [N, D_m] float32 vectors, zero rows where absent;
         modality -> [N] bool presence; per item {modality: content hash})
    """
    from encoders.cache import FeatureCache, content_hash, encode_with_cache, file_hash

    if cache_dir is not None:
        check_cache_dir(cache_dir)
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    n = len(catalog)
    features, present = {}, {}
    hashes: list[dict[str, str]] = [{} for _ in range(n)]
    for modality, enc in encoders.items():
        contents = catalog.texts if modality == "text" else catalog.images
        pos = [i for i, c in enumerate(contents) if c]
        hash_fn = content_hash if modality == "text" else file_hash
        h = [hash_fn(contents[i]) for i in pos]
        out = np.zeros((n, enc.dim), dtype=np.float32)
        if pos:
            encode = enc.encode if modality == "text" else enc.encode_paths
            vecs, fresh = encode_with_cache(
                encode, getattr(enc, "cache_identity", enc.identity), [catalog.item_ids[i] for i in pos],
                [contents[i] for i in pos], h, cache
            )
            out[pos] = vecs
            logger.info("%s: %d of %d items encoded, %d from cache", modality, fresh, len(pos), len(pos) - fresh)
        mask = np.zeros(n, dtype=bool)
        mask[pos] = True
        for i, hv in zip(pos, h):
            hashes[i][modality] = hv
        features[modality], present[modality] = out, mask
    return features, present, hashes


class MipsVectorizer:
    """Shared by index kinds whose vectors go through the MIPS reduction (:mod:`index.mips`).

    Args:
        mips: the index's transform.
    """

    def __init__(self, mips: MipsTransform) -> None:
        self.mips = mips

    def item_query(self, vectors: np.ndarray) -> np.ndarray:
        """The query that finds the items scoring highest against items with these index vectors."""
        return self.mips.queries(self.mips.original(vectors))

    def rescore(self, scores: np.ndarray, query: np.ndarray) -> np.ndarray:
        """FAISS cosine scores of one query -> the exact inner products."""
        return self.mips.dot_products(scores, query[:-1])


class FixedCombination(MipsVectorizer):
    """Index vectors of an untrained index: the fixed modality combination of fusion.fixed.

    Items are combined without renormalisation (so a modality an item lacks contributes zero
    to every score) and the MIPS reduction (:mod:`index.mips`, norm bound just above 1) makes
    the cosine FAISS index rank them by that exact inner product. Scores reported:

    * item -> item: ``sum_m w_m cos_m`` over the modalities both items have;
    * a one-modality query (text or image search): the plain cosine in that modality, the
      same for an item with one modality or several.

    With ``centers`` every cosine is that of the vectors less their modality's catalog mean
    (:func:`fusion.fixed.modality_centers`), queries included.

    Args:
        weights: modality -> weight.
        order: modality order of the concatenation.
        centers: modality -> ``[D_m]`` catalog mean subtracted before the cosine; default none.
    """

    def __init__(self, weights: dict[str, float], order: Sequence[str],
                 centers: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__(MipsTransform(1.0 + 1e-3))  # rows have norm <= 1 (+ rounding)
        self.weights, self.order = dict(weights), list(order)
        self.centers = dict(centers or {})

    def combine(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """``[N, D]`` weighted concatenation of the (centred) modality vectors (not renormalised)."""
        return combine_modalities(features, present, self.weights, self.order, renormalize=False,
                                  centers=self.centers)

    def item_vectors(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray],
                     pool: Any = None) -> np.ndarray:
        """``[N, D + 1]`` index vectors from modality vectors ``[N, D_m]`` and presence ``[N]``
        (an untrained index places items by their content alone: ``pool`` is not used)."""
        return self.mips.items(self.combine(features, present))

    def query_vector(self, modality: str, vector: np.ndarray, dims: dict[str, int]) -> np.ndarray:
        """A ``[1, D + 1]`` query for one modality, scoring that modality's cosine.

        Raises:
            MMRecError: the modality has weight 0 in this index (its items' vectors hold none of it).
        """
        if self.weights.get(modality, 0.0) <= 0:
            raise MMRecError(f"this index was built with {modality} weight 0 (weights {self.weights}): its "
                             f"vectors hold no {modality}, so a {modality} query cannot be scored; build it "
                             f"again with a positive {modality} weight (ItemIndex.build(weights=...))")
        feats = {m: np.zeros((1, dims[m]), np.float32) for m in self.order}
        feats[modality] = vector.reshape(1, -1).astype(np.float32)
        q = self.combine(feats, {m: np.array([m == modality]) for m in self.order})  # sqrt(w_m) x_m
        if not np.any(q):
            centred = " less the catalog's mean" if modality in self.centers else ""
            raise MMRecError(f"the {modality} query vector{centred} is zero: it has no direction to rank items by")
        share = self.weights[modality] / sum(self.weights.values())
        return self.mips.queries(q / share)

    @property
    def tokens(self) -> list[str]:
        """Names of the columns of :meth:`attention`."""
        return list(self.order)

    def attention(self, features: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """``[N, M]`` share of each modality in an item's vector: its weight over the present ones."""
        w = np.array([self.weights[m] for m in self.order], dtype=np.float32)  # [M]
        has = np.stack([np.asarray(present[m], bool) & (np.abs(features[m]).sum(1) > 0) for m in self.order], 1)
        share = has * w  # [N, M]
        return (share / np.maximum(share.sum(1, keepdims=True), 1e-12)).astype(np.float32)


def _values(values: Any, what: str) -> list:
    """One value or a collection of them as a list: a list, tuple, set, numpy array, pandas Series,
    range or generator gives its members (each a value: ``np.array(["A", "B"])`` is A or B, not its
    text); a text, bytes or any other single value is one."""
    if isinstance(values, np.ndarray) and values.ndim == 0:
        return [values[()]]  # (a numpy scalar: cell_text writes a float32 as the catalog stores it, 4.1)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        if what == "where":  # (a number, None: neither a condition nor a list of them)
            raise ConfigError(f"where is a FIELD -> value(s) mapping or a list of conditions such as 'genres=Comedy', "
                              f"got {type(values).__name__} {reprlib.repr(values)}")
        return [values]
    if hasattr(values, "dtype") and hasattr(values, "__array__"):  # a Series iterates float32 as Python floats
        values = np.asarray(values)
    return list(values)


def _previous_versions(directory: Path) -> str:
    """What :meth:`ItemIndex.load` adds to "no such index directory" when a replacement of it
    was interrupted: the newest whole previous version left beside it and how to put it back
    (through a link, beside the folder the link points to, the one replaced)."""
    replaced = Path(os.path.realpath(directory))
    left = leftovers(replaced)  # the oldest first
    whole = [p for p in left if _whole(p)]
    if whole:
        return (f"; an interrupted write left the previous version at {whole[-1]}: `mv {whole[-1]} {replaced}` "
                f"puts it back")
    if left:  # (a removal that was cut short)
        return f"; an interrupted write left {', '.join(map(str, left))}, none of them whole"
    return ""


def _whole(directory: Path) -> bool:
    """Whether ``directory`` holds a manifest whose listed files are all there, unchanged."""
    try:
        read_manifest(directory, unverified=(SKIP_REPORT,))
        return True
    except (IndexFormatError, OSError):
        return False


class ItemIndex:
    """A searchable item index built from a catalog (see the module docstring for its files).

    Build with :meth:`build`, open with :meth:`load`; query with :meth:`similar`,
    :meth:`search_text` and :meth:`search_image`; change with :meth:`add`, :meth:`update` and
    :meth:`remove`.
    """

    def __init__(
        self,
        index: FaissIndex,
        items: list[dict[str, Any]],
        features: dict[str, np.ndarray],
        present: dict[str, np.ndarray],
        manifest: dict[str, Any],
        vectors: np.ndarray,
        directory: Path | None = None,
        show_progress: bool = True,
        vectorizer: Any = None,
        attention: np.ndarray | None = None,
        centers: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.index = index
        self.vectors = vectors
        self._unit_cache: tuple[np.ndarray, np.ndarray] | None = None  # (vectors, their unit rows)
        # modality -> (features, present, has, unit rows) of mmrec.explain, kept until the arrays are replaced
        self._explain_units: dict[str, tuple] = {}
        # Skipped rows and masked images of an index not yet on disk: written by its first save.
        self._pending_skips: list[dict[str, Any]] = []
        # The display fields, for matching: (vectors they were read with, field -> value -> rows, field -> numbers, conditions -> matching ids)
        self._facets: tuple[np.ndarray, dict[str, dict[str, np.ndarray]], dict[str, np.ndarray],
                            dict[tuple, list]] | None = None
        # modality -> [D_m] catalog mean that content similarity is measured from (fusion.fixed)
        self.centers = dict(centers or {})
        # [N] bool: the items a content-path item may borrow from (a trained index's items trained
        # on interactions); None: every item
        self.pool: np.ndarray | None = None
        # [N] bool: the items whose vector training gave (the pool, and the catalog items that had no
        # training interaction, whose low validated score is the data's word on them), kept when an
        # update changes their content; the others (added, or placed by content in training) are placed
        # again. None: as ``pool`` (a directory written before this flag)
        self.kept: np.ndarray | None = None
        self.vectorizer = vectorizer or FixedCombination(manifest["weights"], manifest["modalities"], self.centers)
        # [N, T] per-item attention over manifest["tokens"] (modalities, and "id" when trained)
        self.attention = attention if attention is not None else self.vectorizer.attention(features, present)
        self.items = items
        self.features = features
        self.present = present
        self.manifest = manifest
        self.directory = directory
        # The version on disk this object holds (save); through load, read_whole checks it is the
        # one all the files came from.
        self._stamp = manifest_stamp(directory)
        self._pos = {it[ID_FIELD]: i for i, it in enumerate(items)}
        self.encoders = Encoders(manifest["encoders"], show_progress=show_progress, root=directory,
                                 modalities=manifest["modalities"])

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._pos

    @property
    def ids(self) -> list[ItemId]:
        """Every item id, in index order."""
        return [it[ID_FIELD] for it in self.items]

    def __repr__(self) -> str:
        m = self.manifest
        return f"ItemIndex(items={len(self)}, dim={m['dim']}, factory={m['factory']!r}, modalities={m['modalities']})"

    # --- vectors -----------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    def query_vector(self, modality: str, vector: np.ndarray) -> np.ndarray:
        """An index-space ``[1, D]`` vector for a query given in one modality."""
        return self.vectorizer.query_vector(modality, vector, {m: x.shape[1] for m, x in self.features.items()})

    # --- build / persist ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        catalog: Catalog | str | Path | None,
        out: str | Path | None = None,
        *,
        features: Mapping[str, str | Path] | None = None,
        factory: str = "auto",
        text_encoder: str | Path = "default",
        image_encoder: str | Path | None = "default",
        image_weights: str | Path | None = None,
        batch_size: int | None = None,
        max_length: int = 256,
        weights: dict[str, float] | None = None,
        cache_dir: str | Path | None = None,
        overwrite: bool = False,
        allow_download: bool = False,
        show_progress: bool = True,
        device: str = "cpu",
        center: bool = True,
        **catalog_options: Any,
    ) -> "ItemIndex":
        """Encode a catalog and build its index.

        Args:
            catalog: a :class:`Catalog` or a path for :func:`load_catalog` (``catalog_options``
                such as ``text_fields``, ``image_field``, ``image_root``, ``skip_invalid`` go there);
                ``None`` with ``features`` alone (item ``i`` is row ``i``, as in MMRec).
            out: directory to write; ``None`` keeps the index in memory only.
            features: precomputed modalities, name -> ``.npy`` file with one row per catalog row
                (an all-zero row: that item lacks the modality), beside or instead of the encoded
                ones; a name the catalog encodes (``text``, ``image``) is refused.
            factory: FAISS factory string, or ``auto`` (see :meth:`index.FaissIndex.resolve_factory`).
            text_encoder: ``default`` (packaged MiniLM) or a Hugging Face model directory.
            image_encoder: ``default`` (packaged EfficientNet-Lite0), a torchvision name, a Hugging
                Face directory, or ``None``/``"none"`` to ignore images.
            image_weights: state-dict file for a torchvision image backbone.
            batch_size: encoder batch size (default: the encoder's own).
            max_length: text truncation in tokens.
            weights: modality weights of the fixed combination, default equal.
            cache_dir: feature cache directory, ``None`` for no cache.
            overwrite: replace an existing ``out``.
            allow_download: let a text encoder given by Hugging Face Hub name download
                (off: only local directories and the packaged default load).
            show_progress: progress bars.
            device: torch device the encoders run on (``cpu``, ``cuda``, ``cuda:N``).
            center: measure similarity from each modality's catalog mean (default; see
                :func:`fusion.fixed.modality_centers`); ``False`` for the plain cosine of the
                encoder's vectors.
        """
        check_device(device)
        given = dict(features or {})
        if catalog is None and not given:
            raise MMRecError("nothing to index: give a catalog, precomputed features, or both")
        for name in given:
            if (problem := modality_name_problem(name)) is not None:
                raise ConfigError(f"features {name}={given[name]}: {problem}")
        check_out(out, overwrite, [catalog.source if isinstance(catalog, Catalog) else catalog,
                                   catalog_options.get("image_root"), cache_dir, text_encoder, image_encoder,
                                   image_weights, *given.values()])
        from mmrec.pipeline import load_content, read_catalog  # the pipeline imports this module

        if catalog is not None and not isinstance(catalog, Catalog):  # (a Catalog given: features follow its items)
            catalog = read_catalog(catalog, given, encoded_modalities(text_encoder, image_encoder), show_progress,
                                   **catalog_options)
        if catalog is not None:
            check_factory(factory, len(catalog))  # before the (slow) encoding
        content = load_content(catalog, given, text_encoder=text_encoder, image_encoder=image_encoder,
                               image_weights=image_weights, cache_dir=cache_dir, show_progress=show_progress,
                               device=device, max_length=max_length, batch_size=batch_size,
                               allow_download=allow_download)
        if not content.features:
            raise MMRecError(f"{catalog.source}: nothing to encode (no text, and images are off or absent)")
        empty = np.flatnonzero(~np.any([content.present[m] for m in content.features], axis=0))
        where = (lambda i: catalog.row(int(i))) if catalog is not None else (lambda i: int(i) + 1)  # 1-based file row
        if len(empty):  # an item the index could not place
            source = catalog.source if catalog is not None else "--features"
            raise DataError(source, [Problem(where(i), None, f"item {content.item_ids[i]!r} has no content: no "
                                                             "encoded text or image, and an all-zero row in every "
                                                             "feature file") for i in empty])
        if catalog is None:
            check_factory(factory, len(content.item_ids))
        self = cls.from_features(
            content.item_ids, content.features, content.present, content.records,
            factory=factory, weights=weights, encoders=content.encoders, hashes=content.hashes,
            show_progress=show_progress, center=center,
            text_fields=catalog.text_fields if catalog is not None else [],
            image_field=catalog.image_field if catalog is not None else None,
            source=catalog.source if catalog is not None else ", ".join(str(p) for p in given.values()),
            rows=[where(i) for i in range(len(content.item_ids))],
            mask_bad_images=catalog is not None and catalog.mask_bad_images,
        )
        if out is not None:
            self.save(out, overwrite=overwrite, skipped=catalog)
        elif catalog is not None:
            self._pending_skips = catalog.skip_records()
        return self

    @classmethod
    def from_features(
        cls,
        item_ids: Sequence[ItemId],
        features: dict[str, np.ndarray],
        present: dict[str, np.ndarray] | None = None,
        records: Sequence[dict[str, str]] | None = None,
        *,
        factory: str = "auto",
        weights: dict[str, float] | None = None,
        encoders: dict[str, dict] | None = None,
        hashes: Sequence[dict[str, str]] | None = None,
        vectors: np.ndarray | None = None,
        vectorizer: Any = None,
        attention: np.ndarray | None = None,
        show_progress: bool = True,
        center: bool = True,
        centers: Mapping[str, np.ndarray] | None = None,
        rows: Sequence[int] | None = None,
        **manifest_fields: Any,
    ) -> "ItemIndex":
        """An index from modality vectors already computed (precomputed features, tests).

        Args:
            item_ids: one id per row.
            features: modality ("text", "image") -> ``[N, D_m]`` vectors.
            present: modality -> ``[N]`` bool, default every row present.
            records: display fields per item.
            factory: FAISS factory string or ``auto``.
            weights: modality weights of the fixed combination, default equal.
            encoders: encoder specs for the manifest (needed for text/image queries).
            hashes: content hashes per item (kept for incremental rebuilds).
            vectors: ``[N, D]`` index vectors when they do not come from the features alone
                (a trained model's propagated item vectors); default ``vectorizer``'s.
            vectorizer: maps modality vectors to index vectors for added items and queries;
                default the fixed combination (:class:`FixedCombination`).
            attention: ``[N, T]`` per-item attention weights over ``vectorizer.tokens``
                (kept for explanations); default ``vectorizer.attention(features, present)``.
            center: measure content similarity from each modality's catalog mean (default:
                :func:`fusion.fixed.modality_centers` of ``features``, kept for items added
                later and for queries); ``False``: the plain cosine.
            centers: the means to use instead of computing them (a given ``vectorizer`` must
                use the same ones).
            rows: each item's 1-based row in the file it came from, named in errors.
        """
        item_ids = [canonical_id(i) for i in item_ids]  # numpy ids as the plain ones items.jsonl holds
        kinds = {type(i).__name__: i for i in item_ids}
        if len(kinds) > 1:  # (the string "1" then shadowed the int 1: resolve_id("1") finds one of them)
            got = " and ".join(f"{k} ({v!r})" for k, v in sorted(kinds.items()))
            raise MMRecError(f"item ids are all int or all str, got {got}: make them one type "
                             "(mmrec.ids.normalize_ids applies the catalogs' rule)")
        modalities = [m for m in MODALITY_ORDER if m in features] + sorted(set(features) - set(MODALITY_ORDER))
        n = len(item_ids)
        features = {m: np.ascontiguousarray(features[m], dtype=np.float32) for m in modalities}
        present = {m: np.asarray((present or {}).get(m, np.ones(n, bool)), dtype=bool) for m in modalities}
        w = {m: float((weights or {}).get(m, 1.0)) for m in modalities}
        if centers is None:
            centers = modality_centers(features, present) if center else {}
            for m in modalities:
                if center and m not in centers:
                    logger.info("%s similarity is the plain cosine: fewer than %d items have it, or they are all "
                                "alike (the means are fixed when `mmrec index build` encodes the catalog; "
                                "`index rebuild` keeps them)", m, CENTER_MIN_ITEMS)
        centers = {m: np.asarray(c, np.float32) for m, c in centers.items()}
        vectorizer = vectorizer or FixedCombination(w, modalities, centers)
        if vectors is None:
            vectors = vectorizer.item_vectors(features, present)
            _refuse_directionless(vectorizer, vectors, item_ids, manifest_fields.get("source") or "features", rows)
        index = FaissIndex.build(vectors, list(item_ids), factory=factory)
        manifest = {
            "kind": "content",
            "metric": "inner_product",
            "dim": int(vectors.shape[1]),
            "factory": index.factory,
            "modalities": modalities,
            "tokens": vectorizer.tokens,
            "weights": w,
            "centered": [m for m in modalities if m in centers],
            "encoders": dict(encoders or {}),
            "text_fields": [],
            "image_field": None,
            **manifest_fields,
        }
        records = records or [{} for _ in range(n)]
        hashes = hashes or [{} for _ in range(n)]
        items = [{ID_FIELD: i, "hashes": h, "fields": dict(r)} for i, h, r in zip(item_ids, hashes, records)]
        return cls(index, items, features, present, manifest, vectors, show_progress=show_progress,
                   vectorizer=vectorizer, attention=attention, centers=centers)

    def save(
        self,
        directory: str | Path,
        *,
        overwrite: bool = True,
        skipped: Catalog | None = None,
        attach: Any = None,
    ) -> None:
        """Write the index directory atomically (temp directory, then rename).

        Args:
            directory: where to write.
            overwrite: replace an existing directory.
            skipped: a catalog whose skipped rows go to ``skipped.jsonl``.
            attach: ``callable(tmp_dir) -> list[file names]`` writing further files (a trained
                model) into the directory; they are checksummed too. Without it, the files a
                previous save attached are carried over from the directory being replaced.
        """
        directory = Path(directory)
        if self.directory is None or directory.resolve() != self.directory.resolve():
            check_out(directory, overwrite)  # replacing a directory mmrec did not write loses it
            # Replacing one: after any in-place writer of it (which then finds it changed and stops).
            with writer_lock(directory) if overwrite and directory.is_dir() else contextlib.nullcontext():
                self._write(directory, overwrite=overwrite, skipped=skipped, attach=attach)
            return
        self._check_in_place()
        with writer_lock(self.directory):  # one writer at a time; a later one finds the directory changed
            self._check_unchanged()
            self._write(directory, overwrite=overwrite, skipped=skipped, attach=attach)

    def _write(self, directory: Path, *, overwrite: bool, skipped: Catalog | None, attach: Any) -> None:
        """:meth:`save`'s writing, once the target is checked."""
        attached = list(self.manifest.get("attachments", []))
        if attach is None and not attached and self.manifest.get("kind") == "trained":
            raise MMRecError("these are a trained model's item vectors, held in memory without the model's files: "
                             "train with an output directory (fit(..., out=DIR), mmrec train --out DIR) to save them")
        # Through a symlink, the directory it points to is replaced and the link kept (renaming onto
        # the link itself would turn it into a plain directory and leave the target stale).
        target = directory.resolve() if directory.is_symlink() else directory
        # ``attach`` may update the manifest in memory (a tuner points the encoder entries at the
        # files it writes): a failed save puts it back, as the disk is left as it was.
        before = copy.deepcopy(self.manifest)
        try:
            with atomic_directory(target, overwrite=overwrite) as tmp:
                if attach is not None:
                    attached = list(attach(tmp))
                else:
                    source = self.directory or directory
                    if attached and self.directory is not None:
                        self._check_unchanged()  # the model files there must be this object's
                    for name in attached:
                        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source / name, tmp / name)
                    if attached and self.directory is not None:
                        self._check_unchanged()  # and were not replaced while they were copied
                self.index.save(tmp)
                tensors = {f"feature.{m}": self.features[m] for m in self.modalities}
                tensors |= {f"present.{m}": self.present[m].astype(np.uint8) for m in self.modalities}
                tensors["vectors"] = np.ascontiguousarray(self.vectors, dtype=np.float32)
                tensors["attention"] = np.ascontiguousarray(self.attention, dtype=np.float32)
                tensors |= {f"center.{m}": self.centers[m] for m in self.manifest.get("centered", [])}
                if self.pool is not None:
                    tensors["pool"] = self.pool.astype(np.uint8)
                if self.kept is not None:
                    tensors["kept"] = self.kept.astype(np.uint8)
                save_file(tensors, str(tmp / "features.safetensors"))
                with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
                    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps made one a line
                    f.writelines(encode(it) + "\n" for it in self.items)
                # Every command's skipped rows, this one's after those the directory already listed
                # (a build or train writing a new directory starts the list).
                report = _skip_report(self._skips_so_far() + self._pending_skips,
                                      skipped.skip_records() if skipped is not None else [])
                if report:
                    with open(tmp / SKIP_REPORT, "w", encoding="utf-8") as f:
                        f.writelines(json.dumps(r) + "\n" for r in report)
                # skipped.jsonl is a report, not checksummed: a user may prune it without the directory refusing to load.
                files = sorted({p.name for p in tmp.iterdir() if p.is_file() and p.name != SKIP_REPORT} | set(attached))
                manifest = dict(
                    self.manifest, count=len(self), attachments=attached, checksums={n: sha256_file(tmp / n) for n in files}
                )
                manifest.pop("created", None)
                write_manifest(tmp, manifest)
                # This version's, read before it is published: after, the path may hold a later one.
                written, stamp = read_manifest(tmp, verify_checksums=False), manifest_stamp(tmp)
        except BaseException:
            self.manifest = before
            self.encoders.spec = before["encoders"]  # the Encoders share the manifest's dict
            raise
        self.manifest = written
        self.directory = self.encoders.root = directory
        self._stamp = stamp
        self._pending_skips = []

    def _list_skips(self, records: list[dict[str, Any]]) -> None:
        """Add ``records`` to the directory's ``skipped.jsonl`` alone (a temp file beside the
        directory, as every writer's, then renamed in; the mode of the file it replaces, else
        the directory files' default), the rest of the directory untouched: a report, not
        checksummed, so nothing reloads."""
        self._check_in_place()
        with writer_lock(self.directory):
            self._check_unchanged()
            report = _skip_report(self._skips_so_far() + self._pending_skips, records)
            target = self.directory.resolve()  # through a symlink: beside the directory it points to (one filesystem)
            path = target / SKIP_REPORT
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~umask()
            tmp = target.parent / f".{target.name}.{SKIP_REPORT}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in report)
                os.chmod(tmp, mode)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        self._pending_skips = []

    def _skips_so_far(self) -> list[dict[str, Any]]:
        """The records of the ``skipped.jsonl`` of the directory this index was loaded from (a
        line a user edited into no JSON object is left out)."""
        path = None if self.directory is None else self.directory / SKIP_REPORT
        if path is None or not path.is_file():
            return []
        records = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def _check_in_place(self, *, write: bool = True) -> None:
        """Refuse, before any work, a save in place that would lose files (:func:`check_rewrite`)
        or another command's work (the directory was rewritten since this object read it), and
        with ``write`` one this process cannot write (:func:`_check_creatable`, :func:`_check_renamable`)."""
        if self.directory is not None:
            self._check_unchanged()  # first: another command's files are no reason to move anything
            check_rewrite(self.directory, self.manifest, "run this")
            if write:  # (a read-only disk failed only after every new item was encoded, in the temporary folder's name)
                what = f"{self.directory} cannot be rewritten (nothing was changed)"
                _check_creatable(self.directory, what)
                _check_renamable(self.directory, what)

    def _refuse_cache_inside(self, cache_dir: str | Path | None) -> None:
        """Refuse, before any encoding, a feature cache inside this directory: the cache it would
        create there is a folder mmrec's index did not write, which the save (and every later change)
        refuses (``index build`` refuses it too, through :func:`check_out`)."""
        if cache_dir is not None and self.directory is not None and _within(cache_dir, self.directory):
            raise MMRecError(f"the feature cache {cache_dir} is inside the index directory {self.directory}, which "
                             "would then hold files mmrec did not write there: choose a cache directory outside it "
                             "(nothing was changed)")

    def _check_unchanged(self) -> None:
        if manifest_stamp(self.directory) != self._stamp:
            if not self.directory.exists():  # (deleted while this command waited for the lock)
                raise MMRecError(f"{self.directory} is gone (deleted or moved by another command) since it was "
                                 "loaded: nothing was changed")
            raise MMRecError(f"{self.directory} was rewritten by another command since it was loaded: nothing was "
                             f"changed; load it again and repeat")

    @classmethod
    def load(cls, directory: str | Path, *, show_progress: bool = True, trained: bool = False) -> "ItemIndex":
        """Open an index directory, verifying its manifest and checksums (:meth:`_load_once`;
        read again when another command rewrote the directory meanwhile, :func:`read_whole`)."""
        return read_whole(Path(directory), lambda: cls._load_once(directory, show_progress=show_progress,
                                                                   trained=trained))

    @classmethod
    def _load_once(cls, directory: str | Path, *, show_progress: bool = True, trained: bool = False) -> "ItemIndex":
        """Open an index directory, verifying its manifest and checksums.

        Args:
            directory: made by :meth:`build` / :meth:`save`.
            show_progress: progress bars of later work (encoding added items).
            trained: accept a trained directory, whose queries need its model: only for
                :meth:`mmrec.recommender.Recommender.load`, which attaches it.

        Raises:
            MMRecError: not an index directory, or a trained one (open it with
                ``Recommender.load``).
        """
        directory = Path(directory)
        if not directory.is_dir():
            what = "is a file, not an index directory" if directory.exists() else "no such index directory"
            if not directory.exists():  # a write interrupted between its two renames (index.persist._publish)
                what += _previous_versions(directory)
            raise MMRecError(f"{directory}: {what}")
        # Checks format_version and checksums, and that the fields read below are there.
        manifest = read_manifest(directory, required=MANIFEST_FIELDS, unverified=(SKIP_REPORT,))
        unlisted = [n for n in CHECKSUMMED if n not in manifest["checksums"]]
        if unlisted:  # a manifest without them would load unverified files
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: 'checksums' does not list "
                                   f"{', '.join(unlisted)} (the manifest was edited, or not written by this library)")
        if manifest.get("kind") == "trained" and not trained:
            raise MMRecError(f"{directory} is a trained directory: its vectors and queries need the model, so open "
                             f"it with mmrec.recommender.Recommender.load (it does everything ItemIndex does)")
        index = FaissIndex.load(directory)
        tensors = load_file(str(directory / "features.safetensors"))
        modalities = manifest["modalities"]
        features = {m: tensors[f"feature.{m}"] for m in modalities}
        present = {m: tensors[f"present.{m}"].astype(bool) for m in modalities}
        centers = {m: tensors[f"center.{m}"] for m in manifest.get("centered", [])}  # format 1 had none: plain cosine
        with open(directory / "items.jsonl", encoding="utf-8") as f, _gc_paused():
            # One parse of the whole file as a JSON array: a json.loads per line took twice as long
            # (1.07 s against 0.5 s at 173k items). Split on "\n" only: the fields are written with
            # ensure_ascii=False, and str.splitlines would also split inside a title holding U+2028.
            items = json.loads("[" + ",".join(line for line in f.read().split("\n") if line) + "]")
        if len(items) != manifest["count"] or index.dim != manifest["dim"] or len(index) != len(items):
            raise MMRecError(
                f"{directory}: manifest says {manifest['count']} items of dim {manifest['dim']}, files hold "
                f"{len(items)} items and a FAISS index of {len(index)} items of dim {index.dim}"
            )
        self = cls(index, items, features, present, manifest, tensors["vectors"], directory, show_progress=show_progress,
                   attention=tensors["attention"], centers=centers)
        if "pool" in tensors:  # format 1 had none: every item
            self.pool = tensors["pool"].astype(bool)
        if "kept" in tensors:
            self.kept = tensors["kept"].astype(bool)
        return self

    # --- queries -----------------------------------------------------------------------------
    def resolve_id(self, item_id: object) -> ItemId:
        """The stored id of an item given as typed on a command line (``"7"`` finds the int id
        ``7``) or as another type equal to it (``numpy.int64(7)``); ``True`` is no item id."""
        if isinstance(item_id, (bool, np.bool_)):  # though Python counts it as 1
            raise UnknownIdError(f"{bool(item_id)} is not an item id")
        item_id = one_id(item_id)
        if not isinstance(item_id, Hashable) or isinstance(item_id, np.ndarray):  # a list, an array, a Series
            raise UnknownIdError(f"one item id was expected, got a {type(item_id).__name__}: "
                                 f"{reprlib.repr(item_id)}")
        if item_id in self._pos:  # the common case, before building the alternatives
            return self.items[self._pos[item_id]][ID_FIELD]  # the stored key, never the caller's object
        long = too_long(item_id)
        if long:
            raise UnknownIdError(f"{long} is not in this index ({len(self)} items)")
        text = str(item_id)
        for alt in (text, *normalize_ids([text])):
            if alt in self._pos:
                return self.items[self._pos[alt]][ID_FIELD]
        raise UnknownIdError(f"item '{item_id}' is not in this index ({len(self)} items)")

    def fields(self, item_id: object) -> dict[str, str]:
        """The display fields stored for one item (a copy; ids resolved as :meth:`resolve_id`).

        Raises:
            UnknownIdError: the item is not in this index.
        """
        return dict(self.items[self._pos[self.resolve_id(item_id)]]["fields"])

    def vector_of(self, item_id: object) -> np.ndarray:
        """The vector of one item as FAISS stores it, ``[1, D + 1]``: :meth:`item_vectors` divided
        by the largest item norm, with the maximum-inner-product reduction's column added
        (:mod:`index.mips`)."""
        i = self._pos[self.resolve_id(item_id)]
        return self.vectors[i : i + 1]

    def item_vectors(self, item_ids: Sequence[object] | None = None) -> np.ndarray:
        """``[N, D]`` float32: the items' vectors, those queries are scored against by dot product
        (a trained model's item vectors: ``rec.user_vectors[u] @ item_vectors().T`` are the scores
        ``recommend`` returns), in :attr:`ids` order, or for ``item_ids`` in their order. :attr:`vectors`
        holds them as FAISS does (rescaled, with the reduction's extra column)."""
        rows = slice(None) if item_ids is None else [self._pos[self.resolve_id(i)] for i in id_list(item_ids)]
        return self.vectorizer.mips.original(self.vectors[rows])

    def _results(self, ids: list[ItemId], scores: np.ndarray) -> list[Result]:
        return [Result(i, float(s), self.items[self._pos[i]]["fields"]) for i, s in zip(ids, scores)]

    def search_vectors(self, queries: np.ndarray, k: int = 10, exclude=None, exclude_all=(),
                       only=None) -> list[list[Result]]:
        """Top-k items for each query vector ``[B, D]`` (already in index space).

        Args:
            queries: ``[B, D]`` query vectors.
            k: results per query; fewer only when fewer eligible items exist.
            exclude: per query, ids that must not be returned (the index over-fetches so
                that k results still come back).
            exclude_all: ids no query may return, hidden inside FAISS (an ``IDSelector``).
            only: ``None`` (every item) or the ids a query may return, also hidden inside FAISS.
        """
        k = check_count(k)
        ids, scores = self.index.search(queries, k, exclude=exclude, exclude_all=exclude_all, only=only)
        return [self._results(i, self.vectorizer.rescore(s, q)) for i, s, q in zip(ids, scores, queries)]

    def similar(self, item_id: object, k: int = 10, *, by: str = "index", exclude: Sequence[object] = (),
                only: Sequence[object] | None = None) -> list[Result]:
        """The k items most similar to a catalog item (the item itself excluded).

        Args:
            by: ``"index"`` (default): the index's own ranking (FAISS; for a trained model the
                dot product that serves users, which favours popular items' long vectors);
                ``"cosine"``: the exact cosine of the item vectors (an exact scan), the items
                whose direction is closest whatever their popularity.
            exclude: item ids never to return (a business rule: out of stock, already shown);
                ids not in the index are ignored. k results still come back while k remain.
            only: ``None`` (default: every item) or the candidate ids: nothing outside them is
                returned (a category, a region's stock: :meth:`matching` builds it from display
                fields); ids not in the index are ignored. ``exclude`` still applies within it.
        """
        return self.similar_many([item_id], k, by=by, exclude=exclude, only=only)[0]

    def filters(self, exclude: Sequence[object] | ItemId = (), only: Sequence[object] | ItemId | None = None,
                where: Mapping[str, Any] | Sequence[str] | None = None
                ) -> tuple[AbstractSet[ItemId], AbstractSet[ItemId] | None]:
        """A query's business rules resolved against this index, as the searches take them:
        ``(excluded_ids(exclude), candidate_ids(only, where))``."""
        return self.excluded_ids(exclude), self.candidate_ids(only, where)

    def candidate_ids(self, item_ids: Sequence[object] | ItemId | None,
                      where: Mapping[str, Any] | Sequence[str] | None = None) -> AbstractSet[ItemId] | None:
        """``only`` as :meth:`excluded_ids` resolves ids (those not in the index dropped and
        counted in an info log line), narrowed to the items :meth:`matching` ``where`` when given;
        ``None`` for neither: every item is a candidate.

        For ``where`` alone, the set is a :class:`CandidateSet` (a frozenset) kept with the answer: the same
        conditions again (a server's usual filter) give the same set, which a query given it as
        ``only`` neither resolves again nor turns into FAISS labels again (10-20 ms a query at
        100k candidates before, measured)."""
        allowed = None if item_ids is None else self.excluded_ids(item_ids, "candidate")
        if where is not None and not isinstance(where, (Mapping, str)):  # an array, a Series: its conditions
            where = _values(where, "where")
        if where:
            answer = self._answer(where)
            if allowed is not None:
                return allowed.intersection(answer[0])
            if answer[1] is None:
                answer[1] = CandidateSet(answer[0])
                answer[1].owner = self.vectors
            return answer[1]
        return allowed

    def matching(self, where: Mapping[str, Any] | Sequence[str]) -> list[ItemId]:
        """The ids of the items whose display fields match ``where``, in index order: pass them
        as ``only=`` to restrict a query to a category, a brand, a region, a price range.

        ``where`` maps a field to one value or a list of values, or is a list of conditions
        ``"FIELD=VALUE"``, ``"FIELD!=VALUE"``, ``"FIELD>=N"`` (also ``>``, ``<=``, ``<``), as
        ``--where`` takes them. An item matches ``FIELD=VALUE`` when the field's text equals the
        value, or, for a field of ``|``-separated values (MovieLens ``genres``, ``cast``), when one
        of its parts does (surrounding spaces ignored, case counts), or when the value and the
        field write the same number, compared exactly (``price=100`` matches ``100.0``; two
        20-digit ids that float64 would merge stay apart); an empty value matches the
        items that lack the field or have it empty (``price=``); ``!=`` is its opposite; the
        comparisons read the field as a number, and an item whose field is no number never
        matches them. A field's ``=`` values are alternatives; every other condition, and every
        field, must hold.

        The first query of a field reads every item's value of it (0.6 s for a ``|``-separated tag
        field of 200,000 items, measured); later ones, until ``add`` / ``update`` / ``remove`` change the items,
        look the values up (Benchmarks, Restricting queries to candidates).

        Raises:
            ConfigError: a field that is not a display field of this index (the message lists
                them), a field given an empty list of values, a malformed condition, or a
                comparison with a value that is no number.
        """
        return list(self._answer(where)[0])

    def _answer(self, where: Mapping[str, Any] | Sequence[str]) -> list:
        """:meth:`matching`'s answer as it is kept: ``[ids in index order, their CandidateSet or
        None until candidate_ids makes it]``."""
        cache = self._facets
        if cache is None or cache[0] is not self.vectors:  # add / update / remove replace the vectors
            cache = self._facets = (self.vectors, {}, {}, {})
        facets, numbers, answers = cache[1], cache[2], cache[3]
        conditions_given = self._conditions(where)
        key = tuple(sorted(conditions_given, key=repr))
        if key in answers:  # the same conditions again (a server's usual filter): the ids found before
            return answers[key]
        by_field: dict[str, list[tuple[str, str]]] = {}
        for field, op, value in conditions_given:
            by_field.setdefault(field, []).append((op, value))
        keep = np.arange(len(self.items))
        for field, conditions in by_field.items():
            # A field only compared as a number needs no lookup of its values (0.6 s at 200k items).
            if field not in facets and any(op in ("=", "!=") for op, _ in conditions):
                facets[field] = self._facet(field)

            def rows_of(values: list[str]) -> np.ndarray:
                facet = facets[field]
                found = [facet[v] for v in values if v in facet]
                for value in values:
                    number = exact_number(value)
                    if number is not None:  # price=100 is also the item whose price reads 100.0
                        if (field, "exact") not in numbers:
                            numbers[field, "exact"] = self._exact_numbers(field)
                        found.append(numbers[field, "exact"].get(number, np.zeros(0, np.int64)))
                return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

            equal = [value for op, value in conditions if op == "="]
            for value in {v for op, v in conditions if op in ("=", "!=")} - set(facets[field]) if field in facets else ():
                near = sorted(v for v in facets[field] if v.casefold() == value.casefold())
                if near and exact_number(value) is not None and len(rows_of([value])):
                    continue  # 1E2 found 1e2 (and 100) as a number: it matched
                if near:  # case counts: say what the field holds
                    logger.warning("%s=%s matches no item (case counts): the field holds %s", field, value,
                                   ", ".join(repr(v) for v in near))
            for value in equal:  # year=>2000 is the text '>2000': say what was likely meant
                if value[:1] in ("<", ">", "=") and where_number(value[1:]) is not None and not len(rows_of([value])):
                    meant = f"{field}={value[1:]}" if value[0] == "=" else f"{field}{value[0]}={value[1:]}"
                    logger.warning("%s=%s compares the text %r, which no item has: %s compares numbers",
                                   field, value, value, meant)
            if equal:
                keep = np.intersect1d(keep, rows_of(equal), assume_unique=True)
            for op, value in conditions:
                if op == "!=":
                    keep = np.setdiff1d(keep, rows_of([value]), assume_unique=True)
                elif op != "=":
                    bound = where_number(value)  # a number: checked by _conditions
                    if field not in numbers:
                        numbers[field] = self._numbers(field)
                    x = numbers[field][keep]  # NaN where the field is no number: no comparison holds
                    with np.errstate(invalid="ignore"):
                        hold = {">=": x >= bound, "<=": x <= bound, ">": x > bound, "<": x < bound}[op]
                    keep = keep[hold]
        found = [self.items[i][ID_FIELD] for i in keep]
        # Kept for the next call, at most MATCHING_ANSWERS of them holding MATCHING_IDS_PER_ITEM ids
        # an item in all (an answer counted one more, so empty ones count too: a server whose users
        # choose their own bounds asks many distinct filters; its set, once made, counted twice),
        # the oldest dropped first.
        budget = MATCHING_IDS_PER_ITEM * max(len(self.items), 1)
        answers[key] = answer = [found, None]
        while len(answers) > MATCHING_ANSWERS or sum(len(ids) * (1 + (kept is not None)) + 1
                                                     for ids, kept in answers.values()) > budget:
            del answers[next(iter(answers))]
        return answer

    @staticmethod
    def _conditions(where: Mapping[str, Any] | Sequence[str]) -> list[tuple[str, str, str]]:
        """``where`` (:meth:`matching`) as ``(field, operator, value)`` conditions."""
        out = []
        if isinstance(where, Mapping):
            for field, values in where.items():
                values = [cell_text(v).strip() for v in _values(values, f"field '{field}'")]  # True as 'true', None as '' (a blank cell), as stored
                if not values:
                    raise ConfigError(f"field '{field}' was given no value to match (an empty list matches "
                                      "nothing; '' matches the items without the field)")
                out += [(field, "=", v) for v in values]
            return out
        for text in [where] if isinstance(where, str) else _values(where, "where"):
            condition = split_where(str(text))
            if condition is None:
                raise ConfigError(f"condition {text!r} is not FIELD=VALUE, FIELD!=VALUE or FIELD>=N (>, <=, <)")
            if condition[1] not in ("=", "!=") and where_number(condition[2]) is None:
                raise ConfigError(f"condition {text!r}: {condition[2]!r} is not a number")
            out.append(condition)
        return out

    def _numbers(self, field: str) -> np.ndarray:
        """``[N]`` float64: the display field ``field`` read as a number (:func:`where_number`),
        NaN where it is none."""
        texts = [item["fields"].get(field) for item in self.items]
        if all(text is None for text in texts):
            raise self._not_a_field(field)
        values = (None if text is None else where_number(text) for text in texts)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def _exact_numbers(self, field: str) -> dict[decimal.Decimal, np.ndarray]:
        """Each number the display field ``field`` reads as (:func:`exact_number`), whole or in
        a part of a ``|``-separated one (as :meth:`_facet` has the parts: ``sizes=1.0`` finds
        ``1|2``) -> the sorted positions of the items with it."""
        positions: dict[decimal.Decimal, list[int]] = {}
        for i, item in enumerate(self.items):
            text = item["fields"].get(field)
            if text is None:
                continue
            values = {text} | set(text.split("|")) if "|" in text else (text,)
            for number in {exact_number(value) for value in values} - {None}:
                positions.setdefault(number, []).append(i)
        return {number: np.array(rows, dtype=np.int64) for number, rows in positions.items()}

    def _not_a_field(self, field: str) -> ConfigError:
        known = sorted({name for item in self.items for name in item["fields"]})
        return ConfigError(f"field '{field}' is not a display field of this index; its fields are: "
                           f"{', '.join(known) or '(none)'}")

    def _facet(self, field: str) -> dict[str, np.ndarray]:
        """Each value of the display field ``field`` -> the sorted positions of the items with
        it: the whole text, and each part of a ``|``-separated one, without surrounding spaces;
        ``""`` -> the items whose field is empty or missing.

        Raises:
            ConfigError: no item has the field (the message lists the index's fields).
        """
        positions: dict[str, list[int]] = {}
        has = False
        for i, item in enumerate(self.items):
            text = item["fields"].get(field)
            if text is None:
                positions.setdefault("", []).append(i)
                continue
            has = True
            text = text.strip()
            parts = {part.strip() for part in text.split("|")} - {""} if "|" in text else set()
            for value in {text} | parts:  # "Comedy|" is "Comedy", not also empty
                positions.setdefault(value, []).append(i)
        if not has:
            raise self._not_a_field(field)
        return {value: np.array(rows, dtype=np.int64) for value, rows in positions.items()}

    def excluded_ids(self, item_ids: Sequence[object] | ItemId, what: str = "excluded") -> AbstractSet[ItemId]:
        """The ids of ``item_ids`` that are in the index (as typed on a command line: ``"7"`` finds
        the int id ``7``; a single string or int is one id); the others are dropped, as what is
        not in the index is never returned, and counted in an info log line naming ``what``."""
        if type(item_ids) is CandidateSet and item_ids.owner is self.vectors:  # made by candidate_ids here
            return item_ids
        item_ids = id_list(item_ids)  # "19" is item 19, not the items "1" and "9"
        found, missing = set(), 0
        pos = self._pos
        for i in item_ids:
            if (type(i) is str or type(i) is int) and i in pos:  # a stored id as it is (most lists): no lookup
                found.add(i)
                continue
            if isinstance(i, bytes):
                i = i.decode("utf-8", errors="replace")
            try:
                if isinstance(i, bool):  # True is no item id, though Python counts it as 1
                    raise MMRecError(f"{i!r} is not an item id")
                found.add(self.resolve_id(i))
            except MMRecError:
                missing += 1
        if missing:
            logger.info("%d of the %d %s ids are not in this index (ignored)", missing, missing + len(found), what)
        return found

    def similar_many(self, item_ids: Sequence[object], k: int = 10, *, by: str = "index", batch_size: int = 1024,
                     show_progress: bool = False, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None) -> list[list[Result]]:
        """:meth:`similar` for many items, in ``item_ids`` order: one FAISS search (or one
        ``[B, N]`` product for ``by="cosine"``) per ``batch_size`` items instead of one per item;
        ``exclude`` and ``only`` (as for :meth:`similar`) apply to every one of them.

        For exports such as a "related items" table of the whole catalog. A batched product may
        round a score differently from a single one (one float32 ulp). ``by="cosine"`` holds one
        ``[B, N]`` float32 score matrix at a time, ``B`` lowered so that it stays under 256 MB.

        Raises:
            MMRecError: an unknown item (named before any search), ``k < 1``, ``batch_size < 1``.
            ConfigError: ``by`` is neither ``"index"`` nor ``"cosine"``.
        """
        if by not in ("index", "cosine"):
            raise ConfigError(f"by must be 'index' or 'cosine', got {by!r}")
        k, batch_size = check_count(k), check_count(batch_size, "batch_size")
        ids = [self.resolve_id(i) for i in id_list(item_ids)]  # "12" is item 12, not 1 and 2
        rows = np.array([self._pos[i] for i in ids], dtype=np.int64)
        dropped, allowed = self.filters(exclude, only)
        unit = drop = None
        if by == "cosine":
            drop = self._cosine_drop(dropped, allowed)  # their rows
            unit = self._unit_vectors()  # [N, D]
            # Each batch is a [B, N] score matrix: at most COSINE_BATCH_SCORES of them (256 MB).
            batch_size = max(1, min(batch_size, COSINE_BATCH_SCORES // max(len(unit), 1)))
        out: list[list[Result]] = []
        with tqdm(total=len(ids), desc="similar items", unit="item", disable=not show_progress) as bar:
            for start in range(0, len(ids), batch_size):
                batch, brows = ids[start : start + batch_size], rows[start : start + batch_size]
                if by == "index":
                    queries, own = self.similar_queries(brows)  # [B, D + 1], the items themselves
                    out += self.search_vectors(queries, k, exclude=own, exclude_all=dropped, only=allowed)
                else:
                    out += self._cosine_top_many(unit, unit[brows], k, skip=brows, drop=drop)
                bar.update(len(batch))
        return out

    def _cosine_drop(self, dropped: set[ItemId], allowed: set[ItemId] | None) -> np.ndarray:
        """The rows an exact cosine scan leaves out: ``dropped``'s and, given ``allowed``, every
        row outside it (sorted)."""
        if allowed is None:
            return np.array(sorted(self._pos[i] for i in dropped), dtype=np.int64)
        keep = np.zeros(len(self.items), dtype=bool)
        keep[[self._pos[i] for i in allowed if i not in dropped]] = True
        return np.flatnonzero(~keep)

    def similar_queries(self, rows: np.ndarray) -> tuple[np.ndarray, list[set[ItemId]]]:
        """What :meth:`similar` sends the index for the items at these rows: their queries
        ``[B, D + 1]`` and, per query, the ids it excludes (the item itself)."""
        return self.vectorizer.item_query(self.vectors[rows]), [{self.items[r][ID_FIELD]} for r in rows]

    def _unit_vectors(self) -> np.ndarray:
        """The item vectors before the MIPS coordinate, at unit norm, ``[N, D]``: computed once per
        item set (kept until ``add`` / ``update`` / ``remove`` replace the vectors), so neither an export that
        calls :meth:`similar_many` chunk by chunk nor each text query of a server redoes it."""
        cached = self._unit_cache
        if cached is None or cached[0] is not self.vectors:
            raw = self.vectorizer.mips.original(self.vectors)  # [N, D]
            cached = self._unit_cache = (self.vectors, raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True),
                                                                        1e-12))
        return cached[1]

    def search_text(self, text: str, k: int = 10, *, exclude: Sequence[object] = (),
                    only: Sequence[object] | None = None, by: str = "index") -> list[Result]:
        """The k items closest to a free-text query (``exclude`` and ``only`` as for :meth:`similar`;
        ``by`` as for :meth:`search_texts`)."""
        if not isinstance(text, str):
            raise MMRecError(f"a text query is a string, got {type(text).__name__}"
                             + (": search_texts takes several" if isinstance(text, (list, tuple)) else ""))
        if not has_text(text):
            raise MMRecError("empty text query" + (" (only characters the encoder drops)" if text.strip() else ""))
        return self.search_texts([text], k, exclude=exclude, only=only, by=by)[0]

    def search_texts(self, texts: Sequence[str], k: int = 10, *, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None, by: str = "index") -> list[list[Result]]:
        """:meth:`search_text` for many queries, encoded together in the encoder's batches (the
        costly part of a text query), in ``texts`` order. A query encoded in a batch may differ
        from the same query encoded alone in the last float32 digits. ``exclude`` and ``only``
        apply to every query.

        ``by="index"`` (default) ranks as the index places queries: on a trained directory
        through the trained content path (by cosine with the trained item vectors), on a
        content index by its fixed combination; ``by="content"`` ranks by the cosine of the
        query with the items' own text features alone (measured from the catalog mean, as the
        content index does), an exact scan over the items that have text: on a trained
        directory, what the untrained content index would answer, which keeps exact titles and
        product words the trained path may blur.

        Raises:
            MMRecError: an empty query (named by its place, from 1), ``k < 1``, an index without text.
            ConfigError: ``by`` neither ``"index"`` nor ``"content"``.
        """
        _check_search_by(by)
        if isinstance(texts, (str, bytes)):
            raise MMRecError("search_texts takes a list of queries, got one string: use search_text, or [text]")
        texts = list(texts)
        for n, text in enumerate(texts):
            if not isinstance(text, str) or not has_text(text):
                which = f"text query {n + 1} of {len(texts)}"  # counted from 1, as a --text option's place
                raise MMRecError(f"{which} is empty" + (" (only characters the encoder drops)" if text.strip() else "")
                                 if isinstance(text, str) else f"{which} is a {type(text).__name__}, not a string")
            mended, first = mend_surrogates(text)
            if first is not None:  # half of a character: a cut emoji, a command-line argument that is no UTF-8
                logger.warning("text query %d of %d holds %r, half of a character (no UTF-8), read as U+FFFD",
                               n + 1, len(texts), first)
                texts[n] = mended
        encoder = self.encoders.get("text")  # an index without text says so first
        k = check_count(k)
        if not texts:
            return []
        q = encoder.encode(texts)  # [B, D_t]
        if by == "content":
            return self._search_content("text", q, k, exclude, only)
        return self._search_queries([self.query_vector("text", q[b : b + 1]) for b in range(len(texts))], k,
                                    exclude, only)

    def search_image(self, path: str | Path, k: int = 10, *, exclude: Sequence[object] = (),
                     only: Sequence[object] | None = None, by: str = "index") -> list[Result]:
        """The k items closest to a query image (a local file; ``exclude`` and ``only`` as for
        :meth:`similar`, ``by`` as for :meth:`search_texts`, with the items' image features).

        Raises:
            MMRecError: the file does not exist or does not decode as an image.
        """
        return self.search_images([path], k, exclude=exclude, only=only, by=by)[0]

    def search_images(self, paths: Sequence[str | Path], k: int = 10, *, exclude: Sequence[object] = (),
                      only: Sequence[object] | None = None, by: str = "index") -> list[list[Result]]:
        """:meth:`search_image` for many image files, encoded together, in ``paths`` order;
        ``exclude`` and ``only`` apply to every query; ``by`` as for :meth:`search_texts`.

        Raises:
            MMRecError: a file that does not exist or does not decode (named), ``k < 1``, an
                index without images.
            ConfigError: ``by`` neither ``"index"`` nor ``"content"``.
        """
        _check_search_by(by)
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise MMRecError("search_images takes a list of image files, got one path: use search_image, or [path]")
        encoder = self.encoders.get("image")  # an index without images says so first
        # a file:// URI is the file it names, as in a catalog's image column; another URL is no file
        given = [str(p) for p in paths]
        paths = [local_image_path(p) for p in given]
        for path, as_given in zip(paths, given):
            if Path(path).is_file():
                continue
            if is_image_url(as_given):
                raise MMRecError(f"query image {as_given}: a URL: mmrec reads local image files only (download it first)")
            raise MMRecError(f"query image {as_given}: " + ("not a regular file" if path and Path(path).exists() else
                                                            "file not found"))
        k = check_count(k)
        if not paths:
            return []
        from encoders.image import ImageDecodeError

        try:
            q = encoder.encode_paths(paths)  # [B, D_v]
        except ImageDecodeError as e:
            raise MMRecError(f"query image {e.path}: {e.reason}") from e
        if by == "content":
            return self._search_content("image", q, k, exclude, only)
        return self._search_queries([self.query_vector("image", q[b : b + 1]) for b in range(len(paths))], k,
                                    exclude, only)

    def _search_query(self, query: np.ndarray, k: int) -> list[Result]:
        """Top-k for one text or image query vector ``[1, D]`` (:meth:`_search_queries`)."""
        return self._search_queries([query], k)[0]

    def _search_queries(self, queries: list[np.ndarray], k: int, exclude: Sequence[object] = (),
                        only: Sequence[object] | None = None) -> list[list[Result]]:
        """Top-k for each text or image query vector ``[1, D]``, none of ``exclude`` and, given
        ``only``, only those items.

        Indexes whose vectorizer sets ``query_by_cosine`` (trained models) rank by the cosine of
        the raw item vectors with the query, by an exact scan: under the dot product that serves
        users, the long vectors of popular items would outrank what the query describes.
        """
        dropped, allowed = self.filters(exclude, only)
        if not getattr(self.vectorizer, "query_by_cosine", False):
            return self.search_vectors(np.concatenate(queries), k, exclude_all=dropped, only=allowed)
        q = np.concatenate(queries)[:, :-1].astype(np.float32)  # [B, D]: the MIPS query is [q, 0]
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return self._cosine_top_many(self._unit_vectors(), q, k, drop=self._cosine_drop(dropped, allowed))

    def _search_content(self, modality: str, queries: np.ndarray, k: int, exclude: Sequence[object] = (),
                        only: Sequence[object] | None = None) -> list[list[Result]]:
        """Top-k for encoded queries ``[B, D_m]`` by their cosine with the items' ``modality``
        features (centred as the index centres them), among the items that have it."""
        from mmrec.explain import _modality_units  # (explain reads this module)

        has, unit = _modality_units(self, modality)  # [N], [N, D_m]
        if len(has) and not has.any():  # (an empty index answers nothing, as --by index does)
            raise MMRecError(f"no item of this index has {modality} features to compare the query with (the "
                             f"modality is masked for every item): search with --by index instead")
        q = np.asarray(queries, np.float32)
        center = self.centers.get(modality)
        if center is not None:
            q = q - center
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise MMRecError(f"a {modality} query vector less the catalog's mean is zero: it has no direction to "
                             "rank items by")
        dropped, allowed = self.filters(exclude, only)
        drop = np.union1d(self._cosine_drop(dropped, allowed), np.flatnonzero(~has))
        return self._cosine_top_many(unit, q / norms, k, drop=drop)

    def _cosine_top_many(self, unit: np.ndarray, queries: np.ndarray, k: int,
                         skip: np.ndarray | None = None, drop: np.ndarray | None = None) -> list[list[Result]]:
        """The k rows of unit-norm ``unit [N, D]`` with the highest cosine to each unit-norm query
        of ``queries [B, D]`` (query ``b`` leaving out row ``skip[b]``, every query the rows
        ``drop``), by an exact scan; ties keep index order."""
        sims = queries @ unit.T  # [B, N]
        if skip is not None:
            sims[np.arange(len(skip)), skip] = -np.inf
        if drop is not None and len(drop):
            sims[:, drop] = -np.inf
        out = []
        for row in sims:
            kk = min(k, int(np.isfinite(row).sum()))  # the rows left out are never returned
            if kk <= 0:
                out.append([])
                continue
            kth = np.partition(row, row.size - kk)[row.size - kk]  # the kk-th highest score
            cand = np.flatnonzero(row >= kth)  # [>= kk], index order: ties at the cut stay in it
            top = cand[np.argsort(-row[cand], kind="stable")[:kk]]
            out.append([Result(self.items[i][ID_FIELD], float(row[i]), self.items[i]["fields"]) for i in top])
        return out

    # --- changes -----------------------------------------------------------------------------
    def add(
        self,
        catalog: Catalog | str | Path | Sequence[Mapping[str, Any]] | Any,
        *,
        features: Mapping[str, str | Path] | None = None,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        **catalog_options,
    ) -> int:
        """Encode and add new items (only the new rows are encoded); saves when opened from disk.

        Args:
            catalog: the new items (same columns as the index's catalog): a file, rows in memory (a
                list of dicts, a pandas DataFrame), or a loaded :class:`Catalog`.
            features: for an index with precomputed modalities (``--features`` at build or
                training time): modality -> ``.npy`` file with one row per new item, in catalog
                order. A precomputed modality left out is masked for the new items (as a
                missing image is).
            cache_dir: feature cache of the encoders.
            device: torch device to encode on (default: where the encoders are, ``cpu`` unless
                moved with ``encoders.to``); checked before anything is read.
            **catalog_options: :func:`~mmrec.catalog.load_catalog` options.

        Returns:
            the number of items added.

        Raises:
            ConfigError: a ``features`` name that is not a precomputed modality of the index.
            DataError: bad catalog rows or feature files (row count, width, values).
            MMRecError: a new item with none of the index's modalities; an index without any
                (an ID-only model).
        """
        self._check_in_place()
        self._refuse_cache_inside(cache_dir)
        roles = self._content_roles("a new item", device, features)
        catalog, read_here = self._read_rows(catalog, roles, catalog_options)
        before = {id(q) for q in catalog.skipped}
        skip = bool(catalog_options.get("skip_invalid"))
        catalog = check_catalog_ids(catalog, set(self._pos), catalog.source, skip=skip, id_type=self._id_type())
        # Everything that can refuse the add runs before the (slow) encoding.
        if features:  # the rows skipped from the file, or as ids already in the index
            refuse_skipped_rows(catalog.source, _skipped_here(catalog, read_here, before))
        else:  # a row with none of the index's modalities (with a precomputed one, the loader lets it by)
            bare = [i for i in range(len(catalog)) if not self._row_content(catalog, i, roles, {})]
            if bare:
                catalog = drop_rows(catalog, bare, [self._bare_row(catalog, i, roles) for i in bare], catalog.source,
                                    skip=skip, summary=f"{len(bare)} new row(s) with no content")
        loaded = self._given_features(roles, len(catalog))
        bare = [i for i in range(len(catalog)) if not self._row_content(catalog, i, roles, loaded)]
        if bare:  # (their feature rows all zero)
            raise DataError(catalog.source, [self._bare_row(catalog, i, roles) for i in bare])
        new_features, present, hashes = self._encode_new(catalog, roles, loaded, cache_dir)
        before = self._snapshot()
        try:
            self.add_features(catalog.item_ids, new_features, present, catalog.records, hashes, save=False,
                              source=str(catalog.source), rows=[catalog.row(i) for i in range(len(catalog))])
            self._placed_by_content(len(catalog))
        except BaseException:
            if self.directory is not None:
                self._restore(before)
            raise
        if self.directory is not None:
            self._save_or_restore(before, skipped=catalog)
        else:
            self._pending_skips = _skip_report(self._pending_skips, catalog.skip_records())
        return len(catalog)

    def _content_roles(self, what: str, device: str | None,
                       features: Mapping[str, str | Path] | None, placing: bool = True) -> dict[str, Any]:
        """Which of the index's modalities a catalog change encodes, reads from ``features``
        (``.npy``) or leaves masked; checks the device and the ``features`` names first. An
        ID-only model has none: refused where items are ``placing`` (added), and for an update
        (display fields alone) taken."""
        if not self.modalities and not placing and not features:
            return {"masked": [], "encoded": [], "precomputed": [], "given": {}}
        if not self.modalities:
            raise MMRecError(f"{self.directory or 'this index'} has no content modality (an ID-only model): {what} "
                             f"has nothing to be placed by; train again with the new items (mmrec train)")
        if device is not None:
            self.encoders.to(device)  # checks it; the encoders load (or move) there
        masked = [m for m in self.modalities if m in self.manifest.get("masked", [])]  # no item of the model has them
        encoded = [m for m in self.modalities if m in self.encoders.spec and m not in masked]
        precomputed = [m for m in self.modalities if m not in self.encoders.spec and m not in masked]
        given = dict(features or {})
        unknown = sorted(set(given) - set(precomputed))
        if set(unknown) & set(masked):
            raise ConfigError(f"features {', '.join(sorted(set(unknown) & set(masked)))}: no item of this model has that "
                              "modality (left out when it was trained), so the new items cannot have it either")
        if unknown:
            raise ConfigError(
                f"features {', '.join(unknown)} are not precomputed modalities of this index (precomputed: "
                f"{', '.join(precomputed) or 'none'}; encoded from the catalog: {', '.join(encoded) or 'none'})"
            )
        return {"masked": masked, "encoded": encoded, "precomputed": precomputed, "given": given}

    def _read_rows(self, catalog: Catalog | str | Path, roles: dict[str, Any], catalog_options: dict[str, Any], *,
                   partial: bool = False) -> tuple[Catalog, bool]:
        """``(catalog, read here)``: a file read with the index's text and image columns (a
        :class:`Catalog` given loaded is taken as it is). ``partial``: a row may lack content (an
        update keeps what its file does not have)."""
        if isinstance(catalog, Catalog):  # given loaded: features follow its items
            return catalog, False
        opts = {"text_fields": self.manifest["text_fields"], "image_field": self.manifest["image_field"],
                # as the directory was built or trained (an option given here wins)
                "mask_bad_images": self.manifest.get("mask_bad_images", False),
                "require_content": not roles["precomputed"] and not partial, "encoded": roles["encoded"],
                # the index's fields may be missing from the new file: that modality is masked
                "optional": [k for k in ("text_fields", "image_field") if k not in catalog_options], "partial": partial,
                "every_image_may_fail": True,  # the index's items have pictures of their own, or none
                # images whose bytes the index stores decoded when they were added: not decoded again
                "checked_images": {it["hashes"]["image"] for it in self.items if "image" in it["hashes"]}
                if "image" in roles["encoded"] else ()}
        return load_catalog(catalog, show_progress=self.encoders.show_progress, **(opts | catalog_options)), True

    def _given_features(self, roles: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
        """The ``.npy`` features given for precomputed modalities, one row per catalog row, their
        widths checked against the index's."""
        from mmrec.pipeline import load_npy_features  # the pipeline imports this module

        given = roles["given"]
        loaded = load_npy_features(given, rows)
        for m, x in loaded.items():
            width = self.features[m].shape[1]
            if x.shape[1] != width:
                raise DataError(given[m], [Problem(None, None, f"{x.shape[1]} columns, but the index's {m} "
                                                               f"features are {width} wide")])
        return loaded

    def _encode_new(self, catalog: Catalog, roles: dict[str, Any], loaded: dict[str, np.ndarray],
                    cache_dir: str | Path | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict]]:
        """New items' ``(features, present, hashes)`` for every modality of the index: encoded,
        ``loaded`` (precomputed ones given), or masked.

        Raises:
            MMRecError: an item left with none of the index's modalities.
        """
        from mmrec.pipeline import npy_present  # the pipeline imports this module

        masked, encoded, precomputed = roles["masked"], roles["encoded"], roles["precomputed"]
        encoders = {m: self.encoders.get(m) for m in encoded}
        if catalog.has_images and "image" not in encoders and "image" not in masked:
            logger.warning("%s has images but this index has no image modality: images ignored", catalog.source)
        new_features, present, hashes = encode_catalog(catalog, encoders, cache_dir)
        for m, x in loaded.items():
            new_features[m], present[m] = x, npy_present(x)
        if masked:
            logger.info("%s: no item of this model has it (left out when it was trained): masked for the new items "
                        "too", ", ".join(masked))
        for m in masked + [m for m in precomputed if m not in loaded]:
            if m not in masked:
                logger.warning("no %s features given for the new items (--features %s=PATH.npy): the modality "
                               "is masked for them", m, m)
            new_features[m] = np.zeros((len(catalog), self.features[m].shape[1]), np.float32)
            present[m] = np.zeros(len(catalog), dtype=bool)
        none = np.flatnonzero(~np.logical_or.reduce([present[m] for m in self.modalities]))
        if len(none):
            first = ", ".join(repr(catalog.item_ids[i]) for i in none[:5])
            hint = f" (pass --features for {', '.join(precomputed)})" if precomputed else ""
            raise MMRecError(f"{catalog.source}: {len(none)} new items have none of this index's modalities "
                             f"{self.modalities}, e.g. {first}{hint}")
        return new_features, present, hashes

    def _placed_by_content(self, n: int) -> None:
        """Count items placed (added, or placed again) since the catalog means were taken, which
        ``index info`` shows: they are measured from the means of the catalog built."""
        if self.centers and n:
            self.manifest = self.manifest | {"placed_since_build": self.manifest.get("placed_since_build", 0) + n}

    def _id_type(self) -> type | None:
        """The type of the index's ids (``int`` or ``str``); ``None`` when it is empty."""
        return type(self.items[0][ID_FIELD]) if self.items else None

    def update(
        self,
        catalog: Catalog | str | Path | Sequence[Mapping[str, Any]] | Any,
        *,
        features: Mapping[str, str | Path] | None = None,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        add_new: bool = False,
        remove_missing: bool = False,
        dry_run: bool = False,
        **catalog_options,
    ) -> dict[str, int]:
        """Change items already in the index from a catalog; saves when opened from disk (one
        write: a failure leaves the directory and this object as they were).

        Each row names an item by id. The columns its file has replace that item's display
        fields (a blank cell empties one); the columns it lacks stay as they were, so a file of
        ``item_id,price`` changes prices only. Content is encoded again only where it changed
        (the text made of the index's text columns, the image file's bytes, a row of
        ``features``), and the item is placed again by it, as :meth:`add` places a new item. An
        item of a trained directory that was learned from interactions keeps its trained vector
        (its interactions say more than its text), while its stored content, which ``--by
        content`` search, explanations and new items' neighbours read, is the new one.

        Args:
            catalog: the changed items: a file with an ``item_id`` column, rows in memory (a list
                of dicts, each row's own keys as a JSON line's; a pandas DataFrame, every column
                for every row: ``df[["item_id", "price"]]`` changes prices, and a missing cell
                empties its field as a CSV's blank cell does), or a loaded catalog.
            features: modality -> ``.npy`` with one row per catalog row, for precomputed
                modalities (a modality left out is kept; an all-zero row masks it).
            cache_dir: feature cache of the encoders.
            device: torch device to encode on.
            add_new: rows whose id is not in the index are added (as :meth:`add` adds them)
                instead of refused.
            remove_missing: items of the index that no row of the file names (skipped rows
                count as named) are removed: with ``add_new``, the index then holds the file's
                items, its unchanged ones not encoded again and its trained ones still trained.
            dry_run: check everything and count what would change, by content hashes, without
                encoding or writing anything (what only encoding shows, content whose features
                equal the catalog mean it is measured from, is refused by the real run alone).
            **catalog_options: :func:`~mmrec.catalog.load_catalog` options (``skip_invalid``
                also skips rows of unknown ids).

        Returns:
            ``{"updated": items changed in place (fields or content), "unchanged": items the file
            names as they are, "content": of the updated, items whose content changed, "moved": of
            those, items placed again (the rest keep trained vectors), "added": new items,
            "removed": items removed, "skipped": rows left out (skip_invalid)}``. An update that
            changes nothing writes nothing but its skipped rows and masked images into
            ``skipped.jsonl`` (a report: the manifest is untouched, so a server does not reload).

        Raises:
            DataError: bad rows; an id not in the index (without ``add_new``); a change that
                leaves an item no content; no valid row. MMRecError / ConfigError: as for :meth:`add`.
        """
        self._check_in_place(write=not dry_run)  # (a dry run writes nothing: a read-only index may be checked)
        self._refuse_cache_inside(cache_dir)
        roles = self._content_roles("an item", device, features, placing=False)
        catalog, read_here = self._read_rows(catalog, roles, catalog_options, partial=True)
        skip = bool(catalog_options.get("skip_invalid"))
        before_ids = {id(q) for q in catalog.skipped}
        catalog = check_catalog_ids(catalog, set(), catalog.source, skip=skip, id_type=self._id_type())
        unknown = [i for i, item in enumerate(catalog.item_ids) if item not in self._pos]
        if unknown and not add_new:
            catalog = drop_rows(catalog, unknown, [
                Problem(catalog.row(i), ID_FIELD, f"id '{catalog.item_ids[i]}' is not in the index (mmrec index add "
                                                  "adds new items, as --add-new here does)") for i in unknown],
                catalog.source, skip=skip, summary=f"{len(unknown)} row(s) whose id is not in the index")
        elif unknown and not self.modalities:
            catalog = drop_rows(catalog, unknown, [
                Problem(catalog.row(i), ID_FIELD, f"id '{catalog.item_ids[i]}' is not in the index, and this ID-only "
                                                  "model has no content to place a new item by: train again with it "
                                                  "(mmrec train)") for i in unknown],
                catalog.source, skip=skip, summary=f"{len(unknown)} new row(s) an ID-only model cannot place")
        elif unknown and not roles["given"]:  # a new row needs content, as index add reads it (with
            bare = [i for i in unknown if not self._row_content(catalog, i, roles, {})]  # features: below)
            if bare:
                catalog = drop_rows(catalog, bare, [self._bare_row(catalog, i, roles) for i in bare], catalog.source,
                                    skip=skip, summary=f"{len(bare)} new row(s) with no content")
        if roles["given"]:  # feature row i is the file's row i: none may be left out
            refuse_skipped_rows(catalog.source, _skipped_here(catalog, read_here, before_ids))
        loaded = self._given_features(roles, len(catalog))
        unknown = [i for i, item in enumerate(catalog.item_ids) if item not in self._pos]
        bare = [i for i in unknown if not self._row_content(catalog, i, roles, loaded)]
        if bare:
            raise DataError(catalog.source, [self._bare_row(catalog, i, roles) for i in bare])
        old = [i for i in range(len(catalog)) if catalog.item_ids[i] in self._pos]
        pos = {i: self._pos[catalog.item_ids[i]] for i in old}
        missing = self._not_named(catalog) if remove_missing else []
        fields = {i: self.items[pos[i]]["fields"] | catalog.records[i] for i in old}  # a column the file lacks stays
        # An item whose new image is masked (missing, unreadable) keeps its stored one: a wrong
        # --image-root would otherwise take every picture away.
        masked = {p.row for p in catalog.masked}
        had_image = self.present.get("image")  # (an item that had none has nothing to keep: its record says so)
        kept_image = {i for i in old if catalog.row(i) in masked and had_image is not None and had_image[pos[i]]}
        kept_rows = {catalog.row(i) for i in kept_image}  # what skipped.jsonl says of them (a copy: the
        catalog = dataclasses.replace(catalog, masked=[  # caller's catalog stays as it was)
            Problem(p.row, p.field, p.message.replace("the image is left out, the row kept",
                                                      "the item keeps its stored image"))
            if p.row in kept_rows else p for p in catalog.masked])
        for i in kept_image:
            stored = self.items[pos[i]]["fields"]
            fields[i] = {k: v for k, v in fields[i].items() if k != catalog.image_field} | {
                k: v for k, v in stored.items() if k == catalog.image_field}
        change = self._content_change(catalog, old, pos, fields, roles, loaded, cache_dir, encode=not dry_run,
                                      kept_image=kept_image)
        touched, rows_of = change["touched"], [pos[i] for i in change["touched"]]
        kept = self.kept if self.kept is not None else self.pool
        moved = [i for i in touched if kept is None or not kept[pos[i]]]
        updated = set(touched) | {i for i in old if fields[i] != self.items[pos[i]]["fields"]}
        skipped = _skipped_here(catalog, read_here, before_ids)
        counts = {"updated": len(updated), "unchanged": len(old) - len(updated), "content": len(touched),
                  "moved": len(moved), "added": len(unknown), "removed": len(missing), "skipped": len(skipped)}
        if dry_run:
            return counts
        if not updated and not unknown and not missing:  # a server would reload it for nothing
            records = catalog.skip_records()  # skipped rows and masked images
            logger.info("nothing changed: %s was not written%s", self.directory or "the index",
                        f" (only its {SKIP_REPORT}: {len(records)} record(s))" if records and self.directory else "")
            if records and self.directory is not None:
                self._list_skips(records)
            elif records:
                self._pending_skips = _skip_report(self._pending_skips, records)
            return counts
        features_now, present_now = dict(self.features), dict(self.present)
        for m in self.modalities if touched else ():  # arrays replaced, never written into (the snapshot)
            features_now[m], present_now[m] = self.features[m].copy(), self.present[m].copy()
            features_now[m][rows_of], present_now[m][rows_of] = change["features"][m], change["present"][m]
        # Placed by content (items that were, and new ones), as index add places a new item: from
        # the trained items' new content, as after this change; everything that can refuse runs first.
        pool = self._neighbour_pool(features_now, present_now, leave_out=[self._pos[i] for i in missing])
        if moved:
            rows = [pos[i] for i in moved]
            moved_f, moved_p = {m: x[rows] for m, x in features_now.items()}, {m: x[rows] for m, x in present_now.items()}
            vectors = self.vectorizer.item_vectors(moved_f, moved_p, pool)
            _refuse_directionless(self.vectorizer, vectors, [catalog.item_ids[i] for i in moved], str(catalog.source),
                                  [catalog.row(i) for i in moved])
            attention = self.vectorizer.attention(moved_f, moved_p)
        if unknown:
            logger.info("%s: encoding %d new item(s)", catalog.source, len(unknown))
            new = catalog.select(unknown)
            columns = list(dict.fromkeys(k for r in catalog.records for k in r))  # as index add reads a JSON file
            new.records = [{c: r.get(c, "") for c in columns} for r in new.records]
            new_f, new_p, new_hashes = self._encode_new(new, roles, {m: x[unknown] for m, x in loaded.items()}, cache_dir)
            new_vectors = self.vectorizer.item_vectors(new_f, new_p, pool)
            _refuse_directionless(self.vectorizer, new_vectors, new.item_ids, str(catalog.source),
                                  [catalog.row(i) for i in unknown])

        before = self._snapshot()
        try:
            self._apply_update(catalog, old, pos, fields, change, features_now, present_now, moved,
                               (vectors, attention) if moved else None,
                               (new, new_f, new_p, new_hashes, new_vectors) if unknown else None, missing)
            self._placed_by_content(len(moved) + len(unknown))
        except BaseException:
            if self.directory is not None:  # (an index in memory is left as far as the change got)
                self._restore(before)
            raise
        trained = len(touched) - len(moved)
        if trained:
            logger.info("%d item(s) keep the vectors training gave them; their new content is stored (--by content "
                        "search, explanations): train again or finetune to learn from it", trained)
        if self.directory is not None:
            self._save_or_restore(before, skipped=catalog)
        else:
            self._pending_skips = _skip_report(self._pending_skips, catalog.skip_records())
        return counts

    def _apply_update(self, catalog: Catalog, old: list[int], pos: dict[int, int], fields: dict[int, dict],
                      change: dict[str, Any], features_now: dict[str, np.ndarray], present_now: dict[str, np.ndarray],
                      moved: list[int], placed: tuple | None, new: tuple | None, missing: list[ItemId]) -> None:
        """:meth:`update`'s changes to this object, all checked before (not saved)."""
        self.items = list(self.items)  # its dicts are replaced, not written into: the snapshot keeps the old ones
        for i in old:
            hashes = {m: h for m, h in self.items[pos[i]]["hashes"].items() if i not in change["changed"].get(m, ())}
            hashes |= {m: h[i] for m, h in change["hashes"].items() if i in change["changed"][m] and h[i]}
            self.items[pos[i]] = {ID_FIELD: catalog.item_ids[i], "hashes": hashes, "fields": fields[i]}
        self.features, self.present = features_now, present_now
        self.vectors = self.vectors.copy()  # a new array also tells the display-field cache that fields changed
        if placed is not None:
            vectors, attention = placed
            rows = [pos[i] for i in moved]
            self.vectors[rows] = vectors
            self.attention = self.attention.copy()
            self.attention[rows] = attention
            self.index.replace(vectors, [catalog.item_ids[i] for i in moved])  # each keeps its place among ties
        if new is not None:
            items, new_f, new_p, new_hashes, new_vectors = new
            self.add_features(items.item_ids, new_f, new_p, items.records, new_hashes, save=False, vectors=new_vectors,
                              source=str(catalog.source))
        if missing:
            self._drop(missing)

    def _not_named(self, catalog: Catalog) -> list[ItemId]:
        """The index's ids that no row of ``catalog`` names, a skipped row's id counting as named
        (an item whose new row was invalid is kept as it was, not removed)."""
        named = set(catalog.item_ids)
        for raw in catalog.skipped_ids or ():
            if raw is not None:
                named.add(str(raw) if self._id_type() is str else normalize_ids([raw])[0])
                text = id_text(raw)
                if self._id_type() is int and re.fullmatch(r"[+-]?[0-9]{1,4000}", text):
                    # '03' (skipped: the index's ids keep no leading zero) still names item 3, which a
                    # zero-padded export would otherwise remove with --remove-missing
                    named.add(int(text))
        return [it[ID_FIELD] for it in self.items if it[ID_FIELD] not in named]

    def _row_content(self, catalog: Catalog, i: int, roles: dict[str, Any], loaded: dict[str, np.ndarray]) -> bool:
        """Whether the catalog's row ``i`` holds content of one of the index's modalities."""
        return bool(("text" in roles["encoded"] and catalog.texts[i])
                    or ("image" in roles["encoded"] and catalog.images[i])
                    or any(np.abs(x[i]).sum() > 0 for x in loaded.values()))

    def _bare_row(self, catalog: Catalog, i: int, roles: dict[str, Any]) -> Problem:
        hint = "" if not roles["precomputed"] else " (its --features rows are all zero)" if roles["given"] else \
            f" (pass --features for {', '.join(roles['precomputed'])})"
        return Problem(catalog.row(i), None, f"id '{catalog.item_ids[i]}' is not in the index, and the row has none "
                                             f"of its modalities ({', '.join(self.modalities)}) to add it by{hint}")

    def _content_change(self, catalog: Catalog, old: list[int], pos: dict[int, int], fields: dict[int, dict],
                        roles: dict[str, Any], loaded: dict[str, np.ndarray],
                        cache_dir: str | Path | None, encode: bool = True,
                        kept_image: AbstractSet[int] = frozenset()) -> dict[str, Any]:
        """What an update changes in the content of the items already in the index (catalog rows
        ``old``, at index positions ``pos``, with their merged display ``fields``): the text made of
        the fields, the image of the file's column, a row of ``loaded`` features; a modality whose
        columns the file lacks is unchanged, and so is the image of the rows ``kept_image``. Only the
        changed rows are encoded (none without ``encode``, for a dry run).

        Returns:
            ``{"touched": rows with a change, in catalog order, "features" / "present": modality
            -> their new rows (aligned with touched), "changed": modality -> rows changed in it,
            "hashes": modality -> row -> new content hash (None: absent)}``.
        """
        from encoders.cache import content_hash, file_hash
        from mmrec.pipeline import npy_present  # the pipeline imports this module

        # A row's own columns (a JSON row's own keys): those it lacks leave their modality as stored.
        text_fields, image_field = set(self.manifest["text_fields"]), self.manifest["image_field"]
        contents: dict[str, dict[int, str | None]] = {}
        if "text" in roles["encoded"]:
            contents["text"] = {i: compose_text([fields[i].get(f) for f in self.manifest["text_fields"]]) or None
                                for i in old if text_fields & catalog.records[i].keys()}
        if "image" in roles["encoded"]:
            contents["image"] = {i: catalog.images[i] for i in old
                                 if image_field in catalog.records[i] and i not in kept_image}
        elif catalog.has_images and "image" not in self.modalities:
            logger.warning("%s has images but this index has no image modality: images ignored", catalog.source)
        hashes = {m: {i: (content_hash if m == "text" else file_hash)(v) if v else None for i, v in c.items()}
                  for m, c in contents.items()}
        changed = {m: {i for i in h if h[i] != self.items[pos[i]]["hashes"].get(m)} for m, h in hashes.items()}
        for m, x in loaded.items():
            has = npy_present(x)
            changed[m] = {i for i in old if has[i] != self.present[m][pos[i]]
                          or (has[i] and not np.array_equal(x[i], self.features[m][pos[i]]))}
        touched = sorted(set().union(*changed.values()))
        at = {i: j for j, i in enumerate(touched)}
        rows_of = [pos[i] for i in touched]
        features = {m: x[rows_of] for m, x in self.features.items()}  # fancy indexing: copies
        present = {m: x[rows_of] for m, x in self.present.items()}
        for m, c in contents.items():
            for i in changed[m]:
                present[m][at[i]] = bool(c[i])
        for m, x in loaded.items():
            for i in changed[m]:
                present[m][at[i]] = npy_present(x[i : i + 1])[0]
        empty = [touched[j] for j in np.flatnonzero(~np.logical_or.reduce([present[m] for m in self.modalities]))] \
            if touched else []
        if empty:  # refused before anything is encoded
            raise DataError(catalog.source, [Problem(catalog.row(i), None, f"item '{catalog.item_ids[i]}' would be "
                                                     f"left with none of the index's modalities "
                                                     f"({', '.join(self.modalities)})") for i in empty])
        for m, c in contents.items() if encode else ():
            todo = sorted(i for i in changed[m] if c[i])
            if todo:
                logger.info("%s: encoding the changed %s of %d item(s) of the index", catalog.source, m, len(todo))
                part = Catalog(item_ids=[catalog.item_ids[i] for i in todo], texts=[c[i] if m == "text" else ""
                                                                                    for i in todo],
                               images=[c[i] if m == "image" else None for i in todo], records=[{} for _ in todo],
                               text_fields=self.manifest["text_fields"], image_field=self.manifest["image_field"],
                               source=catalog.source)
                features[m][[at[i] for i in todo]] = encode_catalog(part, {m: self.encoders.get(m)}, cache_dir)[0][m]
            for i in changed[m]:
                if not c[i]:
                    features[m][at[i]] = 0.0
        for m, x in loaded.items():
            for i in changed[m]:
                features[m][at[i]] = x[i]
        return {"touched": touched, "features": features, "present": present, "changed": changed, "hashes": hashes}

    def add_features(
        self,
        item_ids: Sequence[ItemId],
        features: dict[str, np.ndarray],
        present: dict[str, np.ndarray],
        records: Sequence[dict[str, str]] | None = None,
        hashes: Sequence[dict[str, str]] | None = None,
        *,
        save: bool = True,
        vectors: np.ndarray | None = None,
        source: str = "new items",
        rows: Sequence[int] | None = None,
    ) -> None:
        """Add items by their modality vectors (already encoded), through the index's content path.

        Args:
            item_ids: new ids (none may be in the index).
            features: modality -> ``[B, D_m]`` for every modality of the index.
            present: modality -> ``[B]`` bool.
            records: display fields per item.
            hashes: content hashes per item.
            save: write the directory when the index was opened from disk.
            vectors: ``[B, D + 1]`` index vectors already computed by this index's vectorizer
                (``fit`` has them from calibrating the content path); default: computed here.
            source: the file the items came from, named in errors.
            rows: each item's 1-based row in ``source``, named in errors.

        Raises:
            MMRecError: an id already in the index or given twice, or of another type than the
                index's ids; a modality of the index missing from ``features``.
            DataError: an item whose content gives it no direction (its features equal the
                catalog means it is measured from).
        """
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ConfigError(f"new items lack the index's modalities {missing}")
        # numpy ids as the plain ones items.jsonl holds, of the index's id type ("7" is no new id beside 7)
        item_ids = self._align_id_type([canonical_id(i) for i in item_ids])
        taken = [i for i in item_ids if self._try_resolve(i) is not None]
        if not taken and len(set(item_ids)) < len(item_ids):
            taken = [i for i, n in collections.Counter(item_ids).items() if n > 1]
            what = "given twice"
        else:
            what = "already in the index"
        if taken:
            raise MMRecError(f"new item ids must be new and distinct: {', '.join(map(str, taken[:10]))} {what}; "
                             f"nothing was added")
        before = self._snapshot()
        n = len(item_ids)
        if vectors is None:
            vectors = self.vectorizer.item_vectors(features, present, self._neighbour_pool())
            _refuse_directionless(self.vectorizer, vectors, item_ids, source, rows)
        elif vectors.shape != (n, self.vectors.shape[1]):
            raise ValueError(f"vectors must have shape [{n}, {self.vectors.shape[1]}], got {list(vectors.shape)}")
        self.index.add(vectors, list(item_ids))
        self.vectors = np.concatenate([self.vectors, vectors])
        for m in self.modalities:
            self.features[m] = np.concatenate([self.features[m], np.asarray(features[m], np.float32)])
            self.present[m] = np.concatenate([self.present[m], np.asarray(present[m], bool)])
        self.attention = np.concatenate([self.attention, self.vectorizer.attention(features, present)])
        if self.pool is not None:  # placed through the content path: not trained on interactions
            self.pool = np.concatenate([self.pool, np.zeros(n, bool)])
        if self.kept is not None:
            self.kept = np.concatenate([self.kept, np.zeros(n, bool)])
        start = len(self.items)
        records = records or [{} for _ in range(n)]
        hashes = hashes or [{} for _ in range(n)]
        self.items += [{ID_FIELD: i, "hashes": h, "fields": dict(r)} for i, h, r in zip(item_ids, hashes, records)]
        self._pos.update({it[ID_FIELD]: start + j for j, it in enumerate(self.items[start:])})
        if save and self.directory is not None:
            self._save_or_restore(before)

    def _neighbour_pool(self, features: dict[str, np.ndarray] | None = None,
                        present: dict[str, np.ndarray] | None = None,
                        leave_out: Sequence[int] = ()) -> tuple[dict, dict, np.ndarray] | None:
        """The indexed items a trained content path borrows from (features, presence, vectors);
        ``features`` / ``present`` stand for the index's own (an update's new content), and the
        rows ``leave_out`` are not borrowed from (an update's removed items)."""
        features, present = features or self.features, present or self.present
        if not getattr(self.vectorizer, "neighbours", 0) or not self.items:
            return None
        if self.pool is None and not len(leave_out):
            return features, present, self.vectorizer.mips.original(self.vectors)
        usable = np.ones(len(self.items), bool) if self.pool is None else self.pool.copy()
        usable[list(leave_out)] = False
        rows = np.flatnonzero(usable)
        return ({m: x[rows] for m, x in features.items()}, {m: x[rows] for m, x in present.items()},
                self.vectorizer.mips.original(self.vectors[rows]))

    def rebuild(self, factory: str | None = None) -> str:
        """Build the FAISS index anew from the stored item vectors with another factory, without
        encoding or training anything; saves when opened from disk (in place, atomically: a
        failure leaves the directory and this object as they were).

        For an index whose catalog grew past what its factory suits (``auto`` keeps exact search
        below 100k items and picks IVF above, but only when the index is built), or to trade
        exactness for speed later; an HNSW index also drops the tombstones of removed items. The
        same factory keeps its ``nprobe`` / ``efSearch``; another starts from the default
        (:meth:`mmrec.recommender.Recommender.tune_search` sets it).

        Args:
            factory: as for :meth:`build` (``auto`` is chosen again for today's item count);
                default ``None``, the index's own.

        Returns:
            The concrete factory.

        Raises:
            ConfigError: an unknown factory, too few items to train it; MMRecError: a directory
                that cannot be rewritten in place; both before any work.
        """
        self._check_in_place()
        try:
            resolved = check_factory(self.manifest["factory"] if factory is None else factory, len(self))
        except ConfigError as e:
            if factory is not None:
                raise
            own = str(e).removeprefix(f"factory {self.manifest['factory']!r}: ")
            raise ConfigError(f"this index's own factory {self.manifest['factory']} cannot be built again on its "
                              f"{len(self)} items ({own}): choose another (--factory, factory=; auto: exact search below "
                              f"100k items)") from None
        before = self.index, self.manifest["factory"]
        self.index = FaissIndex.build(self.vectors, self.ids, factory=resolved)
        if self.index.factory == before[0].factory and self.index.knob is not None:  # a tuned setting stays
            setattr(self.index, self.index.knob, getattr(before[0], self.index.knob))
        self.manifest["factory"] = self.index.factory
        if self.directory is not None:
            try:
                self.save(self.directory)
            except BaseException:
                self.index, self.manifest["factory"] = before
                raise
        return self.index.factory

    def remove(self, item_ids: Sequence[object] | ItemId) -> int:
        """Remove items by id (a single id is one id: ``remove("12")`` removes item 12); saves when
        opened from disk, unless nothing was given. Unknown ids are an error (nothing removed).

        Returns:
            The number of items removed (an id given twice, e.g. ``2`` and ``"2"``, counts once).
        """
        self._check_in_place()
        item_ids = id_list(item_ids)
        if not item_ids:
            return 0
        missing = [i for i in item_ids if self._try_resolve(i) is None]
        if missing:
            raise MMRecError(f"not in this index: {', '.join(map(str, missing[:20]))}"
                             f"{' ...' if len(missing) > 20 else ''}; nothing was removed")
        ids = [self.resolve_id(i) for i in item_ids]
        before = self._snapshot()
        gone = self._drop(ids)
        if self.directory is not None:
            self._save_or_restore(before)
        return gone

    def _drop(self, ids: Sequence[ItemId]) -> int:
        """Take stored ids out of the index and its arrays (not saved); the number taken out."""
        self.index.remove(ids)
        gone = {self._pos[i] for i in ids}
        keep = np.setdiff1d(np.arange(len(self.items)), np.fromiter(gone, np.int64, len(gone)))  # sorted
        for m in self.modalities:
            self.features[m], self.present[m] = self.features[m][keep], self.present[m][keep]
        self.attention = self.attention[keep]
        self.vectors = self.vectors[keep]
        if self.pool is not None:
            self.pool = self.pool[keep]
        if self.kept is not None:
            self.kept = self.kept[keep]
        self.items = [self.items[i] for i in keep]
        self._pos = {it[ID_FIELD]: i for i, it in enumerate(self.items)}
        return len(gone)

    def _snapshot(self) -> dict[str, Any]:
        """What :meth:`add_features` and :meth:`remove` change besides the FAISS index (which
        the directory holds): arrays are replaced, never written into, so references suffice;
        the dicts and the list are copied."""
        return {"vectors": self.vectors, "attention": self.attention, "pool": self.pool, "kept": self.kept,
                "manifest": self.manifest,
                "features": dict(self.features), "present": dict(self.present), "items": list(self.items),
                "_pos": dict(self._pos)}

    def _save_or_restore(self, before: dict[str, Any], **save_options: Any) -> None:
        """Save in place; if that fails, put this object back as it was (:meth:`_restore`), so
        memory and disk agree, then raise."""
        try:
            self.save(self.directory, **save_options)
        except BaseException:
            self._restore(before)
            raise

    def _restore(self, before: dict[str, Any]) -> None:
        """Put an index opened from disk back as it was before a change that did not land:
        ``before`` (:meth:`_snapshot`), and the FAISS index read again from the directory, which
        a change is only written to by its save."""
        changed, changed_pos = self.vectors, self._pos
        knob = self.index.knob
        setting = None if knob is None else getattr(self.index, knob)
        for name, value in before.items():
            setattr(self, name, value)
        if manifest_stamp(self.directory) == self._stamp:
            self.index = FaissIndex.load(self.directory)
            if knob is not None and self.index.knob == knob:  # a setting not saved yet (set_search(save=False))
                setattr(self.index, knob, setting)
        else:  # another command rewrote the directory: undo this change in the FAISS index itself
            keep = set(self.ids)
            extra = [i for i in self.index.ids if i not in keep]
            moved = [i for p, i in enumerate(self.ids) if i in changed_pos and i in self.index  # (update's)
                     and not np.array_equal(changed[changed_pos[i]], self.vectors[p])]
            if extra:
                self.index.remove(extra)
            if moved:
                self.index.replace(self.vectors[[self._pos[i] for i in moved]], moved)
            missing = [p for p, i in enumerate(self.ids) if i not in self.index]
            if missing:
                self.index.add(self.vectors[missing], [self.ids[p] for p in missing])

    def _try_resolve(self, item_id: object) -> ItemId | None:
        try:
            return self.resolve_id(item_id)
        except MMRecError:
            return None

    def _align_id_type(self, ids: list[ItemId]) -> list[ItemId]:
        """New ids take the type of the index's ids (all int or all str): on an int index a
        canonical integer given as text (``"7"``) is that integer, any other text is refused."""
        if not self.items:
            return ids
        if isinstance(self.items[0][ID_FIELD], str):
            return [str(i) for i in ids]
        typed = [i if isinstance(i, int) else normalize_ids([i])[0] for i in ids]  # "7" is 7, as index add reads it
        bad = [i for i in typed if not isinstance(i, int)][:5]
        if bad:
            raise MMRecError(f"this index has integer item ids; new ids {bad} are not integers")
        return typed
