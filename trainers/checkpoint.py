"""Save and load a trial's state atomically, in a format that cannot run code.

A checkpoint is one file in the trial's checkpoint folder, ``state.safetensors``. The state's
tensors are the file's tensors; everything else (epochs, random-generator states, scheduler and
optimizer settings, metrics) is JSON, kept in the file's header metadata, in which each tensor is
a reference by name. Loading parses JSON and copies bytes into tensors: nothing in the file is
executed. (``torch.load`` without ``weights_only`` and ``pickle.load`` run whatever the file's
author put in it, and checkpoint folders are often on storage other people can write.)

What a state may hold: None, bools, ints, floats (NaN and infinities too), strings, lists,
tuples, dicts with keys of those kinds, torch tensors and numpy arrays (numeric dtypes) and
numpy scalars (kept as the Python number they equal). Tuples stay tuples and integer keys stay
integers, so random-generator states and optimizer state dicts come back exactly as saved.
Tensors come back on the CPU.

The file is written to a temporary name in the same folder, flushed to disk, then renamed over
the old one, so a process killed at any moment leaves either the previous checkpoint or the new
one. A checkpoint that does not load (truncated, corrupt, not this format, or a ``state.pt`` /
``state.pkl`` of the old pickle-based format, which is never opened) raises
:class:`CheckpointUnreadable` naming the file; :meth:`trainers.base.TrialContext.load_checkpoint`
reports it in the trial's log and the trial starts over.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainers.safetensors_file import SafetensorsProblem, read_header

STATE_FILE = "state.safetensors"
#: Files of the old format (``torch.save`` / pickle): never loaded, removed by the next save.
LEGACY_FILES = ("state.pt", "state.pkl")
REPORTS_FILE = "reports.json"
#: The header metadata keys: the format's name and version, and the state as JSON.
FORMAT_KEY = "ftsweep.format"
STATE_KEY = "ftsweep.state"
FORMAT = "ftsweep-checkpoint-2"
#: The key of a tagged JSON object: a tuple, a dict with keys JSON objects cannot hold, an array, a tensor.
_TAG = "$type"


class CheckpointUnreadable(Exception):  # noqa: N818 - named for the condition, like FileNotFoundError
    """A checkpoint file that exists but cannot be loaded.

    Attributes:
        path: the file.
        reason: what is wrong with it, in a few words.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint {path} cannot be loaded: {reason}")
        self.path = path
        self.reason = reason


def save_checkpoint(folder: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to the folder atomically and return the file's path.

    Raises:
        TypeError: when the state holds a value of a kind a checkpoint cannot hold (see the module).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    tree = _encode(dict(state), tensors, set())
    metadata = {FORMAT_KEY: FORMAT, STATE_KEY: json.dumps(tree, separators=(",", ":"))}
    target = folder / STATE_FILE
    handle, temporary = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        # No tensors: the numpy writer, so a trainer that never imports torch does not pay for it here.
        writer: Any = importlib.import_module("safetensors.torch" if tensors else "safetensors.numpy")
        writer.save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for name in LEGACY_FILES:
        (folder / name).unlink(missing_ok=True)
    return target


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The state saved in ``folder``, or None when there is none.

    Raises:
        CheckpointUnreadable: when a checkpoint file is there but cannot be loaded.
    """
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.exists():
        for name in LEGACY_FILES:
            if (folder / name).exists():
                raise CheckpointUnreadable(
                    folder / name,
                    "it is in the old pickle-based format, which can run code when loaded, "
                    "so it is not opened",
                )
        return None
    try:
        header = read_header(path)
        metadata = header.get("__metadata__", {})
        if metadata.get(FORMAT_KEY) != FORMAT or STATE_KEY not in metadata:
            raise CheckpointUnreadable(path, f"it is not an ftsweep checkpoint of format {FORMAT!r}")
        tree = json.loads(metadata[STATE_KEY])
        names = [name for name in header if name != "__metadata__"]
        tensors: dict[str, Any] = {}
        if names:
            from safetensors.torch import load_file

            tensors = load_file(path, device="cpu")
        state = _decode(tree, tensors)
    except CheckpointUnreadable:
        raise
    except (SafetensorsProblem, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointUnreadable(path, str(error) or type(error).__name__) from None
    except Exception as error:  # noqa: BLE001 - safetensors' own errors, OSError: unreadable either way
        raise CheckpointUnreadable(path, f"{type(error).__name__}: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointUnreadable(path, "its state is not a mapping")
    return state


def checkpoint_exists(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint (of this format)."""
    return (Path(folder) / STATE_FILE).exists()


# --------------------------------------------------------------------------------------------
# The state as JSON: tagged objects for what JSON cannot say
# --------------------------------------------------------------------------------------------


def _encode(value: Any, tensors: dict[str, Any], storages: set[int]) -> Any:
    """``value`` as JSON, its tensors moved to ``tensors`` (by name) and referred to by name."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_encode(item, tensors, storages) for item in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(item, tensors, storages) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and _TAG not in value:
            return {key: _encode(item, tensors, storages) for key, item in value.items()}
        return {
            _TAG: "dict",
            "items": [
                [_encode(key, tensors, storages), _encode(item, tensors, storages)]
                for key, item in value.items()
            ],
        }
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = _storable(value, storages)
        return {_TAG: "tensor", "name": name}
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(f"a checkpoint cannot hold a numpy array of dtype {value.dtype} (only numbers)")
        return {
            _TAG: "ndarray",
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "data": base64.b64encode(numpy.ascontiguousarray(value).tobytes()).decode("ascii"),
        }
    if numpy is not None and isinstance(value, numpy.generic):
        return _encode(value.item(), tensors, storages)
    raise TypeError(
        f"a checkpoint cannot hold a {type(value).__module__}.{type(value).__qualname__}; "
        "it holds None, bools, numbers, strings, lists, tuples, dicts, torch tensors and numpy arrays"
    )


def _storable(tensor: Any, storages: set[int]) -> Any:
    """A CPU, contiguous tensor that shares memory with no tensor already stored (safetensors' rules)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    storage = tensor.untyped_storage().data_ptr()
    if storage in storages and tensor.numel():
        tensor = tensor.clone()
        storage = tensor.untyped_storage().data_ptr()
    storages.add(storage)
    return tensor


def _decode(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind is None:
        return {key: _decode(item, tensors) for key, item in value.items()}
    if kind == "tuple":
        return tuple(_decode(item, tensors) for item in value["items"])
    if kind == "dict":
        return {_hashable(_decode(key, tensors)): _decode(item, tensors) for key, item in value["items"]}
    if kind == "tensor":
        return tensors[value["name"]]
    if kind == "ndarray":
        import numpy

        dtype = numpy.dtype(value["dtype"])
        if dtype.kind not in "biufc":
            raise ValueError(f"an array of dtype {dtype} is not allowed in a checkpoint")
        data = base64.b64decode(value["data"], validate=True)
        return numpy.frombuffer(data, dtype=dtype).reshape(value["shape"]).copy()
    raise ValueError(f"unknown tagged value {kind!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):  # a dict key cannot be a list; only a tampered file holds one
        raise ValueError("a dict key in the checkpoint is a list")
    return key


# --------------------------------------------------------------------------------------------
# The epochs a trial has reported
# --------------------------------------------------------------------------------------------


def save_reports(folder: Path, reports: list[tuple[int, dict[str, float]]]) -> None:
    """The epochs a trial has reported, next to its checkpoint (written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{REPORTS_FILE}.tmp"
    temporary.write_text(json.dumps([[epoch, metrics] for epoch, metrics in reports]), encoding="utf-8")
    os.replace(temporary, folder / REPORTS_FILE)


def load_reports(folder: Path) -> list[tuple[int, dict[str, float]]]:
    """The epochs :func:`save_reports` wrote; an empty list when there are none or the file is unreadable."""
    path = Path(folder) / REPORTS_FILE
    if not path.exists():
        return []
    try:
        reports = json.loads(path.read_text(encoding="utf-8"))
        return [
            (int(epoch), {str(k): float(v) for k, v in dict(metrics).items()}) for epoch, metrics in reports
        ]
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return []  # only a replay is lost: the epochs are run and reported again
