"""Where and how a trial computes: its device, its precision, its threads and its random state.

A building block of the epoch engine (:mod:`trainers.engine`), usable on its own: a recipe asks
:func:`start_runtime` for a :class:`Runtime` before it builds anything random (the model's new
head, dropout masks), moves its tensors with :meth:`Runtime.to_device` and runs its forward passes
under :meth:`Runtime.autocast`. :func:`rng_state` / :func:`restore_rng_state` are what a
checkpoint stores so that a resumed trial draws the same numbers an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class Runtime:
    """The trial's device and precision.

    Attributes:
        device: the ``torch.device`` the model lives on.
        compute: ``"bf16"`` when forward passes run under bfloat16 autocast, else ``"fp32"``.
    """

    device: torch.device
    compute: Literal["fp32", "bf16"]

    @property
    def on_cuda(self) -> bool:
        """True on a GPU."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast (float32 master weights, bfloat16 matrix products) or nothing."""
        import torch

        if self.compute == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, value: Any) -> Any:
        """A tensor (or a dict of tensors) on the device: from pinned memory, without blocking, on a GPU."""
        if not self.on_cuda:
            return value
        if isinstance(value, dict):
            return {key: self.to_device(tensor) for key, tensor in value.items()}
        return value.pin_memory().to(self.device, non_blocking=True)


def start_runtime(device: str, precision: Precision, n_threads: int, seed: int) -> Runtime:
    """Use ``n_threads`` CPU threads, seed every generator with ``seed``, pick the device and precision.

    Args:
        device: ``"cuda"`` when the trial was given a GPU, else ``"cpu"`` (``TrialContext.device``).
        precision: ``auto`` (bfloat16 autocast on a GPU that supports it, float32 on CPU), ``bf16``
            (autocast on CPU too) or ``fp32``.
        n_threads: the CPU threads the trial may use.
        seed: seeds Python's, NumPy's and torch's generators (every CUDA device's too).

    Raises:
        RuntimeError: when the trial was given a GPU that torch does not see.
        ValueError: for ``bf16`` on a GPU without bfloat16.
    """
    import torch

    torch.set_num_threads(max(1, int(n_threads)))
    seed_everything(seed)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the trial was given a GPU (device 'cuda') but torch sees no CUDA device")
    where = torch.device("cuda" if device == "cuda" else "cpu")
    on_cuda = where.type == "cuda"
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("trainer.precision: bf16, but this GPU does not support bfloat16; use auto or fp32")
    use_bf16 = precision == "bf16" or (precision == "auto" and on_cuda and torch.cuda.is_bf16_supported())
    return Runtime(device=where, compute="bf16" if use_bf16 else "fp32")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (torch's seeds every CUDA device too)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(on_cuda: bool) -> dict[str, Any]:
    """Every generator's state, for a checkpoint: ``python``, ``numpy``, ``torch`` (and ``cuda``)."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if on_cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], on_cuda: bool) -> None:
    """Put back what :func:`rng_state` took."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if on_cuda and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


#: A context manager factory, as :meth:`Runtime.autocast` is one.
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
