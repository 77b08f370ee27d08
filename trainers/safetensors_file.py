"""Reading and checking a safetensors file's header without loading its tensors.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range, plus an optional ``__metadata__`` mapping of strings), then the tensors'
bytes. Its header alone tells whether the file is whole: the byte ranges must tile the data that
follows exactly. That lets a model's weights be checked while planning (a truncated download or
copy) and a checkpoint be refused before anything is built from it, reading a few kilobytes
instead of the tensors. Nothing in the file is ever executed: it is JSON and raw numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["SafetensorsProblem", "read_header"]

#: The limit the safetensors library itself puts on a header.
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each dtype the format names (dtypes not listed are not size-checked).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class SafetensorsProblem(ValueError):
    """A file that is not a whole safetensors file; the message says what is wrong with it."""


def read_header(path: Path) -> dict[str, Any]:
    """The header of the safetensors file ``path``, after checking it against the file's size.

    Args:
        path: the file.

    Returns:
        the header: tensor name -> ``{"dtype", "shape", "data_offsets"}``, and ``__metadata__``
        (a mapping of strings) when the file has one.

    Raises:
        SafetensorsProblem: when the file is shorter than its header says (truncated), longer,
            or not a safetensors file at all.
        OSError: when the file cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise SafetensorsProblem(f"it is {size} bytes long, too short for a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise SafetensorsProblem(
                f"its first 8 bytes announce a {length}-byte header but the file is {size} bytes long "
                "(truncated, or not a safetensors file)"
            )
        raw = stream.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsProblem(f"its header is not JSON ({error}); not a safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsProblem("its header is not a JSON object; not a safetensors file")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsProblem("its __metadata__ is not a mapping of strings")
    end = _check_tensors(header)
    data = size - 8 - length
    if data < end:
        raise SafetensorsProblem(
            f"it is truncated: its header describes {end} bytes of tensors but only {data} follow"
        )
    if data > end:
        raise SafetensorsProblem(
            f"it has {data - end} bytes after its last tensor that its header does not describe"
        )
    return header


def _check_tensors(header: dict[str, Any]) -> int:
    """Check each tensor's entry; the end of the last byte range (the data's expected size)."""
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(value, int) and value >= 0 for value in offsets)
            or offsets[1] < offsets[0]
            or not isinstance(shape, list)
            or not all(isinstance(value, int) and value >= 0 for value in shape)
        ):
            raise SafetensorsProblem(f"the header's entry for tensor {name!r} is malformed")
        width = DTYPE_BYTES.get(entry.get("dtype"))
        if width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
            raise SafetensorsProblem(
                f"tensor {name!r} ({entry.get('dtype')} {shape}) needs {math.prod(shape) * width} bytes "
                f"but its byte range holds {offsets[1] - offsets[0]}"
            )
        ranges.append((offsets[0], offsets[1]))
    position = 0
    for begin, finish in sorted(ranges):
        if begin != position:
            raise SafetensorsProblem("its tensors' byte ranges overlap or leave gaps")
        position = finish
    return position
