"""Crash-safe directories, checksums and a versioned manifest for saved indexes.

A saved index is a directory (``index.faiss``, ``ids.json``, ``manifest.json``...). Writers build
it inside :func:`atomic_directory`, so a crash or an exception never leaves a half-written
directory under the final name, and readers check it with :func:`read_manifest` before trusting
any file in it.

Example::

    with atomic_directory(out, overwrite=True) as tmp:
        checksums = index.save(tmp)
        write_manifest(tmp, {"dim": index.dim, "factory": index.factory, "checksums": checksums})
    manifest = read_manifest(out, expect={"dim": 64})
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# Bump when the on-disk layout changes; readers reject versions they do not know. 2: content
# similarity may be measured from stored modality means (mmrec's ``centered`` / ``center.<m>``),
# which a version-1 reader would ignore, scoring queries against vectors they do not match.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = frozenset({1, FORMAT_VERSION})


class IndexFormatError(ValueError):
    """A saved index directory is missing, malformed, or does not match what the caller expects.

    The message always names the directory and the offending field or file.
    """


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name, then publish it under ``final`` in one rename.

    The temporary directory is created beside ``final`` (same parent, hence the same filesystem,
    so the rename is atomic). Missing parents of ``final`` are created.

    * Normal exit: the temporary directory is renamed to ``final``. If ``final`` exists and
      ``overwrite`` is True, the old directory is first renamed aside, the new one renamed in,
      and only then is the old one deleted; if the second rename fails the old one is put back.
    * Exception inside the ``with`` block: the temporary directory is removed and ``final`` is
      left exactly as it was (absent, or the old contents); the exception propagates.

    Args:
        final: Path the finished directory should have.
        overwrite: Replace an existing ``final``. Defaults to False.

    Yields:
        The temporary directory to write into (empty, already created).

    Raises:
        FileExistsError: ``final`` exists (checked on entry and again before publishing) and
            ``overwrite`` is False.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists: --overwrite (overwrite=True in Python) replaces it")
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = final.parent / f".{final.name}.tmp-{token}"
    tmp.mkdir()
    # Held while it is written, so a later write tells it from a folder a killed writer left. (Let go
    # before it is published: the lock would follow the folder to its final name and hold up the
    # next writer's lock on it. Those who clean up publish under that lock, so none runs meanwhile.)
    with _held(tmp):
        try:
            yield tmp
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_if_full(e, final)
            raise
    try:
        _publish(tmp, final, overwrite=overwrite, token=token)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_full(e, final)
        raise
    _clear_leftovers(final, mine=final.parent / f".{final.name}.old-{token}")


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` while the block runs (nothing where there is no
    ``flock``): :func:`_clear_leftovers` leaves a folder alone while someone holds it."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover - not on Linux
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _abandoned(folder: Path) -> bool:
    """Whether no live writer holds ``folder`` (:func:`_held`); ``False`` where that cannot be told."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover - not on Linux
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held (a writer still at work), or no flock on this filesystem
        return False
    finally:
        os.close(fd)


def leftovers(final: Path) -> list[Path]:
    """The versions of ``final`` that an interrupted replacement left beside it
    (``.<name>.old-<token>``, oldest first): each may be a whole copy, and only a person can tell
    whether one is still wanted (the only copy, after a kill between the two renames)."""
    final = Path(final)
    return sorted(final.parent.glob(f".{glob.escape(final.name)}.old-*"), key=_mtime)


def _mtime(path: Path) -> int:
    try:
        return path.lstat().st_mtime_ns
    except OSError:
        return 0


def _clear_leftovers(final: Path, mine: Path) -> None:
    """After a write: delete the temporary folders beside ``final`` that killed writers left
    (half-written, of no use), and name the replaced versions left there (:func:`leftovers`; not
    ``mine``, this write's own, which :func:`_remove` names when it stays)."""
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        if tmp.is_dir() and not tmp.is_symlink() and _abandoned(tmp):
            logger.info("deleting %s, left by a write that was interrupted", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    left = [p for p in leftovers(final) if p != mine]
    if left:
        logger.warning("%s: an interrupted write left %s beside it: %s (delete %s once you do not need %s)",
                       final, "a previous version" if len(left) == 1 else f"{len(left)} previous versions",
                       ", ".join(str(p) for p in left), "it" if len(left) == 1 else "them",
                       "it" if len(left) == 1 else "them")


# How a full disk reads in the errors of the writers that do not raise OSError (safetensors' Rust
# io::Error, FAISS's fwrite check): the C library's messages for ENOSPC and EDQUOT.
_FULL_MESSAGES = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def _raise_if_full(error: BaseException, final: Path) -> None:
    """A write that failed for want of space, as one error naming the directory and saying what is
    left: writers report it as a bare ``[Errno 28]`` or in a library's own words, and name the
    temporary file, which is gone by then."""
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(error, Exception) and any(m in str(error) for m in _FULL_MESSAGES))
    if not full:
        return
    code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
    kept = "left as it was" if final.exists() else "not created"
    raise OSError(code, f"{os.strerror(code)} while writing {final} ({kept}; the partial copy was removed): "
                        f"free space on that device, or write elsewhere") from error


def _publish(tmp: Path, final: Path, *, overwrite: bool, token: str) -> None:
    if not final.exists() and not final.is_symlink():  # (a link to nothing is replaced as any link is)
        _set_modes(tmp, None)
        _sync_tree(tmp)
        os.rename(tmp, final)
        _sync_dir(final.parent)
        return
    if not overwrite:
        raise FileExistsError(f"{final} appeared while it was being written; not replacing it")
    _set_modes(tmp, final if final.is_dir() else None)  # (a file's mode would leave a folder unenterable)
    _sync_tree(tmp)
    old = final.parent / f".{final.name}.old-{token}"
    try:  # an interrupt between the two renames (or right after the first) also puts it back
        os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.rename(old, final)  # put the previous version back before reporting the failure
        raise
    try:
        _sync_dir(final.parent)
        _remove(old)
    except KeyboardInterrupt:  # the new version is in place: the command has done its work, and says so
        logger.info("finishing the removal of the version %s replaced", final)
        _sync_dir(final.parent)
        _remove(old)  # (a second Ctrl-C stops this; the folder left is named .<name>.old-<token>)
    logger.debug("replaced %s", final)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():  # what was replaced was a link or a file, not a folder
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # (another user's files in it, say: it stayed, a whole copy, unsaid)
            logger.warning("the version replaced could not be deleted: %s is left (delete it by hand)", path)


def _sync_tree(root: Path) -> None:
    """Flush every file under ``root``, then the directories naming them, to the disk before the
    rename that publishes ``root``: after a power cut the published name must not point at files
    the disk never received (a rename can reach the disk before the data it names). Not on
    Windows, whose fsync needs a handle open for writing, and whose directories cannot be synced."""
    if os.name == "nt":  # pragma: no cover - not on Linux
        return
    dirs = [root]
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            dirs.append(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for directory in reversed(dirs):  # deepest first: a directory's entries before its parent's
        _sync_dir(directory)


def _sync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to the disk; a no-op where directories cannot
    be opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_modes(tmp: Path, previous: Path | None) -> None:
    """Give the new directory and its files the modes and group of the version they replace (a
    setgid group directory, files a server of another user reads), and new files the umask's default
    (some writers, safetensors among them, create files 0600 whatever the umask)."""
    mask = umask()
    if previous is not None:
        st = previous.stat()
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if tmp.stat().st_gid != st.st_gid:  # a group's directory: its files stay the group's
            try:
                for path in (tmp, *tmp.rglob("*")):
                    os.chown(path, -1, st.st_gid, follow_symlinks=False)
            except OSError as e:  # not a member of that group: the modes are kept all the same
                logger.warning("could not give %s the group of %s (%s)", tmp, previous, e)
    for path in tmp.rglob("*"):
        if path.is_symlink():
            continue
        before = previous / path.relative_to(tmp) if previous is not None else None
        kept = before is not None and not before.is_symlink() and before.exists()
        if kept and before.is_dir() == path.is_dir():  # a file that became a folder takes no file's mode
            os.chmod(path, stat.S_IMODE(before.stat().st_mode))
        elif path.is_file():
            os.chmod(path, 0o666 & ~mask)


def umask() -> int:
    """The process umask, read without changing it where Linux says it (another thread creating
    a file meanwhile would get mode 0o666 from a umask set to 0 for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_stamp(directory: str | Path | None) -> str | None:
    """What changes when a directory is rewritten with other content: the SHA-256 of its
    manifest, which lists every file's checksum (an inode and an mtime can repeat: inodes are
    reused, and some filesystems keep whole seconds); ``None`` without a directory or while the
    manifest is missing."""
    if directory is None:
        return None
    try:
        return hashlib.sha256((Path(directory) / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return None


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (``flock`` on the directory itself, waiting for
    another writer's to end) while it is rewritten in place. A writer that waited finds the
    directory replaced: it must compare :func:`manifest_stamp` with the one it loaded and stop
    (the lock alone cannot tell it that its copy is stale). Without ``fcntl`` (Windows): no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux
        yield
        return
    while True:
        fd = os.open(directory, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another command writing %s to finish", directory)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a filesystem without flock on directories (some NFS): the version check remains
            logger.debug("no lock on %s (%s)", directory, e)
            break
        # The lock is on the folder opened, not on its name: one the writer before published in its
        # place is another folder, whose lock a third writer could take meanwhile (a train --overwrite
        # that waited was then replaced by that writer, silently). Lock the one there now instead.
        try:
            now = os.stat(directory)
        except FileNotFoundError:  # deleted meanwhile: this lock is kept, and the version check says so
            break
        held = os.fstat(fd)
        if (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` into ``directory``.

    ``format_version`` (the current :data:`FORMAT_VERSION`) and ``created`` (UTC, ISO 8601) are
    added when absent; the caller's dict is not modified. Put ``{filename: sha256}`` under
    ``"checksums"`` (for example what :meth:`index.FaissIndex.save` returns) to have
    :func:`read_manifest` verify those files.

    Args:
        directory: An existing directory.
        manifest: JSON-serialisable mapping.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {MANIFEST_NAME}: {directory} is not a directory")
    full = dict(manifest)
    full.setdefault("format_version", FORMAT_VERSION)
    full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tmp = directory / f".{MANIFEST_NAME}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST_NAME)


def read_manifest(
    directory: Path,
    *,
    expect: dict[str, Any] | None = None,
    verify_checksums: bool = True,
    required: tuple[str, ...] = (),
    unverified: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read and check ``manifest.json`` in ``directory``.

    Args:
        directory: A directory written with :func:`write_manifest`.
        expect: Fields that must hold exactly these values (e.g. ``{"dim": 64}``).
        verify_checksums: Recompute the SHA-256 of every file listed under ``"checksums"``.
            Defaults to True.
        unverified: Files not to verify even where the manifest lists them (reports a user may
            prune, which older writers checksummed).
        required: Fields the reader needs (their values are its business).

    Returns:
        The manifest as a dict.

    Raises:
        IndexFormatError: The manifest is missing or not a JSON object, ``format_version`` is
            missing or unknown, a ``required`` field is missing, a field differs from ``expect``,
            a name under ``"checksums"`` is not a file of the directory itself (absolute, or with a
            ``..`` part), or a listed file is missing or its checksum differs. The message names
            the directory and the field or file.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise IndexFormatError(f"{directory}: no {MANIFEST_NAME} (not a saved index directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise IndexFormatError(
            f"{path}: field 'format_version' is {version!r}; this version of the code reads "
            f"{sorted(SUPPORTED_FORMAT_VERSIONS)}"
        )
    missing = [key for key in required if key not in manifest]
    if missing:
        raise IndexFormatError(f"{path}: field(s) {', '.join(map(repr, missing))} missing (the manifest was "
                               "edited, or not written by this library)")
    for key, want in (expect or {}).items():
        if key not in manifest:
            raise IndexFormatError(f"{path}: field {key!r} is missing, expected {want!r}")
        if manifest[key] != want:
            raise IndexFormatError(f"{path}: field {key!r} is {manifest[key]!r}, expected {want!r}")
    if verify_checksums:
        checksums = manifest.get("checksums", {})
        if not isinstance(checksums, dict):
            raise IndexFormatError(f"{path}: field 'checksums' must map file names to sha256")
        for name, want in checksums.items():
            if name in unverified:
                continue
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts or not parts:
                raise IndexFormatError(f"{path}: {name!r} in 'checksums' is not a file of {directory}")
            file = directory / name
            if not file.is_file():
                raise IndexFormatError(f"{directory}: file {name!r} listed in 'checksums' is missing")
            got = sha256_file(file)
            if got != want:
                raise IndexFormatError(
                    f"{directory}: checksum mismatch for {name!r} in 'checksums' "
                    f"(manifest {str(want)[:12]}..., file {got[:12]}...); the file was modified "
                    "or is corrupt"
                )
    return manifest
