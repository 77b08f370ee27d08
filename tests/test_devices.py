"""GPU discovery and worker slots: CPU, whole GPUs, shared GPUs, multi-GPU trials."""

from __future__ import annotations

import pytest

from orchestrator import devices
from orchestrator.devices import Slot, plan_slots, visible_gpu_ids
from orchestrator.errors import ConfigError


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Inject a GPU count the way the tests and unusual machines do."""

    def inject(count: int) -> list[str]:
        monkeypatch.setenv("FTSWEEP_GPU_COUNT", str(count))
        return visible_gpu_ids()

    return inject


# --- CPU -----------------------------------------------------------------------------------------


def test_cpu_auto_is_one_worker_with_every_thread() -> None:
    slots = plan_slots([], gpus_per_trial=1, workers="auto", n_cpus=8)

    assert slots == [Slot(0, (), 8)]
    assert slots[0].device == "cpu"
    assert slots[0].label == "cpu (8 threads)"
    assert slots[0].environment() == {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "8",
        "MKL_NUM_THREADS": "8",
    }


def test_cpu_workers_split_the_threads() -> None:
    slots = plan_slots([], gpus_per_trial=1, workers=2, n_cpus=8)

    assert [slot.index for slot in slots] == [0, 1]
    assert all(slot.gpu_ids == () and slot.n_threads == 4 for slot in slots)


def test_cpu_threads_never_drop_below_one() -> None:
    slots = plan_slots([], gpus_per_trial=1, workers=3, n_cpus=2)

    assert [slot.n_threads for slot in slots] == [1, 1, 1]


def test_cpus_per_trial_sets_each_trials_threads(gpus, tmp_path) -> None:
    from orchestrator.config import load_sweep
    from orchestrator.runner import worker_slots

    assert [slot.n_threads for slot in plan_slots([], 1, workers=2, n_cpus=8, threads_per_trial=1)] == [1, 1]
    assert [slot.n_threads for slot in plan_slots(gpus(2), 1, workers=2, n_cpus=8, threads_per_trial=3)] == [
        3,
        3,
    ]
    assert plan_slots([], 1, n_cpus=8, threads_per_trial=0.4)[0].n_threads == 1
    (tmp_path / "sweep.yaml").write_text(
        "study: {name: s, metric: score, n_trials: 2}\n"
        "trainer: {name: noop}\n"
        "search_space: {x: {type: float, low: 0, high: 1}}\n"
        "execution: {workers: 2, cpus_per_trial: 1}\n"
    )
    assert [slot.n_threads for slot in worker_slots(load_sweep(tmp_path / "sweep.yaml"), None)] == [1, 1]


def test_cpu_count_defaults_to_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "usable_cpus", lambda: 6)

    assert plan_slots([], gpus_per_trial=0)[0].n_threads == 6


def test_gpus_per_trial_zero_runs_on_the_cpu_even_with_gpus(gpus) -> None:
    slots = plan_slots(gpus(2), gpus_per_trial=0, workers=2, n_cpus=8)

    assert [slot.gpu_ids for slot in slots] == [(), ()]
    assert [slot.device for slot in slots] == ["cpu", "cpu"]
    assert slots[0].environment()["CUDA_VISIBLE_DEVICES"] == ""


def test_zero_injected_gpus_means_the_cpu(gpus) -> None:
    assert plan_slots(gpus(0), gpus_per_trial=1, n_cpus=4) == [Slot(0, (), 4)]


# --- GPUs ----------------------------------------------------------------------------------------


def test_one_gpu_per_trial_on_two_gpus(gpus) -> None:
    slots = plan_slots(gpus(2), gpus_per_trial=1, workers="auto", n_cpus=8)

    assert [slot.gpu_ids for slot in slots] == [("0",), ("1",)]
    assert [slot.environment()["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "1"]
    assert all(slot.share == 1 and slot.n_threads == 4 and slot.device == "cuda" for slot in slots)
    assert slots[0].label == "gpu 0"


def test_half_a_gpu_per_trial_packs_two_trials_on_each_gpu(gpus) -> None:
    slots = plan_slots(gpus(2), gpus_per_trial=0.5, workers="auto", n_cpus=8)

    assert len(slots) == 4
    assert [slot.index for slot in slots] == [0, 1, 2, 3]
    assert sorted(slot.gpu_ids for slot in slots) == [("0",), ("0",), ("1",), ("1",)]
    assert all(slot.share == 2 and slot.n_threads == 2 for slot in slots)
    assert sorted(slot.environment()["CUDA_VISIBLE_DEVICES"] for slot in slots) == ["0", "0", "1", "1"]
    assert slots[0].label == f"gpu {slots[0].gpu_ids[0]}, shared by 2"


def test_half_a_gpu_with_two_workers_spreads_over_both_gpus_first(gpus) -> None:
    slots = plan_slots(gpus(2), gpus_per_trial=0.5, workers=2, n_cpus=8)

    assert [slot.gpu_ids for slot in slots] == [("0",), ("1",)]
    assert all(slot.share == 1 for slot in slots)


def test_half_a_gpu_with_three_workers_shares_only_one_gpu(gpus) -> None:
    slots = plan_slots(gpus(2), gpus_per_trial=0.5, workers=3, n_cpus=9)

    assert [(slot.gpu_ids, slot.share) for slot in slots] == [(("0",), 2), (("1",), 1), (("0",), 2)]


def test_a_quarter_gpu_packs_four(gpus) -> None:
    slots = plan_slots(gpus(1), gpus_per_trial=0.25, n_cpus=8)

    assert [slot.gpu_ids for slot in slots] == [("0",)] * 4
    assert all(slot.share == 4 for slot in slots)


def test_two_gpus_per_trial_on_four_gpus(gpus) -> None:
    slots = plan_slots(gpus(4), gpus_per_trial=2, workers="auto", n_cpus=8)

    assert [slot.gpu_ids for slot in slots] == [("0", "1"), ("2", "3")]
    assert [slot.environment()["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0,1", "2,3"]
    assert slots[1].label == "gpu 2,3"


def test_slots_keep_the_visible_gpu_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTSWEEP_GPU_COUNT", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")

    slots = plan_slots(visible_gpu_ids(), gpus_per_trial=1, n_cpus=4)

    assert [slot.environment()["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["2", "3"]


# --- Counts that cannot be met -------------------------------------------------------------------


def test_more_workers_than_gpu_slots(gpus) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_slots(gpus(2), gpus_per_trial=1, workers=3, n_cpus=8)

    assert str(caught.value) == (
        "execution.workers: 3 workers need 3 GPU slots, but 2 GPUs at gpus_per_trial 1 give 2; "
        "lower workers or gpus_per_trial"
    )


def test_more_workers_than_shared_gpu_slots(gpus) -> None:
    with pytest.raises(ConfigError, match=r"^execution\.workers: 5 workers .* gpus_per_trial 0\.5 give 4"):
        plan_slots(gpus(2), gpus_per_trial=0.5, workers=5, n_cpus=8)


def test_fractional_gpus_above_one(gpus) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_slots(gpus(4), gpus_per_trial=1.5, n_cpus=8)

    assert str(caught.value) == "execution.gpus_per_trial: 1.5 must be below 1 (0.5, 0.25) or a whole number"


def test_more_gpus_per_trial_than_visible(gpus) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_slots(gpus(1), gpus_per_trial=2, n_cpus=8)

    assert str(caught.value) == "execution.gpus_per_trial: 2 GPUs per trial, but only 1 visible (0)"


# --- visible_gpu_ids -----------------------------------------------------------------------------


@pytest.fixture
def no_physical_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never ask nvidia-smi: the answer must come from the environment."""
    monkeypatch.delenv("FTSWEEP_GPU_COUNT", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_count_physical_gpus", lambda: 0)


@pytest.mark.usefixtures("no_physical_gpus")
@pytest.mark.parametrize(("count", "ids"), [("0", []), ("1", ["0"]), ("3", ["0", "1", "2"])])
def test_injected_gpu_count(monkeypatch: pytest.MonkeyPatch, count: str, ids: list[str]) -> None:
    monkeypatch.setenv("FTSWEEP_GPU_COUNT", count)

    assert visible_gpu_ids() == ids


@pytest.mark.usefixtures("no_physical_gpus")
def test_injected_gpu_count_wins_over_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTSWEEP_GPU_COUNT", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")

    assert visible_gpu_ids() == ["0", "1"]


@pytest.mark.usefixtures("no_physical_gpus")
def test_blank_injected_count_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTSWEEP_GPU_COUNT", " ")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    assert visible_gpu_ids() == ["1"]


@pytest.mark.usefixtures("no_physical_gpus")
@pytest.mark.parametrize(
    ("visible", "ids"),
    [("", []), ("-1", []), ("2,3", ["2", "3"]), (" 0 , 1 ", ["0", "1"]), ("0,", ["0"])],
)
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str, ids: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    assert visible_gpu_ids() == ids


def test_without_either_variable_the_physical_gpus_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTSWEEP_GPU_COUNT", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_count_physical_gpus", lambda: 2)

    assert visible_gpu_ids() == ["0", "1"]
