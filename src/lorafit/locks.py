"""One writer per run folder: the lock (RunLock) held by the one process that writes a run folder, and who
holds it (lock_holder).

The OS lock (flock on .lock) is the truth: the kernel drops it when the holder dies, even by kill -9, so a lock
file whose flock is free was left by a dead process and is taken over. Where there is no flock (Windows; NFS without
lockd, ENOLCK) the lock file itself is the lock: made with O_EXCL, so of two processes exactly one makes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # Windows: the lock file alone, see RunLock
    fcntl = None

from lorafit.errors import UserError

LOCK = ".lock"

log = logging.getLogger(__name__)


# Write failures a user fixes by freeing space, making the place writable or choosing another: one line, not a
# traceback.
# EIO: the disk or network filesystem failed the write (or its fsync): the file is not saved, which is the user's to
# know and fix, not a bug in lorafit to trace.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}  # the others: a read-only disk or folder, where space is not the fix


@contextlib.contextmanager
def disk_errors_explained(path: Path):
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        fix = ("free some space" if exc.errno in _FULL_ERRNOS else
               "check the disk (or the network filesystem)" if exc.errno == errno.EIO else "make it writable")
        raise UserError(f"cannot write {path}: {exc.strerror}; {fix} or write somewhere else "
                        "(nothing was half-written)") from None


class RunFolderBusy(UserError):
    """Another live process holds the run folder's lock: nothing may be written there."""


def describe_holder(info: Optional[dict]) -> str:
    if not info or "pid" not in info:
        return "another process (it has not written its details yet)"
    return f"process {info['pid']} on {info.get('host', '?')} (since {info.get('started', '?')})"


def read_lock(run_dir: Path) -> Optional[dict]:
    """The lock file's holder details, or None (no lock file, or not written yet)."""
    try:
        data = json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_holder(run_dir: str | Path) -> Optional[dict]:
    return lock_state(run_dir)[0]


def lock_state(run_dir: str | Path) -> tuple[Optional[dict], bool]:
    """(lock_holder's answer, whether a held flock or this process's own lock says the holder is live, rather than
    only the lock file's details, which a killed run leaves behind)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, False  # no lock file: no writer (a writer locks before it writes anything)
    try:
        try:
            state = _try_flock(fd, shared=True)
        except OSError:
            state = False  # as without OS locks: the details decide
        details = _read_fd(fd)
    finally:
        os.close(fd)
    if state is None:
        return details or {}, True
    if held_here(run_dir):  # this process writes it (without flock, nothing else tells)
        return details or {}, True
    return _holder_without_os_lock(details, os_lock_free=bool(state)), False


def _holder_without_os_lock(details: Optional[dict], os_lock_free: bool) -> Optional[dict]:
    """Whether the lock file's details name a writer when no flock says so (RunLock's rules): another machine's
    holder is never guessed dead; on this machine a free flock, a dead pid or this process's pid (an earlier
    process's, as this one does not hold it) means none; without OS locks, no details yet means one starting."""
    if not details:
        return None if os_lock_free else {}
    if details.get("host") != socket.gethostname():
        return details
    if os_lock_free or details.get("pid") == os.getpid() or not _may_be_alive(details.get("pid")):
        return None
    return details


class RunLock:
    """Held by the one process that writes a run folder (a training run; under torchrun, rank 0 for the job; an
    evaluation while it writes its scores).

    The OS lock (flock on .lock) is the truth: the kernel drops it when the holder dies, even by kill -9, so a
    lock file whose flock is free was left by a dead process and is taken over. The file's JSON (host, pid,
    start) only names the holder in messages. Where there is no flock (Windows; NFS without lockd, ENOLCK) the
    lock file itself is the lock: made with O_EXCL, so of two processes exactly one makes it, and taken over only
    when it names a dead process of this machine; another machine's is refused (delete it by hand once that run
    is gone). wait_s: how long acquire waits for another holder to finish before refusing (an evaluation waits
    for another one writing its scores; a training run never waits). scores_only: the holder writes evaluation/
    and the model card, nothing a loader reads, so readers go on meanwhile (writer_of).
    """

    def __init__(self, run_dir: str | Path, job: Optional[str] = None, wait_s: float = 0.0, scores_only: bool = False):
        self.run_dir = Path(run_dir)
        self.job = job  # what other ranks of the same torchrun job compare (see train.run_folder_lock)
        self.wait_s = wait_s
        self.scores_only = scores_only
        self._fd: Optional[int] = None
        self._created: list[Path] = []
        self._os_locked = False  # flock held (False where the OS or file system has none)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        if self._fd is not None:  # held by this very object: refused as any second holder is, its hold kept
            raise self._busy(read_lock(self.run_dir))
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._acquire_once()
            except RunFolderBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _acquire_once(self) -> "RunLock":
        self._created = []
        try:
            with disk_errors_explained(self.run_dir):
                self._fd = self._lock_file()
            _HELD_HERE.add(self._key())
        except BaseException:
            # also a Ctrl-C once the lock is taken (_fd was None on entry: acquire): `with RunLock(...)` never
            # reaches __exit__ to release it
            self.release()
            self._remove_created()
            raise
        return self

    def _key(self) -> str:
        return _lock_key(self.run_dir)

    def _make_folder(self) -> None:
        """Make the run folder, noting the folders made (deepest first) for _remove_created."""
        made = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._created = sorted(set(self._created) | set(made), key=lambda p: len(p.parts), reverse=True)

    def _lock_file(self) -> int:
        path = self.run_dir / LOCK
        for _ in range(50):  # each retry follows a holder that just released; more means something is wrong
            self._make_folder()  # again on a retry: a holder that released removes the empty folder it made
            try:
                fd, created = _open_lock_file(path)
            except FileNotFoundError:
                continue  # that folder was removed between the two calls
            except PermissionError:
                if not path.exists():
                    raise  # the folder is not writable: disk_errors_explained says so
                raise self._unreadable(path) from None
            except IsADirectoryError:  # made by hand, or by an older lorafit's export --output RUN/.lock
                raise UserError(f"{path} is a folder, where lorafit keeps the lock file of {self.run_dir}; move it "
                                "away and try again") from None
            try:
                if self._lock_fd(fd, created, path):
                    _write_fd(fd, self._holder())
                    return fd
            except BaseException:
                with contextlib.suppress(OSError):
                    if created and self._os_locked is not None and _same_file(fd, path):
                        # made here, and no other process holds it: a failed start leaves no lock file (nor folder)
                        path.unlink()
                    os.close(fd)
                raise
            os.close(fd)  # the holder released and removed this file after we opened it, or it was stale
        raise UserError(f"could not lock {self.run_dir}: other processes keep taking and releasing it; try again")

    def _lock_fd(self, fd: int, created: bool, path: Path) -> bool:
        """Whether fd now holds the lock; False: try again on a fresh lock file."""
        # None while flock has not answered, and once it says another process holds the file (which may be the
        # one made here): a start interrupted meanwhile must not remove that holder's lock file
        self._os_locked = None
        try:
            self._os_locked = _flock_past_probes(fd, path, self._local_disk_fix())
        except UserError:
            self._os_locked = False  # flock itself fails here, so no process holds this file
            raise
        if self._os_locked is None:
            raise self._busy(_read_fd(fd))
        if not _same_file(fd, path):
            return False  # the holder released and removed this file after we opened it
        if self._os_locked:
            self._take_over(_read_fd(fd), path)
            if _read_only(fd):  # another user's, left by a killed run: removed (its flock is ours), ours made anew
                path.unlink()
                return False
            return True
        if self._key() in _HELD_HERE:  # no OS locks: nothing else refuses a second RunLock in this process
            raise self._busy(_read_fd(fd))
        if created:  # no OS locks: the file is the lock, and O_EXCL made it ours alone
            return True
        self._remove_stale(_read_fd(fd), fd, path)
        return False

    def refuse_if_held(self) -> None:
        """Raise what acquire would when another process holds this lock now, without taking it."""
        holder, live = lock_state(self.run_dir)
        if holder is not None:  # only the file names it (another machine's, or no flock): say which file to delete
            raise self._busy(holder) if live else self._refused(holder, self.run_dir / LOCK)

    def _local_disk_fix(self) -> str:
        """What to do where this lock cannot be taken at all (EIO): the run folder moves to a local disk."""
        return "keep run folders on a local disk (--output-dir when training; a copy of the run folder otherwise)"

    def _busy(self, info: Optional[dict]) -> "RunFolderBusy":
        return RunFolderBusy(f"{self.run_dir} is in use by {describe_holder(info)}; wait for that run to finish or "
                             "stop it (two writers would corrupt the folder)")

    def _take_over(self, previous: Optional[dict], path: Path) -> None:
        if not previous or previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname():
            return
        if previous.get("host") != socket.gethostname():
            # No OS lock vouches for a process elsewhere (NFS locks may not reach other machines): never guess.
            raise self._refused(previous, path)
        log.warning("%s was locked by %s, which is no longer running; taking the lock over",
                    self.run_dir, describe_holder(previous))

    def _refused(self, previous: Optional[dict], path: Path) -> "RunFolderBusy":
        return RunFolderBusy(f"{self.run_dir} is locked by {describe_holder(previous)}; if that run is no longer "
                             f"running, delete {path} and try again")

    def _unreadable(self, path: Path) -> "RunFolderBusy":
        return RunFolderBusy(f"{self.run_dir} is locked by another user's process ({path} cannot be read: "
                             f"permission denied); if that run is no longer running, delete {path} and try again")

    def _remove_stale(self, previous: Optional[dict], fd: int, path: Path) -> None:
        """No OS locks, and another process made the lock file: refuse, unless it names a dead process of this
        machine (or this pid, which then belonged to an earlier process: a container restarted with the same
        hostname and pid); that file is removed and the lock made anew."""
        if not previous:  # its maker is between O_EXCL and writing its details, or was killed right there
            raise self._refused(previous, path)
        pid, here = previous.get("pid"), previous.get("host") == socket.gethostname()
        if not here or (pid != os.getpid() and _may_be_alive(pid)):
            raise self._refused(previous, path)
        log.warning("%s was locked by %s, which is no longer running; taking the lock over",
                    self.run_dir, describe_holder(previous))
        _remove_lock_file(fd, path)

    def _holder(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": sys.argv, "job": self.job,
                **({"scores_only": True} if self.scores_only else {})}

    def release(self) -> None:
        if self._fd is None:
            return
        path = self.run_dir / LOCK
        _HELD_HERE.discard(self._key())
        try:
            # A folder that cannot be changed (made read-only meanwhile, or another user's with a writable lock
            # file) keeps the file: its flock goes with the fd, so the next run takes it over; no traceback here
            with contextlib.suppress(OSError):
                if _same_file(self._fd, path):  # removed first, so a waiter that opened it retries on a fresh file
                    path.unlink()
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """A refused or empty run leaves no folder behind that it made itself."""
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


_HELD_HERE: set[str] = set()  # lock files this process holds: without flock nothing else refuses a second RunLock


class ReplaceLock(RunLock):
    """atomic_replace_dir's lock on one target: a RunLock on a hidden folder beside it (.{name}.lock/), so it has the
    run lock's rules (flock, which the kernel drops when its holder is killed; the lock file without flock) and
    leaves nothing behind. A second writer is refused at once rather than kept waiting for minutes."""

    def __init__(self, target: Path):
        super().__init__(target.with_name(f".{target.name}.lock"))
        self.target = target

    def _local_disk_fix(self) -> str:
        # The lock beside an export's --output, not the run folder's: moving the run folder would not help
        return f"write {self.target.name} to a folder on a local disk (another --output)"

    def _busy(self, info: Optional[dict]) -> "RunFolderBusy":
        return RunFolderBusy(f"{self.target} is being written by {describe_holder(info)}; wait for it to finish, "
                             "or write to another folder (nothing was written)")

    def release(self) -> None:
        held = self._fd is not None
        super().release()
        if held:  # a lock folder left by a killed holder: release removes only the folders this acquire made
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()


def check_not_being_replaced(target: str | Path) -> None:
    """Refuse at once while another writer holds target's atomic_replace_dir lock: a second export to one --output
    learns it before it spends minutes loading its model (the lock, taken later, still decides)."""
    ReplaceLock(Path(target)).refuse_if_held()


def _lock_key(run_dir: str | Path) -> str:
    return os.path.realpath(Path(run_dir) / LOCK)


def held_here(run_dir: str | Path) -> bool:
    return _lock_key(run_dir) in _HELD_HERE


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """(fd, whether this call made the file): without OS locks, making it (O_EXCL) is taking the lock."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR), False
    except PermissionError:  # another user's lock file: flock needs no write access to say whether it is held
        return os.open(path, os.O_RDONLY), False


def _read_only(fd: int) -> bool:
    return fcntl is not None and (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDONLY


def _remove_lock_file(fd: int, path: Path) -> None:
    """Remove the stale lock file that fd has open, and no other: it is renamed aside first, and what was renamed
    is put back when it is not that file (another process took the stale lock over a moment before)."""
    aside = path.with_name(f"{LOCK}.stale.{os.getpid()}.{time.monotonic_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process removed it first
    if not _same_file(fd, aside):
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _flock_past_probes(fd: int, path: Path, local_disk_fix: str) -> Optional[bool]:
    """_try_flock, tried again for up to a second while the holder has written no details or holds only a shared
    flock: a reader's check (writer_of) holds one for a few microseconds, and must not turn a training run away,
    even from a killed run's lock file (whose details are still there)."""
    for _ in range(20):
        try:
            state = _try_flock(fd)
            if state is not None or (_read_fd(fd) and not _readers_only(fd)):
                return state
        except OSError as exc:  # EIO, EINVAL...: a file system to keep runs off
            raise UserError(f"cannot lock {path}: {exc.strerror or exc}; {local_disk_fix}") from None
        time.sleep(0.05)
    return None


def _readers_only(fd: int) -> bool:
    """Whether the flock that refused an exclusive one is only readers' shared ones (a writer's is exclusive)."""
    if not _try_flock(fd, shared=True):
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)  # a probe only: the exclusive flock is tried again
    return True


def check_job_lock(run_dir: Path, job: Optional[str]) -> None:
    """Other ranks of a torchrun job: the folder must be locked by their own rank 0 (it locks first)."""
    info = read_lock(run_dir)
    if not info or info.get("job") != job:
        raise RunFolderBusy(f"{run_dir} is in use by {describe_holder(info)}; wait for that run to finish or stop "
                            "it (two writers would corrupt the folder)")


# flock's errors where the file system has no locks (NFS without lockd: ENOLCK; Lustre -o noflock: ENOSYS)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOSYS}


def _try_flock(fd: int, shared: bool = False) -> Optional[bool]:
    """True: locked. None: another process holds it. False: no OS locks here; the lock file alone decides."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        return False
    return True


def _may_be_alive(pid: Any) -> bool:
    """Whether a process of this machine may still run (True where that cannot be told)."""
    if not isinstance(pid, int) or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a damaged file's pid, beyond any process's
        return False
    except OSError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_fd(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_fd(fd: int, info: dict) -> None:
    data = (json.dumps(info) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
