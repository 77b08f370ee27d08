"""Loading Hugging Face models and tokenizers from local folders: a building block every recipe uses.

Nothing is downloaded at run time: with ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, every
``from_pretrained`` call gets ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now rather than at import."""
    import os

    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in _OFFLINE_VARIABLES
    )


def hub_options() -> dict[str, Any]:
    # huggingface_hub reads HF_HUB_OFFLINE once, when imported; passing local_files_only honours a
    # value set later and spares a machine without internet a minute of connection retries.
    return {"local_files_only": True} if hub_offline() else {}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the expected "newly initialized classifier weights" notice and the progress bar."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
