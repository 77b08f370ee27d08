"""One driver per study on a SQLite file: a lock that dies with its process.

``ftsweep run`` and ``ftsweep resume`` of a study in a SQLite file each hold an exclusive
``flock`` on ``driver.lock`` in the study's work folder for as long as they run. A second driver
(``resume`` while ``run`` or another ``resume`` of the same study is running) cannot take it and is
refused with one line naming the running driver's host and pid: two drivers would each count
the budget on their own and overshoot it, and the second would re-queue the first one's
trials as if they had been interrupted.

The kernel drops an ``flock`` when the process that holds it dies, however it dies (SIGKILL
included), so a killed driver never leaves a stale lock behind. The file itself stays; its
content (host and pid) is only what the refusal shows. On a server database several drivers and
workers share the study under the budget lock instead (:func:`orchestrator.recovery.budget_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.errors import UserError

LOCK_FILE = "driver.lock"


class StudyBusy(UserError):
    """Another driver is running the study."""


@contextlib.contextmanager
def driver_lock(work_dir: Path, study_name: str) -> Iterator[None]:
    """Hold the study's driver lock for the duration of the block.

    Args:
        work_dir: the study's work folder (created if needed).
        study_name: for the message.

    Raises:
        StudyBusy: when another live process holds it, naming its host and pid.
    """

    def busy(holder: str) -> UserError:
        return StudyBusy(
            f"study {study_name!r} is already being run by ftsweep ({holder}); two drivers would "
            "overshoot its budget. Wait for it to finish, or stop it (Ctrl-C) and then run "
            f"`ftsweep resume {study_name}`"
        )

    with process_lock(work_dir / LOCK_FILE, busy):
        yield


@contextlib.contextmanager
def process_lock(path: Path, busy: Callable[[str], UserError]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` while the block runs; it dies with this process.

    Args:
        path: the lock file (its folder is created if needed); it keeps the holder's host and pid.
        busy: the error to raise, given the holder's host and pid, when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open's descriptors are not inherited by child processes: only this process holds the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(_read(fd) or "another process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
