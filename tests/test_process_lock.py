"""The lock behind "one driver per study" and "one final per study": held by a process, named when busy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.driver_lock import process_lock
from orchestrator.errors import UserError


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "study" / "final.lock"
    with process_lock(lock, lambda holder: UserError(f"busy: {holder}")):
        # flock belongs to an open file description: a second open of the file, even here, is refused
        with pytest.raises(UserError, match=rf"busy: host .*, pid {os.getpid()}$"):
            with process_lock(lock, lambda holder: UserError(f"busy: {holder}")):
                pass
    with process_lock(lock, lambda holder: UserError(f"busy: {holder}")):  # released with the block
        pass
