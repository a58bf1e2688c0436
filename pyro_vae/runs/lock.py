"""One writer per run directory: training holds an exclusive lock on ``RUN/.lock`` while it runs.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on that file. The kernel drops it when the holder's
process ends, however it ends (SIGKILL included), so a lock file left by a dead process is
only a file: its text is never taken for a lock, and the next run takes it at once. The holder
writes its pid and host into the file, so a refused run can say who holds the directory, and
removes the file when it finishes. (A run that locks the file just as its holder removes it
sees that the file it locked is no longer the one at ``RUN/.lock``, and locks the new one, so
there are never two holders.)

Under torchrun rank 0 alone takes the lock, and tells every rank whether it got it (one
broadcast, the group's first collective), so no rank waits at a barrier for a rank that stopped.
Commands that only read a run (evaluate, plot, sample, serve, compare-elbo) take no lock.
POSIX only: where there is no ``fcntl`` (Windows) runs are not locked.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pyro_vae.runtime.distributed import World

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_NAME = ".lock"
# How long a refused run waits for the holder's pid to appear (it writes it just after locking).
_HOLDER_WAIT = 1.0


class RunInUseError(RuntimeError):
    """Another process holds the run directory (it is training into it now)."""


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Holds ``run_dir``'s lock for the block (creating the folder if needed); yields the lock
    file's path. RunInUseError, naming the holder's pid and host, when another process holds it.

    Folders made here are removed again on the way out when nothing else was written into them,
    so a run that stops on bad input leaves nothing behind.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    if fcntl is None:  # no flock (Windows): the run is not locked
        run_dir.mkdir(parents=True, exist_ok=True)
        yield path
        return
    created: list[Path] = []
    fd = _acquire(run_dir, path, created)
    try:
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.pwrite(fd, holder, 0)
        os.ftruncate(fd, len(holder))  # a dead holder's longer text would otherwise remain
        yield path
    finally:
        try:
            if _is_file_at(fd, path):  # not if someone removed it and another run locked a new one
                path.unlink()
        finally:
            os.close(fd)  # releases the lock
        for folder in reversed(created):
            try:
                folder.rmdir()  # only when empty: the run wrote nothing there
            except OSError:
                break


def _acquire(run_dir: Path, path: Path, created: list[Path]) -> int:
    """An open descriptor of ``path`` holding its flock."""
    for _ in range(100):  # each retry: another run just removed the file or the folder
        try:
            created += [p for p in _make_dirs(run_dir) if p not in created]
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a run that stopped on bad input just removed the folder
            continue
        except OSError as e:
            raise ValueError(
                f"cannot lock {run_dir} for training ({e.strerror}); choose an --out you can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunInUseError(
                f"{run_dir} is in use by another pyro-vae run ({holder}); wait for it to finish "
                "or stop it"
            ) from None
        if _is_file_at(fd, path):
            return fd
        os.close(fd)  # the holder finished and removed the file as we locked it: lock anew
    raise RunInUseError(f"{run_dir} keeps changing under this run; is another run starting there?")


def _make_dirs(folder: Path) -> list[Path]:
    """Makes ``folder`` and its missing parents; returns those it made, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _holder(fd: int) -> str:
    """'pid 1234 on host X' from the lock file (the holder writes it just after locking)."""
    deadline = time.monotonic() + _HOLDER_WAIT
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0))
            return f"pid {int(record['pid'])} on host {record['host']}"
        except (ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "its pid is not known"
            time.sleep(0.02)


@contextmanager
def hold_run(run_dir: str | os.PathLike, world: World | None = None) -> Iterator[None]:
    """:func:`run_lock` on rank 0 of ``world`` for the block. Every rank raises rank 0's error
    when rank 0 could not take it: rank 0 sends its outcome to all in one broadcast, before any
    other collective, so no rank goes on to wait at a barrier rank 0 never reaches."""
    world = world or World()
    with ExitStack() as stack:
        error = None
        if world.is_main:
            try:
                stack.enter_context(run_lock(run_dir))
            except Exception as e:  # noqa: BLE001 - sent to the other ranks, then raised
                error = e
        error = world.broadcast_object(error)
        if error is not None:
            raise error
        yield
