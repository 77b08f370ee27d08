"""GPU discovery and slot assignment.

The driver never initialises CUDA: it counts GPUs from ``CUDA_VISIBLE_DEVICES``,
``nvidia-smi`` or ``/proc/driver/nvidia/gpus``, and gives each worker a *slot*: the GPU ids
it may see (through ``CUDA_VISIBLE_DEVICES``) and its share of the CPU threads. Tests and
unusual machines set ``FTSWEEP_GPU_COUNT`` to inject a count.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

GPU_COUNT_ENV = "FTSWEEP_GPU_COUNT"


@dataclass(frozen=True)
class Slot:
    """Where one worker runs its trials.

    Attributes:
        index: the worker's number, from 0.
        gpu_ids: the GPU ids the worker sees through ``CUDA_VISIBLE_DEVICES``; empty on the CPU.
        n_threads: CPU threads for the worker's torch.
        share: how many workers share these GPUs (2 with ``gpus_per_trial: 0.5``).
    """

    index: int
    gpu_ids: tuple[str, ...]
    n_threads: int
    share: int = 1

    @property
    def device(self) -> str:
        return "cuda" if self.gpu_ids else "cpu"

    @property
    def label(self) -> str:
        if not self.gpu_ids:
            return f"cpu ({self.n_threads} thread{'' if self.n_threads == 1 else 's'})"
        shared = f", shared by {self.share}" if self.share > 1 else ""
        return f"gpu {','.join(self.gpu_ids)}{shared}"

    def environment(self) -> dict[str, str]:
        """Environment variables a worker process on this slot starts with."""
        threads = str(self.n_threads)
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }


def visible_gpu_ids() -> list[str]:
    """The GPU ids this process may use, found without initialising CUDA."""
    injected = os.environ.get(GPU_COUNT_ENV)
    if injected is not None and injected.strip():
        if not injected.strip().isdigit():
            raise ConfigError(f"{GPU_COUNT_ENV}={injected!r}: must be a whole number of GPUs")
        return [str(i) for i in range(int(injected))]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1"]
    return [str(i) for i in range(_count_physical_gpus())]


def _count_physical_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            output = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            return sum(1 for line in output.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plan_slots(
    gpu_ids: list[str],
    gpus_per_trial: float,
    workers: int | str = "auto",
    n_cpus: int | None = None,
    threads_per_trial: float | None = None,
) -> list[Slot]:
    """The worker slots for a machine.

    Args:
        gpu_ids: the GPUs to use (:func:`visible_gpu_ids`).
        gpus_per_trial: GPUs per trial; below 1 packs ``floor(1 / gpus_per_trial)`` trials on a
            GPU; above 1 must be a whole number; 0 runs on the CPU.
        workers: ``"auto"`` (every GPU slot; 1 on the CPU) or a count.
        n_cpus: CPU cores to split between workers; default ``os.cpu_count()``.
        threads_per_trial: CPU threads for each trial (``execution.cpus_per_trial``, rounded,
            at least 1); default the cores split evenly between workers.

    Raises:
        ConfigError: when the counts cannot be met, naming the keys to change.
    """
    n_cpus = n_cpus or usable_cpus()
    if not gpu_ids or gpus_per_trial == 0:
        count = 1 if workers == "auto" else int(workers)
        threads = _threads(n_cpus, count, threads_per_trial)
        return [Slot(i, (), threads) for i in range(count)]

    groups: list[tuple[str, ...]]  # the GPU ids of each slot
    if gpus_per_trial < 1:
        per_gpu = math.floor(1 / gpus_per_trial + 1e-9)
        groups = [(gpu,) for _ in range(per_gpu) for gpu in gpu_ids]
    else:
        if gpus_per_trial != int(gpus_per_trial):
            raise ConfigError(
                f"execution.gpus_per_trial: {gpus_per_trial} must be below 1 (0.5, 0.25) or a whole number"
            )
        size = int(gpus_per_trial)
        if size > len(gpu_ids):
            raise ConfigError(
                f"execution.gpus_per_trial: {size} GPUs per trial, but only {len(gpu_ids)} visible "
                f"({','.join(gpu_ids)})"
            )
        groups = [tuple(gpu_ids[i : i + size]) for i in range(0, len(gpu_ids) - size + 1, size)]
    count = len(groups) if workers == "auto" else int(workers)
    if count > len(groups):
        raise ConfigError(
            f"execution.workers: {count} workers need {count} GPU slots, but {len(gpu_ids)} GPUs at "
            f"gpus_per_trial {gpus_per_trial:g} give {len(groups)}; lower workers or gpus_per_trial"
        )
    threads = _threads(n_cpus, count, threads_per_trial)
    # Groups list every GPU once before any twice, so fewer workers spread before they pack.
    chosen = groups[:count]
    return [Slot(i, group, threads, chosen.count(group)) for i, group in enumerate(chosen)]


def _threads(n_cpus: int, count: int, threads_per_trial: float | None) -> int:
    if threads_per_trial is not None:
        return max(1, round(threads_per_trial))
    return max(1, n_cpus // count)
