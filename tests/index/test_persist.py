from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest

from index import (
    FORMAT_VERSION,
    FaissIndex,
    IndexFormatError,
    atomic_directory,
    read_manifest,
    sha256_file,
    write_manifest,
)


def entries(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ----------------------------------------------------------------------------- atomic_directory
def test_atomic_directory_publishes_on_success(tmp_path):
    final = tmp_path / "deep" / "model"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.is_dir() and not final.exists()
        (tmp / "a.txt").write_text("A")
    assert (final / "a.txt").read_text() == "A"
    assert entries(final.parent) == ["model"]


def test_atomic_directory_exception_leaves_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            raise RuntimeError("boom")
    assert entries(tmp_path) == []


@pytest.mark.parametrize("error", [
    OSError(28, os.strerror(28)),  # a bare [Errno 28], no file named
    RuntimeError(f'Error while serializing: IoError(Os {{ code: 28, kind: StorageFull, message: "{os.strerror(28)}" }})'),
    RuntimeError(f"Error: 'ret == (n)' failed: write error in x.faiss: 28 ({os.strerror(28)})"),
])
def test_a_full_disk_is_one_error_naming_the_directory_and_what_is_left(tmp_path, error):
    final = tmp_path / "model"
    with pytest.raises(OSError, match=r"No space left on device while writing .*model \(not created; the partial copy "
                                      r"was removed\): free space") as e:
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            raise error
    assert e.value.errno == 28 and e.value.__cause__ is error and entries(tmp_path) == []
    final.mkdir()
    with pytest.raises(OSError, match=r"\(left as it was;"):
        with atomic_directory(final, overwrite=True):
            raise error
    with pytest.raises(OSError, match="^Permission denied$"):  # other failures pass through as they are
        with atomic_directory(final, overwrite=True):
            raise PermissionError("Permission denied")


def test_atomic_directory_refuses_existing_without_overwrite(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match=r"model already exists: --overwrite \(overwrite=True in Python\) replaces it"):
        with atomic_directory(final):
            pytest.fail("body must not run")
    assert entries(final) == ["old.txt"] and entries(tmp_path) == ["model"]


def test_atomic_directory_refuses_final_created_meanwhile(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            final.mkdir()
            (final / "other.txt").write_text("other")
    assert entries(final) == ["other.txt"] and entries(tmp_path) == ["model"]


def test_atomic_directory_overwrite_replaces_and_cleans_up(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").exists()  # old version still served while writing
    assert entries(final) == ["new.txt"]
    assert entries(tmp_path) == ["model"]  # no .old / .tmp leftovers


def test_atomic_directory_overwrite_with_exception_keeps_old(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyError):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyError("x")
    assert entries(final) == ["old.txt"] and entries(tmp_path) == ["model"]


def test_an_interrupt_between_the_two_renames_puts_the_old_version_back(tmp_path, monkeypatch):
    import index.persist as persist

    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_rename, calls = persist.os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new version's rename: Ctrl-C just before it
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(persist.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert entries(final) == ["old.txt"] and entries(tmp_path) == ["model"]

    def rename_then_interrupt(src, dst):  # Ctrl-C arriving as the first rename returns
        real_rename(src, dst)
        if not str(dst).endswith("model"):
            raise KeyboardInterrupt

    monkeypatch.setattr(persist.os, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(persist.os, "rename", real_rename)
    assert entries(final) == ["old.txt"] and entries(tmp_path) == ["model"]

    # Ctrl-C arriving as the rename that publishes returns: the new version is in place, so the write is done (it
    # reported an interruption, the object in memory kept its old items and the replaced version stayed beside it)
    for fresh in (False, True):
        def publish_then_interrupt(src, dst):
            real_rename(src, dst)
            if str(dst).endswith("model"):
                raise KeyboardInterrupt

        if fresh:
            shutil.rmtree(final)
        monkeypatch.setattr(persist.os, "rename", publish_then_interrupt)
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
        monkeypatch.setattr(persist.os, "rename", real_rename)
        assert entries(final) == ["new.txt"] and entries(tmp_path) == ["model"]
        (final / "new.txt").rename(final / "old.txt")

    # Ctrl-C while the replaced version is deleted, the new one in place: the command reported "interrupted"
    # (exit 130) and left .model.old-<token> behind; the deletion is finished and the write succeeds
    real_rmtree, interrupted = persist.shutil.rmtree, []

    def rmtree_interrupted_once(path, **kw):
        if not interrupted:
            interrupted.append(path)
            raise KeyboardInterrupt
        real_rmtree(path, **kw)

    monkeypatch.setattr(persist.shutil, "rmtree", rmtree_interrupted_once)
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert interrupted and entries(final) == ["new.txt"] and entries(tmp_path) == ["model"]


def test_an_interrupt_while_the_swap_is_synced_still_reports_the_write_done(tmp_path, monkeypatch):
    import index.persist as persist

    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "old.txt").write_text("old")
    real_sync, interrupted = persist._sync_dir, []

    def sync_interrupted_once(directory):  # Ctrl-C as the rename into the parent is flushed
        real_sync(directory)
        if directory == tmp_path and not interrupted and any(tmp_path.glob(".model.old-*")):
            interrupted.append(directory)
            raise KeyboardInterrupt

    monkeypatch.setattr(persist, "_sync_dir", sync_interrupted_once)
    with atomic_directory(final, overwrite=True) as tmp:  # (it raised: exit 130, the new version on disk)
        (tmp / "new.txt").write_text("new")
    assert interrupted and entries(final) == ["new.txt"] and entries(tmp_path) == ["model"]


def test_a_later_write_deletes_what_killed_writers_left_and_names_the_versions_left(tmp_path, caplog):
    import fcntl

    import index.persist as persist

    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("a")
    dead = tmp_path / ".model.tmp-dead"  # a writer killed while writing: no one holds it
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "part.bin").write_bytes(b"x" * 100)
    live = tmp_path / ".model.tmp-live"  # one at work in another process: held
    live.mkdir()
    kept = tmp_path / ".model.old-kept"  # a version a kill between the renames left: maybe the only copy
    kept.mkdir()
    (kept / "a.txt").write_text("a")
    other = tmp_path / ".other.tmp-dead"  # another directory's: not this write's business
    other.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with caplog.at_level("INFO", logger="index.persist"):
            with atomic_directory(final, overwrite=True) as tmp:
                (tmp / "b.txt").write_text("b")
                assert persist._held_by_another(tmp)  # this write's own folder is held while it is written
    finally:
        os.close(fd)
    assert entries(tmp_path) == [".model.old-kept", ".model.tmp-live", ".other.tmp-dead", "model"]
    assert f"deleting {dead}, left by a write that was interrupted" in caplog.text
    assert not persist._held_by_another(kept)
    taken = persist._take_if_abandoned(kept)  # no one holds it, and it is at its path
    assert taken is not None
    os.close(taken)
    assert (f"{final}: an interrupted write left a previous version beside it: {kept} (delete it once you do not "
            f"need it)") in caplog.text


def test_a_clean_up_that_finds_a_new_folder_before_its_writer_holds_it_costs_the_writer_nothing(tmp_path,
                                                                                                 monkeypatch):
    # between a writer's mkdir and its lock, another write's clean-up found the folder unheld
    import index.persist as persist

    final = tmp_path / "model"
    real_open, cleaned = persist.os.open, []

    def open_after_a_clean_up(path, *args, **kwargs):
        if ".tmp-" in str(path) and not cleaned:
            cleaned.append(path)
            persist._clear_leftovers(final, mine=tmp_path / "none")  # another process's, at that moment
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(persist.os, "open", open_after_a_clean_up)
    with atomic_directory(final) as tmp:
        assert tmp.is_dir() and str(tmp) != str(cleaned[0])  # a second folder, held
        assert persist._held_by_another(tmp)
        (tmp / "a.txt").write_text("a")
    assert entries(final) == ["a.txt"] and entries(tmp_path) == ["model"]


def test_an_interrupt_while_others_leftovers_are_deleted_still_reports_the_write_done(tmp_path, monkeypatch):
    import index.persist as persist

    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("a")
    (tmp_path / ".model.tmp-dead").mkdir()  # a killed writer's: a large one takes seconds to delete
    real_rmtree, interrupted = persist.shutil.rmtree, []

    def rmtree_interrupted(path, **kw):
        if ".trash-" in str(path) and not interrupted:
            interrupted.append(path)
            raise KeyboardInterrupt
        real_rmtree(path, **kw)

    monkeypatch.setattr(persist.shutil, "rmtree", rmtree_interrupted)
    with atomic_directory(final, overwrite=True) as tmp:  # (it raised after the write had landed: exit 130)
        (tmp / "b.txt").write_text("b")
    assert interrupted and entries(final) == ["b.txt"]
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if p.name != "model"] == [".model.trash"]
    with atomic_directory(final, overwrite=True) as tmp:  # the next write finishes it
        (tmp / "c.txt").write_text("c")
    assert entries(tmp_path) == ["model"]


def test_a_replaced_version_that_cannot_be_deleted_is_named(tmp_path, monkeypatch, caplog):
    import index.persist as persist

    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("a")
    monkeypatch.setattr(persist.shutil, "rmtree", lambda path, **kw: None)  # (another user's files in it)
    with caplog.at_level("WARNING", logger="index.persist"):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("b")
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.old-")]
    assert len(left) == 1 and f"the version replaced could not be deleted: {left[0]} is left" in caplog.text


@pytest.mark.parametrize("overwrite", [False, True])
def test_every_file_and_directory_reaches_the_disk_before_the_rename_that_publishes_them(tmp_path, monkeypatch,
                                                                                        overwrite):
    import os

    import index.persist as persist

    final = tmp_path / "model"
    if overwrite:
        final.mkdir()
        (final / "old.txt").write_text("old")
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_open = persist.os.fsync, persist.os.rename, persist.os.open
    opened: dict[int, str] = {}

    def open_(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        opened[fd] = os.path.relpath(path, tmp_path)
        return fd

    def fsync(fd):
        events.append(("fsync", opened[fd]))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.path.relpath(dst, tmp_path)))
        real_rename(src, dst)

    monkeypatch.setattr(persist.os, "open", open_)
    monkeypatch.setattr(persist.os, "fsync", fsync)
    monkeypatch.setattr(persist.os, "rename", rename)
    with atomic_directory(final, overwrite=overwrite) as tmp:
        (tmp / "a.bin").write_bytes(b"A")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"B")
    name = tmp.name
    published = next(i for i, e in enumerate(events) if e == ("rename", "model"))
    before = {path for kind, path in events[:published] if kind == "fsync"}
    # The files, then their folders (deepest first), then after the rename the parent naming them.
    assert before == {f"{name}/a.bin", f"{name}/sub/b.bin", f"{name}/sub", name}
    assert [e for e in events if e[0] == "fsync"].index(("fsync", f"{name}/sub")) < \
        [e for e in events if e[0] == "fsync"].index(("fsync", name))
    assert events[published + 1:] == [("fsync", ".")]
    assert (final / "sub" / "b.bin").read_bytes() == b"B" and entries(tmp_path) == ["model"]


def test_a_rewrite_keeps_the_modes_it_replaces_and_new_files_follow_the_umask(tmp_path):
    import os
    import stat

    final = tmp_path / "model"
    mask = os.umask(0o022)
    try:
        with atomic_directory(final) as tmp:
            (tmp / "a.bin").write_bytes(b"a")
            os.chmod(tmp / "a.bin", 0o600)  # as safetensors writes its files, whatever the umask
        assert stat.S_IMODE((final / "a.bin").stat().st_mode) == 0o644
        os.chmod(final, 0o2750)  # a group's directory, not for others
        os.chmod(final / "a.bin", 0o640)
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "a.bin").write_bytes(b"b")
            (tmp / "c.bin").write_bytes(b"c")
            os.chmod(tmp / "c.bin", 0o600)
        assert stat.S_IMODE(final.stat().st_mode) == 0o2750
        assert stat.S_IMODE((final / "a.bin").stat().st_mode) == 0o640
        assert stat.S_IMODE((final / "c.bin").stat().st_mode) == 0o644
    finally:
        os.umask(mask)


def test_a_rewrite_keeps_the_group_of_the_version_it_replaces(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("giving files another group needs root here")
    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "a.bin").write_bytes(b"a")
    group = os.getgid() + 4242  # any gid: root may give it
    os.chown(final, -1, group)
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "a.bin").write_bytes(b"b")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.bin").write_bytes(b"c")
    assert {p.stat().st_gid for p in (final, final / "a.bin", final / "sub", final / "sub" / "c.bin")} == {group}


def test_a_writer_that_waited_locks_the_folder_now_at_the_path_not_the_one_replaced(tmp_path):
    import fcntl
    import threading

    from index.persist import writer_lock

    # it held the lock of the replaced folder, so a third writer locked the new one and both wrote
    final = tmp_path / "model"
    final.mkdir()
    got, release = threading.Event(), threading.Event()

    def second():
        with writer_lock(final):
            got.set()
            release.wait(30)

    with writer_lock(final):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)  # waiting on the first folder's lock
        with atomic_directory(final, overwrite=True) as tmp:  # the first writer publishes a new folder
            (tmp / "new.txt").write_text("new")
    assert got.wait(30)
    third = os.open(final, os.O_RDONLY)  # the folder there now is the one the second writer holds
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(third)
        release.set()
        waiter.join(30)


def test_a_writer_that_waited_for_a_folder_deleted_meanwhile_gets_its_lock_and_no_errno(tmp_path):
    import shutil
    import threading

    from index.persist import writer_lock

    final = tmp_path / "model"
    final.mkdir()
    entered = []

    def second():
        with writer_lock(final):  # (it raised FileNotFoundError: the version check now says what happened)
            entered.append(True)

    with writer_lock(final):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        shutil.rmtree(final)
    waiter.join(30)
    assert entered == [True]


def test_writer_lock_is_exclusive_and_manifest_stamp_sees_every_rewrite(tmp_path):
    import fcntl
    import os

    from index.persist import manifest_stamp, writer_lock

    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        write_manifest(tmp, {"kind": "x"})
    first = manifest_stamp(final)
    with writer_lock(final):
        other = os.open(final, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    with atomic_directory(final, overwrite=True) as tmp:
        write_manifest(tmp, {"kind": "x", "created": "same"})
    same = manifest_stamp(final)
    with atomic_directory(final, overwrite=True) as tmp:  # the same content: nothing to lose, the same stamp
        write_manifest(tmp, {"kind": "x", "created": "same"})
    assert manifest_stamp(final) == same
    with atomic_directory(final, overwrite=True) as tmp:  # other content within the same second and inode
        write_manifest(tmp, {"kind": "y", "created": "same"})
    assert manifest_stamp(final) not in (same, first) and manifest_stamp(tmp_path / "none") is None


# ----------------------------------------------------------------------------- checksums / manifest
def test_sha256_file_known_value(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = np.random.default_rng(0).bytes(3 << 20)  # several read chunks
    (tmp_path / "g").write_bytes(big)
    assert sha256_file(tmp_path / "g") == hashlib.sha256(big).hexdigest()


def test_manifest_round_trip_adds_version_and_created(tmp_path):
    given = {"dim": 64, "factory": "HNSW32"}
    write_manifest(tmp_path, given)
    assert given == {"dim": 64, "factory": "HNSW32"}  # caller's dict untouched
    got = read_manifest(tmp_path, expect={"dim": 64, "factory": "HNSW32"})
    assert got["format_version"] == FORMAT_VERSION == 2
    created = dt.datetime.fromisoformat(got["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 60
    assert entries(tmp_path) == ["manifest.json"]
    write_manifest(tmp_path, {"format_version": 1, "created": "2020-01-01T00:00:00+00:00"})
    assert read_manifest(tmp_path)["created"] == "2020-01-01T00:00:00+00:00"


def test_read_manifest_errors_name_directory_and_field(tmp_path):
    with pytest.raises(IndexFormatError, match=f"{tmp_path}: no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(IndexFormatError, match="expected a JSON object, got list"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"format_version": 99, "dim": 64})
    with pytest.raises(IndexFormatError, match=r"field 'format_version' is 99; this version of the code reads \[1, 2\]"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"dim": 64})
    with pytest.raises(IndexFormatError, match=f"{tmp_path}.*field 'dim' is 64, expected 128"):
        read_manifest(tmp_path, expect={"dim": 128})
    with pytest.raises(IndexFormatError, match="field 'factory' is missing, expected 'Flat'"):
        read_manifest(tmp_path, expect={"factory": "Flat"})
    assert issubclass(IndexFormatError, ValueError)


def test_checksum_mismatch_and_missing_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"original")
    write_manifest(tmp_path, {"checksums": {"weights.bin": sha256_file(tmp_path / "weights.bin")}})
    read_manifest(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(IndexFormatError, match=f"{tmp_path}: checksum mismatch for 'weights.bin' in 'checksums'"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, verify_checksums=False)["checksums"]
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(IndexFormatError, match="file 'weights.bin' listed in 'checksums' is missing"):
        read_manifest(tmp_path)


def test_write_manifest_needs_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        write_manifest(tmp_path / "nope", {})


# ----------------------------------------------------------------------------- the whole recipe
def test_index_saved_atomically_with_manifest_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [f"i{n}" if n % 2 else n for n in range(300)]
    index = FaissIndex.build(vectors, ids, "HNSW16")
    index.remove(["i1", 0])
    out = tmp_path / "item_index"
    with atomic_directory(out) as tmp:
        checksums = index.save(tmp)
        write_manifest(tmp, {"dim": index.dim, "factory": index.factory, "checksums": checksums})
    manifest = read_manifest(out, expect={"dim": 16, "factory": "HNSW16"})
    assert sorted(manifest["checksums"]) == ["ids.json", "index.faiss"]
    assert entries(out) == ["ids.json", "index.faiss", "manifest.json"]
    loaded = FaissIndex.load(out)
    assert loaded.ids == index.ids
    want, got = index.search(vectors[:20], 7), loaded.search(vectors[:20], 7)
    assert got[0] == want[0]
    np.testing.assert_array_equal(np.stack(got[1]), np.stack(want[1]))

    ids_json = json.loads((out / "ids.json").read_text())
    ids_json["ef_search"] = 1
    (out / "ids.json").write_text(json.dumps(ids_json))
    with pytest.raises(IndexFormatError, match="checksum mismatch for 'ids.json'"):
        read_manifest(out)


def test_a_writer_waiting_for_the_lock_says_so_and_gets_it_when_the_first_is_done(tmp_path, caplog):
    import logging
    import threading

    from index.persist import writer_lock

    final = tmp_path / "model"
    final.mkdir()
    order = []
    with writer_lock(final):
        def second():
            with writer_lock(final):
                order.append("second")

        thread = threading.Thread(target=second)
        with caplog.at_level(logging.INFO, logger="index.persist"):
            thread.start()
            thread.join(0.5)
            assert thread.is_alive() and order == []  # it waits for the first writer
            order.append("first")
    thread.join(10)
    assert order == ["first", "second"] and f"waiting for another command writing {final} to finish" in caplog.text


def test_replacing_a_link_or_a_file_leaves_no_old_entry_behind(tmp_path):
    import os

    (tmp_path / "rel1").mkdir()
    (tmp_path / "rel1" / "a.txt").write_text("kept")
    os.symlink(tmp_path / "rel1", tmp_path / "current")
    (tmp_path / "plain").write_text("a file")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")  # a link to nothing: NotADirectoryError before
    for name in ("current", "plain", "dangling"):
        with atomic_directory(tmp_path / name, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("new")
        assert (tmp_path / name).is_dir() and not (tmp_path / name).is_symlink()
        assert (tmp_path / name).stat().st_mode & 0o100  # enterable (a file's 0644 left it without x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "dangling", "plain", "rel1"]  # no .old-*
    assert (tmp_path / "rel1" / "a.txt").read_text() == "kept"  # the link's target is not touched
