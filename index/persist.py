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
    tmp, token, hold = _new_tmp(final)
    try:
        try:
            yield tmp
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_if_full(e, final)
            raise
        try:
            _publish(tmp, final, overwrite=overwrite, token=token, published=hold.release)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_if_full(e, final)
            raise
    finally:
        hold.release()
    try:
        _clear_leftovers(final, mine=final.parent / f".{final.name}.old-{token}")
    except KeyboardInterrupt:  # the write is done: others' leftovers wait for the next one
        logger.info("stopped clearing what interrupted writes left beside %s; the write itself is done", final)


class _Hold:
    """An exclusive ``flock`` on a folder, taken by :func:`_new_tmp` and let go once: a writer
    holds its temporary folder until the rename that publishes it, so :func:`_clear_leftovers`
    never takes a live writer's folder for one a killed writer left."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing lets go of the lock
            self.fd = None


def _new_tmp(final: Path) -> tuple[Path, str, _Hold]:
    """A new, empty temporary folder beside ``final``, its token and its :class:`_Hold`. Where a
    clean-up moved it away before the lock was had (it found the folder unheld just after it was
    made), another is made."""
    while True:
        token = uuid.uuid4().hex[:12]
        tmp = final.parent / f".{final.name}.tmp-{token}"
        tmp.mkdir()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux: nothing to hold, nothing cleared
            return tmp, token, _Hold(None)
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:  # moved away already
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # (a clean-up's probe holds it for a moment at most)
        except OSError:  # no flock on this filesystem: _try_lock cannot tell either, so clears nothing
            return tmp, token, _Hold(fd)
        if _same_folder(tmp, fd):
            return tmp, token, _Hold(fd)
        os.close(fd)  # a clean-up had it first and moved it to be deleted


def _same_folder(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the folder open as ``fd``."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)


def _try_lock(folder: Path) -> tuple[int | None, bool]:
    """``(descriptor holding folder's lock, False)`` when no one else held it; ``(None, True)``
    when a live writer holds it (:class:`_Hold`); ``(None, False)`` where it is gone or that
    cannot be told (no flock)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover - not on Linux
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, False
    except OSError as e:  # held (a writer still at work), or no flock on this filesystem
        os.close(fd)
        return None, isinstance(e, BlockingIOError)


def _take_if_abandoned(folder: Path) -> int | None:
    """A descriptor of ``folder`` holding its lock, when no live writer holds it and it is still
    at its path; ``None`` where it is held, gone, or cannot be told (no flock)."""
    fd, _ = _try_lock(folder)
    if fd is not None and not _same_folder(folder, fd):
        os.close(fd)
        return None
    return fd


def _held_by_another(folder: Path) -> bool:
    """Whether a live writer holds ``folder`` (``False`` where that cannot be told: no flock)."""
    fd, held = _try_lock(folder)
    if fd is not None:
        os.close(fd)
    return held


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
    name = glob.escape(final.name)
    for tmp in final.parent.glob(f".{name}.tmp-*"):
        if not tmp.is_dir() or tmp.is_symlink():
            continue
        fd = _take_if_abandoned(tmp)
        if fd is None:
            continue
        try:  # moved while held: a writer that opens it meanwhile finds it gone and makes another
            trash = tmp.with_name(f".{final.name}.trash-{uuid.uuid4().hex[:12]}")
            os.rename(tmp, trash)
        except OSError:
            continue
        finally:
            os.close(fd)
        logger.info("deleting %s, left by a write that was interrupted", tmp)
        shutil.rmtree(trash, ignore_errors=True)
    for trash in final.parent.glob(f".{name}.trash-*"):  # a clean-up that was itself cut short
        shutil.rmtree(trash, ignore_errors=True)
    left = [p for p in leftovers(final) if p != mine and not _held_by_another(p)]  # (a live writer's, being deleted)
    if left:
        them = "it" if len(left) == 1 else "them"
        logger.warning("%s: an interrupted write left %s beside it: %s (delete %s once you do not need %s)",
                       final, "a previous version" if len(left) == 1 else f"{len(left)} previous versions",
                       ", ".join(str(p) for p in left), them, them)


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


def _publish(tmp: Path, final: Path, *, overwrite: bool, token: str, published: Any = None) -> None:
    """Rename ``tmp`` to ``final`` (the previous version aside, then deleted); ``published()``
    is called as soon as ``tmp`` has its final name (it lets go of the lock on it)."""
    published = published or (lambda: None)
    if not final.exists() and not final.is_symlink():  # (a link to nothing is replaced as any link is)
        _set_modes(tmp, None)
        _sync_tree(tmp)
        try:
            os.rename(tmp, final)
        except KeyboardInterrupt:
            if tmp.exists():  # (as the rename returned, it landed: the command has done its work)
                raise
        published()
        _sync_dir(final.parent)
        return
    if not overwrite:
        raise FileExistsError(f"{final} appeared while it was being written; not replacing it")
    _set_modes(tmp, final if final.is_dir() else None)  # (a file's mode would leave a folder unenterable)
    _sync_tree(tmp)
    old = final.parent / f".{final.name}.old-{token}"
    # The version replaced is held until it is deleted, so a clean-up does not report it as left by an
    # interrupted write (a writer under writer_lock holds it already: this try then fails, as it may).
    replaced = _take_if_abandoned(final) if final.is_dir() and not final.is_symlink() else None
    try:
        try:  # an interrupt between the two renames (or right after the first) also puts it back
            os.rename(final, old)
            os.rename(tmp, final)
        except BaseException as e:
            if not (isinstance(e, KeyboardInterrupt) and not tmp.exists() and final.exists()):  # (else it landed)
                if old.exists() and not final.exists():
                    os.rename(old, final)  # put the previous version back before reporting the failure
                raise
        published()
        try:
            _sync_dir(final.parent)
            _remove(old)
        except KeyboardInterrupt:  # the new version is in place: the command has done its work, and says so
            logger.info("finishing the removal of the version %s replaced", final)
            _sync_dir(final.parent)
            _remove(old)  # (a second Ctrl-C stops this; the folder left is named .<name>.old-<token>)
    finally:
        if replaced is not None:
            os.close(replaced)
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
        try:  # (the version replaced may be replaced meanwhile by a writer without the lock: a new save)
            st = (previous / path.relative_to(tmp)).lstat() if previous is not None else None
        except FileNotFoundError:
            st = None
        kept = st is not None and not stat.S_ISLNK(st.st_mode)
        if kept and stat.S_ISDIR(st.st_mode) == path.is_dir():  # a file that became a folder takes no file's mode
            os.chmod(path, stat.S_IMODE(st.st_mode))
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
