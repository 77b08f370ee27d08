"""A new user's first hour (issue 16): what the command line asked for is what the study keeps and shows."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, fault_sweep, require_postgres, run_cli, write_sweep


def _stored_sweep(folder: Path, name: str) -> dict:
    import optuna

    from orchestrator.study import sweep_record

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'ftsweep.db'}")
    return sweep_record(study)["sweep"]


def test_run_n_trials_and_workers_are_the_budget_the_study_remembers(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("asked", n_trials=5, workers=2))
    result = run_cli(["run", "sweep.yaml", "--n-trials", "2", "--workers", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2/2 trials finished" in result.stderr
    stored = _stored_sweep(tmp_path, "asked")
    assert stored["study"]["n_trials"] == 2 and stored["execution"]["workers"] == 1
    status = run_cli(["status", "asked", "--format", "plain"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "budget 2" in status.stdout and "budget 5" not in status.stdout
    resumed = run_cli(["resume", "asked"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming study 'asked' to 2 trials (the budget stored with the study)" in resumed.stderr
    assert "2/2 trials finished" in resumed.stderr


def test_the_metric_is_named_in_the_study_and_the_trials_value_in_its_mlflow_run(tmp_path: Path) -> None:
    import optuna
    from conftest import mlflow_runs

    sweep = fault_sweep("named", n_trials=1, workers=1, curves={0: [0.2, 0.9, 0.5]})
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'named': 1 trial (0 already finished)" in result.stderr  # not "1 trials"
    study = optuna.load_study(study_name="named", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert study.metric_names == ["score"]
    assert study.trials[0].value == 0.9
    _, children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "named")
    (run,) = children
    # The per-epoch curve ends at the last epoch; the trial's value (its best epoch) has its own name.
    assert run.data.metrics["score"] == 0.5
    assert run.data.metrics["best_score"] == 0.9


def test_the_best_trial_as_a_sweep_file_runs_and_its_yaml_is_a_trainer_params_mapping(tmp_path: Path) -> None:
    import optuna
    import yaml
    from fault_trainer import FaultParams

    write_sweep(tmp_path, fault_sweep("searched", n_trials=3, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    best = optuna.load_study(study_name="searched", storage=storage).best_trial

    shown = run_cli(["best", "searched", "--format", "yaml"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    params = yaml.safe_load(shown.stdout)
    assert params == {"x": best.params["x"]}
    FaultParams.model_validate(params)  # a valid trainer.params mapping for the trainer

    written = run_cli(["best", "searched", "--as-sweep", "best.yaml"], cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "ftsweep run best.yaml" in written.stdout
    again = run_cli(["run", "best.yaml"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (trial,) = optuna.load_study(study_name="searched-best", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == best.value
    # The parameter is fixed, not sampled again: it is the sweep's, and the study searched nothing.
    written_sweep = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert trial.params == {} and written_sweep["trainer"]["params"] == {"x": best.params["x"]}
    refused = run_cli(["best", "searched", "--as-sweep", "best.yaml"], cwd=tmp_path)
    assert refused.returncode == 2 and "exists" in refused.stderr


def _wide_study(url: str) -> None:
    """A study whose trials have long parameter names and values, and a long failure reason."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = optuna.create_study(study_name="wide", storage=url, direction="maximize")
    study.set_user_attr(
        "ftsweep:sweep", {"sweep": {"study": {"metric": "val_f1", "n_trials": 20}}, "base_dir": "/"}
    )
    distributions = {
        "learning_rate": FloatDistribution(1e-6, 1e-3, log=True),
        "weight_decay": FloatDistribution(1e-6, 0.3, log=True),
        "label_smoothing": FloatDistribution(0.0, 0.3),
        "warmup_ratio": FloatDistribution(0.0, 0.3),
        "freeze_layers": IntDistribution(0, 6),
        "regularization": CategoricalDistribution(["none", "l2sp_towards_pretrained", "l1"]),
    }
    for number in range(6):
        failed = number == 3
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    "learning_rate": 6.466123e-05 * (number + 1),
                    "weight_decay": 0.0123456789 / (number + 1),
                    "label_smoothing": 0.1234567,
                    "warmup_ratio": 0.05,
                    "freeze_layers": number,
                    "regularization": ["none", "l2sp_towards_pretrained", "l1"][number % 3],
                },
                distributions=distributions,
                value=None if failed else 0.5 + number / 100,
                state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
                intermediate_values={1: 0.4, 2: 0.5},
                user_attrs={"reason": "RuntimeError: " + "a long message " * 12} if failed else {},
            )
        )


def test_status_at_80_columns_and_in_a_pipe_fits_every_line(tmp_path: Path) -> None:
    _wide_study(f"sqlite:///{tmp_path / 's.db'}")
    for env in ({"COLUMNS": "80"}, {}):  # $COLUMNS = 80, and a pipe with no $COLUMNS at all
        result = run_cli(["status", "wide", "--storage", "sqlite:///s.db"], cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
        assert lines[0] == "study wide"
        assert lines[1].split() == ["trial", "state", "val_f1", "epochs", "duration"]
        # Each trial on a line of its own, its parameters beneath as key=value with short numbers.
        assert lines[2].split()[:4] == ["0", "complete", "0.5000", "2"]
        text = result.stdout
        assert "learning_rate=6.47e-05" in text and "weight_decay=0.0123" in text
        assert "regularization=l2sp_towards_pretrained" in text and "RuntimeError: a long message" in text
        assert "6 trials: 5 complete, 1 fail; budget 20" in text.replace("\n", " ")
    wide = run_cli(["status", "wide", "--storage", "sqlite:///s.db"], cwd=tmp_path, COLUMNS="400")
    assert "│" in wide.stdout  # a terminal wide enough still gets the table, a trial per line


def _active_runs(tracking_uri: str, study_name: str) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    return client.search_runs(experiments, filter_string=f"tags.`ftsweep.study` = '{study_name}'")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_studies_lists_and_delete_removes_a_study_its_folder_and_its_mlflow_runs(
    tmp_path: Path, database: str
) -> None:
    import optuna

    if database == "postgresql":
        require_postgres()
        storage = POSTGRES_URL
    else:
        storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    tag = uuid.uuid4().hex[:6]
    kept, gone = f"kept-{tag}", f"gone-{tag}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in (kept, gone):
        sweep = fault_sweep(name, n_trials=2, workers=1)
        sweep["study"]["storage"] = storage
        write_sweep(tmp_path, sweep, name=f"{name}.yaml")
        assert run_cli(["run", f"{name}.yaml"], cwd=tmp_path).returncode == 0
    try:
        listed = run_cli(["studies", "--storage", storage], cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        lines = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert lines[kept][1] == "2/2" and lines[kept][2] == "score" and lines[gone][1] == "2/2"
        assert _active_runs(tracking, gone)

        asked = run_cli(["delete", gone, "--storage", storage], cwd=tmp_path)  # no terminal to answer
        assert asked.returncode == 2 and "--yes" in asked.stderr
        assert gone in optuna.get_all_study_names(storage)

        deleted = run_cli(["delete", gone, "--storage", storage, "--yes"], cwd=tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        assert gone not in optuna.get_all_study_names(storage) and kept in optuna.get_all_study_names(storage)
        assert (
            _active_runs(tracking, gone) == [] and len(_active_runs(tracking, kept)) == 3
        )  # study + 2 trials
        if database == "sqlite":
            assert (
                not (tmp_path / "ftsweep-runs" / gone).exists()
                and (tmp_path / "ftsweep-runs" / kept).exists()
            )
        listed = run_cli(["studies", "--storage", storage], cwd=tmp_path)
        assert gone not in listed.stdout and kept in listed.stdout
        # The name is free again: a study of that name runs, with an MLflow experiment of its own.
        assert run_cli(["run", f"{gone}.yaml"], cwd=tmp_path).returncode == 0
        assert len(_active_runs(tracking, gone)) == 3
    finally:
        if database == "postgresql":
            for name in (kept, gone):
                if name in optuna.get_all_study_names(storage):
                    optuna.delete_study(study_name=name, storage=storage)
