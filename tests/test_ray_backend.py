"""The ray backend on a real Ray cluster on loopback: two worker nodes, each declaring 2 GPUs."""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import REPO_ROOT, TESTS_DIR, fault_sweep, mlflow_runs, run_cli, write_sweep
from test_resume import process_gone, start_cli, stop, wait_for_epoch, wait_until, waiting_trials

pytestmark = pytest.mark.slow


def start_cluster() -> object:
    """A head with no resources (so trials land on the workers) and two workers with 2 CPUs and 2 GPUs."""
    from ray.cluster_utils import Cluster

    # Ray's worker processes inherit the raylets' environment: the tests' own trainer must import.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


def ray_sweep(name: str, address: str | None, n_trials: int, **trainer: object) -> dict:
    sweep = fault_sweep(name, n_trials=n_trials, workers=1, **trainer)
    sweep["execution"] = {
        "backend": "ray",
        "ray_address": address,
        "gpus_per_trial": 0.5,
        "max_concurrent_trials": 8,
    }
    return sweep


def storage_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ftsweep.db'}"


def device_of(trial: optuna.trial.FrozenTrial) -> tuple[str, str]:
    node, _, gpus = trial.user_attrs["device"].partition(" CUDA_VISIBLE_DEVICES=")
    return node, gpus


def test_eight_trials_on_two_nodes_pack_two_per_gpu(tmp_path: Path, cluster: object) -> None:
    record, release = tmp_path / "where.jsonl", tmp_path / "release"
    write_sweep(
        tmp_path,
        ray_sweep(
            "packed",
            cluster.address,
            n_trials=8,
            epochs=2,
            sleep_seconds=0.5,
            record_file=str(record),
            release_file=str(release),
        ),
    )
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    try:
        # Trials wait before their first epoch until the cluster is full (2 nodes x 2 CPUs, one CPU a
        # trial): then both nodes hold trials however Ray placed them, and slow machines cannot make
        # one node run them all in turn.
        logs = tmp_path / "ftsweep-runs" / "packed" / "logs"
        wait_until(lambda: len(waiting_trials(logs)) >= 4, "four trials to run at once", [driver])
        release.touch()
        _, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr
    finally:
        stop([driver])

    study = optuna.load_study(study_name="packed", storage=storage_of(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8
    for trial in study.trials:
        assert device_of(trial)[1] in ("0", "1"), trial.user_attrs["device"]  # one GPU each
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(run["trial"] for run in runs) == list(range(8))
    slots: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        slots[(run["node"], run["gpus"])].append((run["start"], run["end"]))
    assert len({node for node, _ in slots}) == 2  # both nodes ran trials
    for intervals in slots.values():  # never more than two trials on one GPU at once
        for start, _ in intervals:
            assert sum(1 for s, e in intervals if s <= start < e) <= 2

    parents, children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "packed")
    assert len(parents) == 1 and len(children) == 8
    assert all("CUDA_VISIBLE_DEVICES=" in run.data.tags["ftsweep.device"] for run in children)


def test_kill_the_ray_driver_then_resume_to_the_exact_budget(tmp_path: Path, cluster: object) -> None:
    # Every trial waits after its first epoch until released: the driver dies with trial 1 (at least)
    # past epoch 1 and no trial finished, however slowly the machine runs.
    release = str(tmp_path / "release")
    write_sweep(
        tmp_path,
        ray_sweep("driver-killed", cluster.address, n_trials=4, release_file=release, pause_before_epoch=2),
    )
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_for_epoch(storage_of(tmp_path), "driver-killed", trial_number=1, epoch=1, process=driver)
    logs = tmp_path / "ftsweep-runs" / "driver-killed" / "logs"
    wait_until(lambda: 1 in waiting_trials(logs), "trial 1 to wait before epoch 2", [driver])
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    # Ray ends a dead driver's trials; wait until it has, so that none writes beside its re-run.
    pids = waiting_trials(logs).values()
    all_gone = lambda: all(process_gone(pid) for pid in pids)  # noqa: E731
    wait_until(all_gone, "Ray to end the killed driver's trials", [], timeout=120)
    (tmp_path / "release").touch()

    result = run_cli(["resume", "driver-killed"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="driver-killed", storage=storage_of(tmp_path))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert all(t.user_attrs.get("interrupted") for t in study.trials if t.state.name == "FAIL")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    for trial in complete:
        assert sorted(trial.intermediate_values) == [1, 2, 3]
    reruns = [t for t in complete if t.user_attrs.get("rerun_of") is not None]
    assert reruns  # the trials in flight were re-run ...
    trained = [t for t in reruns if study.trials[t.user_attrs["rerun_of"]].intermediate_values]
    assert trained  # (trial 1 had finished an epoch; Tune may also have asked for trials it had not started)
    for rerun in trained:  # ... from their checkpoints, not from scratch
        log = (tmp_path / "ftsweep-runs" / "driver-killed" / "logs" / f"trial-{rerun.number}.log").read_text()
        assert "resuming after epoch" in log


def test_same_seed_same_trials_on_both_backends(tmp_path: Path, cluster: object) -> None:
    local = fault_sweep("same", n_trials=3, workers=1, epochs=1)
    write_sweep(tmp_path / "local", local)
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path / "local").returncode == 0
    on_ray = fault_sweep("same", n_trials=3, workers=1, epochs=1)
    on_ray["execution"] = {"backend": "ray", "ray_address": cluster.address, "max_concurrent_trials": 1}
    write_sweep(tmp_path / "ray", on_ray)
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path / "ray").returncode == 0
    first = optuna.load_study(study_name="same", storage=storage_of(tmp_path / "local"))
    second = optuna.load_study(study_name="same", storage=storage_of(tmp_path / "ray"))
    assert [t.params for t in first.trials] == [t.params for t in second.trials]


def test_a_study_begun_locally_continues_on_ray_and_back(tmp_path: Path, cluster: object) -> None:
    write_sweep(tmp_path, fault_sweep("hopping", n_trials=2, workers=1, epochs=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    on_ray = run_cli(
        ["resume", "hopping", "--n-trials", "4", "--backend", "ray", "--ray-address", cluster.address],
        cwd=tmp_path,
    )
    assert on_ray.returncode == 0, on_ray.stderr
    back = run_cli(["resume", "hopping", "--n-trials", "5", "--backend", "local"], cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    study = optuna.load_study(study_name="hopping", storage=storage_of(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert [t.user_attrs["device"].startswith("node ") for t in study.trials] == [
        False,
        False,
        True,
        True,
        False,
    ]


def test_a_dead_node_reruns_its_trial_from_the_checkpoint_on_the_other_node(tmp_path: Path) -> None:
    cluster = start_cluster()
    try:
        # The trial waits after its first epoch until released, so the node dies while it is past epoch 1
        # and not finished, however slowly the machine runs; its re-run resumes and is not held.
        release = tmp_path / "release"
        write_sweep(
            tmp_path,
            ray_sweep(
                "node-lost", cluster.address, n_trials=1, release_file=str(release), pause_before_epoch=2
            ),
        )
        driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
        wait_for_epoch(storage_of(tmp_path), "node-lost", trial_number=0, epoch=1, process=driver)
        logs = tmp_path / "ftsweep-runs" / "node-lost" / "logs"
        wait_until(lambda: 0 in waiting_trials(logs), "trial 0 to wait before epoch 2", [driver])
        pid = waiting_trials(logs)[0]
        study = optuna.load_study(study_name="node-lost", storage=storage_of(tmp_path))
        node_prefix = device_of(study.trials[0])[0].removeprefix("node ")
        victim = next(node for node in cluster.list_all_nodes() if node.node_id.startswith(node_prefix))
        cluster.remove_node(victim, allow_graceful=False)  # kills the node's raylet and its workers
        wait_until(lambda: process_gone(pid), "the lost node's trial process to end", [driver], timeout=120)
        release.touch()

        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr
        trial = optuna.load_study(study_name="node-lost", storage=storage_of(tmp_path)).trials[0]
        assert trial.state.name == "COMPLETE"
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        assert device_of(trial)[0] != f"node {node_prefix}"  # it finished on the other node
        log = (tmp_path / "ftsweep-runs" / "node-lost" / "logs" / "trial-0.log").read_text()
        assert "resuming after epoch" in log
        assert log.count("epoch 1 starts") == 1
    finally:
        cluster.shutdown()


def test_asha_on_ray_sees_the_running_best_so_an_early_peak_survives(tmp_path: Path, cluster: object) -> None:
    """Ray's ASHA (and the study's own successive-halving pruner beside it) is shown a trial's best epoch so
    far. Trial 2 peaks at epoch 1 (0.7) and falls to 0.4 at epoch 2, below the others' 0.55: shown its
    current value, either stops it."""
    curves = {0: [0.5, 0.55, 0.6], 1: [0.5, 0.55, 0.6], 2: [0.7, 0.4, 0.3]}
    sweep = fault_sweep("asha-peak", n_trials=3, workers=1, epochs=3, curves=curves)
    sweep["study"]["pruner"] = {"name": "asha", "reduction_factor": 2, "min_resource": 1}
    sweep["execution"] = {"backend": "ray", "ray_address": cluster.address, "max_concurrent_trials": 1}
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="asha-peak", storage=storage_of(tmp_path)).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[2].value == pytest.approx(0.7)
