"""Several objectives (issue 14): ``study.metric: [val_f1, generalization_gap]`` with
``study.direction: [maximize, minimize]`` makes a multi-objective study (NSGA-II by default), run
without pruning (said once), whose ``status`` marks the Pareto front, whose ``best`` prints it, whose
``final`` asks for one of its trials, and whose mistakes stop planning with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_sweep

STUDY = "tradeoff"
PRUNING_NOTE = "no trial is pruned"


def two_objective_sweep(n_trials: int = 6, **study: object) -> dict:
    """The tests' GapTrainer (train/val metrics, instantly): validation F1 against the generalization gap."""
    return {
        "study": {
            "name": STUDY,
            "metric": ["val_f1", "generalization_gap"],
            "direction": ["maximize", "minimize"],
            "n_trials": n_trials,
            "sampler": {"seed": 0},
            "pruner": {"name": "median"},
            **study,
        },
        "trainer": {"name": "report_trainer:GapTrainer", "epochs": 3},
        "search_space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        "execution": {"workers": 2},
        "tracking": {"enabled": False},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished two-objective sweep: its folder and what `ftsweep run` printed."""
    folder = tmp_path_factory.mktemp("multi")
    write_sweep(folder, two_objective_sweep())
    result = run_cli(["run", "sweep.yaml"], cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, result.stdout + result.stderr


def load(folder: Path):  # noqa: ANN201
    import optuna

    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'ftsweep.db'}")


def test_every_trial_stores_one_value_per_objective_taken_at_its_best_epoch(finished) -> None:
    from report_trainer import GapParams, gap_metrics

    folder, _ = finished
    study = load(folder)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_f1", "generalization_gap"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    for trial in complete:
        assert len(trial.values) == 2
        # Both values come from one epoch: the one best on the first metric (val_f1).
        params = GapParams(**{**trial.params, "epochs": 3})
        epochs = {epoch: gap_metrics(params, epoch) for epoch in (1, 2, 3)}
        chosen = trial.user_attrs["best_epoch"]
        assert trial.values[0] == pytest.approx(max(m["val_f1"] for m in epochs.values()))
        assert trial.values == pytest.approx([epochs[chosen]["val_f1"], epochs[chosen]["generalization_gap"]])


def test_the_run_says_once_that_it_does_not_prune(finished) -> None:
    folder, printed = finished
    assert printed.count(PRUNING_NOTE) == 1, printed
    from orchestrator.report import pareto_front

    front = ", ".join(str(t.number) for t in pareto_front(load(folder)))
    assert f"Pareto front: trials {front}" in printed


def test_best_prints_the_pareto_front(finished) -> None:
    import json

    from orchestrator.report import pareto_front

    folder, _ = finished
    front = [t.number for t in pareto_front(load(folder))]
    assert front
    table = run_cli(["best", STUDY], cwd=folder)
    assert table.returncode == 0, table.stderr
    assert "Pareto front of val_f1 (maximize), generalization_gap (minimize)" in table.stdout
    rows = [line.split()[0] for line in table.stdout.splitlines()[2:] if line.startswith("  ")]
    assert rows == [str(number) for number in front]
    as_json = run_cli(["best", STUDY, "--format", "json"], cwd=folder)
    assert [point["trial"] for point in json.loads(as_json.stdout)["front"]] == front
    as_yaml = run_cli(["best", STUDY, "--format", "yaml"], cwd=folder)
    assert as_yaml.returncode == 0 and f"trial {front[0]}:" in as_yaml.stdout


def test_best_as_sweep_asks_for_a_trial_of_the_front(finished, tmp_path: Path) -> None:
    folder, _ = finished
    result = run_cli(["best", STUDY, "--as-sweep", str(tmp_path / "best.yaml")], cwd=folder)
    assert result.returncode == 2
    assert "has several objectives and no one best trial; its Pareto front is trials" in result.stderr
    assert not (tmp_path / "best.yaml").exists()


def test_status_marks_the_pareto_front(finished) -> None:
    from orchestrator.report import pareto_front

    folder, _ = finished
    front = [t.number for t in pareto_front(load(folder))]
    result = run_cli(["status", STUDY], cwd=folder, COLUMNS="80")
    assert result.returncode == 0, result.stderr
    assert f"Pareto front (*) of val_f1 / generalization_gap: trials {', '.join(map(str, front))}" in (
        " ".join(result.stdout.split())
    )
    marked = [
        int(line.split()[0])
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0].isdigit() and " * " in f" {line} "
    ]
    assert marked == front


def test_final_without_a_trial_lists_the_front(finished) -> None:
    from orchestrator.report import pareto_front

    folder, _ = finished
    front = ", ".join(str(t.number) for t in pareto_front(load(folder)))
    result = run_cli(["final", STUDY], cwd=folder)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--trial N (front: trials {front})" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ({"direction": ["maximize"]}, "study.direction: 1 direction(s) for 2 metric(s)"),
        ({"direction": ["maximize", "upward"]}, "study.direction: ['maximize', 'upward']: each direction"),
        ({"metric": ["val_f1", "latency"]}, "study.metric: 'latency' is not a metric the trainer"),
        ({"metric": ["val_f1", "val_f1"]}, "study.metric: ['val_f1', 'val_f1'] names a metric twice"),
    ],
)
def test_a_bad_list_stops_planning_with_one_line(tmp_path: Path, study: dict, expected: str) -> None:
    write_sweep(tmp_path, two_objective_sweep(**study))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ftsweep.db").exists()


@pytest.mark.slow
def test_ray_runs_several_objectives_without_asha(tmp_path: Path) -> None:
    sweep = two_objective_sweep(n_trials=3, pruner={"name": "asha"})
    sweep["execution"] = {
        "backend": "ray",
        "gpus_per_trial": 0,
        "cpus_per_trial": 1,
        "max_concurrent_trials": 2,
    }
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count(PRUNING_NOTE) == 1
    complete = [t for t in load(tmp_path).trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)


def test_the_report_draws_the_front(finished) -> None:
    folder, _ = finished
    result = run_cli(["report", STUDY, "--out", str(folder / "report.html")], cwd=folder)
    assert result.returncode == 0, result.stderr
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "Pareto front" in html
    assert "the Pareto front figure draws val_f1 against generalization_gap" in html
    png = folder / "report-figures" / "02-pareto.png"
    assert png.exists() and png.stat().st_size > 5_000


def test_nsga2_by_default_and_tpe_on_request(tmp_path: Path) -> None:
    import optuna

    from orchestrator.config import validate_sweep
    from orchestrator.study import make_pruner, make_sampler

    sweep = validate_sweep(two_objective_sweep(), tmp_path, "sweep.yaml")
    assert sweep.metrics == ("val_f1", "generalization_gap") and sweep.study.metric == "val_f1"
    assert isinstance(make_sampler(sweep, None, 1), optuna.samplers.NSGAIISampler)  # type: ignore[arg-type]
    assert isinstance(make_pruner(sweep, 3), optuna.pruners.NopPruner)
    asked = validate_sweep(two_objective_sweep(sampler={"name": "tpe", "seed": 0}), tmp_path, "sweep.yaml")
    assert isinstance(make_sampler(asked, None, 1), optuna.samplers.TPESampler)  # type: ignore[arg-type]


def test_a_warm_start_from_a_study_of_the_same_objectives_brings_both_values(finished) -> None:
    folder, _ = finished
    sweep = two_objective_sweep(n_trials=1, name="tradeoff-2", warm_start={"study": STUDY})
    write_sweep(folder, sweep, "again.yaml")
    result = run_cli(["run", "again.yaml"], cwd=folder)
    assert result.returncode == 0, result.stderr
    import optuna

    again = optuna.load_study(study_name="tradeoff-2", storage=f"sqlite:///{folder / 'ftsweep.db'}")
    earlier = {tuple(t.values) for t in load(folder).trials}
    warm = [t for t in again.trials if t.user_attrs.get("warm_start")]
    assert len(warm) == 6 and {tuple(t.values) for t in warm} == earlier


def test_the_mlflow_parent_run_names_every_objective(tmp_path: Path) -> None:
    from conftest import mlflow_runs

    sweep = two_objective_sweep(n_trials=2)
    sweep["tracking"] = {"enabled": True}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (parent,), children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", STUDY)
    assert parent.data.params["metric"] == "val_f1, generalization_gap"
    assert parent.data.params["direction"] == "maximize, minimize"
    assert len(children) == 2
    # The report reads the same MLflow runs and logs itself to the parent run.
    report = run_cli(["report", STUDY], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    (parent,), _, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", STUDY)
    assert "report/report.html" in [item.path for item in client.list_artifacts(parent.info.run_id, "report")]
