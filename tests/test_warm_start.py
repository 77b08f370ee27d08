"""Known configurations first (`study.enqueue`) and a head start from an earlier study (`study.warm_start`).

Both happen once, when `ftsweep run` creates the study: a crash and a resume neither run an enqueued
configuration twice nor add the earlier trials again.
"""

from __future__ import annotations

import signal
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import POSTGRES_URL, fault_sweep, require_postgres, run_cli, write_sweep
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from test_cli import assert_user_error
from test_resume import process_gone, start_cli, stop, wait_for_epoch, wait_until

from orchestrator.config import load_sweep
from orchestrator.errors import ConfigError
from orchestrator.first_trials import PRESET_ATTR, enqueue_first_trials, first_trials
from orchestrator.plan import plan_sweep
from orchestrator.study import sweep_for_store

#: The earlier study's trials: (x, y, score). Its space was x in -5..5 and y in 0..1; the new one
#: searches x in -2..3 only, so y is left out of every trial and the trial with x = 4 has nothing left.
EARLIER = [(0.5, 0.1, 0.9), (1.0, 0.2, 0.8), (4.0, 0.3, 0.95), (-1.0, 0.4, 0.1)]


def make_earlier_study(name: str, storage: str, direction: str = "maximize") -> None:
    """An earlier study as `ftsweep run` leaves it: complete trials with values and learning curves."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["score"])
    distributions = {"x": FloatDistribution(-5.0, 5.0), "y": FloatDistribution(0.0, 1.0)}
    for x, y, score in EARLIER:
        study.add_trial(
            create_trial(
                params={"x": x, "y": y},
                distributions=distributions,
                value=score,
                intermediate_values={1: score / 2, 2: score},
            )
        )


def warm_sweep(name: str, warm_start: dict, n_trials: int = 1) -> dict:
    sweep = fault_sweep(name, n_trials=n_trials, workers=1, epochs=1)
    sweep["study"]["warm_start"] = warm_start
    sweep["tracking"] = {"enabled": False}
    return sweep


def warm_started(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [trial for trial in study.trials if trial.user_attrs.get("warm_start")]


# -- study.enqueue ------------------------------------------------------------------------------------


def test_bad_enqueue_entries_name_the_entry_and_key_and_create_nothing(tmp_path: Path) -> None:
    sweep = fault_sweep("bad-enqueue", n_trials=1, workers=1)
    sweep["study"]["enqueue"] = [{"x": 9.0}, {"z": 1}, {"epochs": 2}, {"x": 0.5}, {"x": 0.5}]
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert_user_error(
        result,
        "sweep.yaml: ",
        "study.enqueue[0].x: 9.0 is outside -2..3 (search_space.x)",
        "study.enqueue[1].z: not a parameter of the search space; searched: x",
        "study.enqueue[2].epochs: fixed to 3 by the sweep file, not searched",
        "study.enqueue[4]: the same configuration as study.enqueue[3]",
    )
    assert not (tmp_path / "ftsweep.db").exists()


def test_an_enqueue_entry_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    sweep = fault_sweep("not-a-mapping")
    sweep["study"]["enqueue"] = [{"x": 1.0}, "x=1"]
    with pytest.raises(ConfigError) as error:
        load_sweep(write_sweep(tmp_path, sweep))
    assert error.value.problems == [
        "study.enqueue: entry [1] is 'x=1', not a mapping of parameter to value such as "
        "{learning_rate: 2.0e-5, weight_decay: 0.01}"
    ]


def test_the_users_configurations_come_before_the_presets_and_none_twice(tmp_path: Path) -> None:
    sweep = fault_sweep("order")
    sweep["trainer"]["name"] = "fault_trainer:PresetFaultTrainer"  # presets: default (x = 0), far (x = 2.5)
    sweep["study"]["enqueue"] = [{"x": 2.5}, {"x": 1}]
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    study = optuna.create_study(direction="maximize")

    # "far" is the user's first entry already: it is queued once, under the user's name.
    assert enqueue_first_trials(study, plan) == ["study.enqueue[0]", "study.enqueue[1]", "default"]
    asked = [study.ask() for _ in range(3)]
    assert [plan.space.suggest(trial)["x"] for trial in asked] == [2.5, 1.0, 0.0]
    assert [trial.user_attrs[PRESET_ATTR] for trial in asked] == [
        "study.enqueue[0]",
        "study.enqueue[1]",
        "default",
    ]


@pytest.mark.slow
def test_the_enqueued_config_runs_first_and_once_across_a_sigkill_and_resume(tmp_path: Path) -> None:
    """Trial 0 (the enqueued x = 1.5) reports epoch 1 and waits; the driver is killed; resume finishes."""
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    sweep = fault_sweep(
        "enqueued",
        n_trials=2,
        workers=1,
        epochs=2,
        release_file=str(tmp_path / "release"),
        pause_trials=[0],
        pause_before_epoch=2,
    )
    sweep["study"]["enqueue"] = [{"x": 1.5}]
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    try:
        wait_for_epoch(storage, "enqueued", trial_number=0, epoch=1, process=driver)
        trial_pid = int((tmp_path / "ftsweep-runs" / "enqueued" / "logs" / "trial-0.pid").read_text())
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        wait_until(lambda: process_gone(trial_pid), "the trial process to die with its driver", [], 120)
    finally:
        stop([driver])
    (tmp_path / "release").touch()

    result = run_cli(["resume", "enqueued"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="enqueued", storage=storage).trials
    assert trials[0].params == {"x": 1.5} and trials[0].user_attrs[PRESET_ATTR] == "study.enqueue[0]"
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["interrupted"]
    runs_of_it = [trial for trial in trials if trial.params == {"x": 1.5}]
    assert [trial.state.name for trial in runs_of_it] == ["FAIL", "COMPLETE"]
    assert runs_of_it[1].user_attrs["rerun_of"] == 0
    assert sum(1 for trial in trials if trial.state.name == "COMPLETE") == 2
    assert not [trial for trial in trials if trial.state.name in ("RUNNING", "WAITING")]


# -- study.warm_start ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_warm_started_study_starts_from_the_earlier_trials_once(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    make_earlier_study("earlier", f"sqlite:///{tmp_path / 'earlier.db'}")
    write_sweep(tmp_path, warm_sweep("warm", {"study": "earlier", "storage": "${EARLIER_DB}", "top_k": 3}))
    earlier_db = f"sqlite:///{tmp_path / 'earlier.db'}"

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path, EARLIER_DB=earlier_db)
    assert result.returncode == 0, result.stderr
    # What could not come along is named, parameter and trial.
    assert "warm start: y is not searched in this study; left out of trials 0, 1, 2 of study 'earlier'" in (
        result.stderr
    )
    assert "trial 2 of study 'earlier': x: 4.0 is outside -2..3 in this search space" in result.stderr
    assert "trial 2 of study 'earlier' has no parameter this search space takes; not added" in result.stderr

    study = optuna.load_study(study_name="warm", storage=storage)
    # The best three: 0.95 (nothing fits: not added), 0.9 and 0.8, with their learning curves.
    warm = warm_started(study)
    assert [(trial.params, trial.value) for trial in warm] == [({"x": 0.5}, 0.9), ({"x": 1.0}, 0.8)]
    assert [trial.intermediate_values for trial in warm] == [{1: 0.45, 2: 0.9}, {1: 0.4, 2: 0.8}]
    assert [trial.user_attrs["warm_start"] for trial in warm] == [
        {"study": "earlier", "trial": 0},
        {"study": "earlier", "trial": 1},
    ]
    # What the sampler sees: every complete trial, the earlier ones first; the budget counted only its own.
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == 3 and len(complete) == 3
    assert [trial.value for trial in complete[:2]] == [0.9, 0.8]
    assert not complete[2].user_attrs.get("warm_start")

    # ftsweep's best is the best trial this study ran, although the earlier ones scored higher.
    best = run_cli(["best", "warm"], cwd=tmp_path)
    assert best.returncode == 0 and "best trial 2," in best.stdout, best.stdout

    status = run_cli(["status", "warm"], cwd=tmp_path)
    assert status.returncode == 0 and "warm start: trial 0 of study 'earlier'" in status.stdout
    # Counted apart from this study's own trials, and never its best.
    assert "3 trials: 1 complete, 2 warm-started; budget 1; best score" in status.stdout, status.stdout
    assert "(trial 2)" in status.stdout
    listed = run_cli(["studies"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.split()[:1] == ["warm"]]
    assert "1/1" in row and "0.9" not in row, listed.stdout

    refused = run_cli(["final", "warm", "--trial", "0"], cwd=tmp_path)
    assert_user_error(refused, "trial 0 of study 'warm' came from study.warm_start", "--trial (its best: 2)")

    # A resume adds nothing again, and runs its own trials to the new budget.
    resumed = run_cli(["resume", "warm", "--n-trials", "2"], cwd=tmp_path, EARLIER_DB=earlier_db)
    assert resumed.returncode == 0, resumed.stderr
    assert "warm start" not in resumed.stderr
    study = optuna.load_study(study_name="warm", storage=storage)
    assert len(warm_started(study)) == 2
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 4


def test_the_earlier_study_must_exist_and_optimize_the_same_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default storage, sqlite:///ftsweep.db, is in the working directory
    make_earlier_study("minimized", f"sqlite:///{tmp_path / 'ftsweep.db'}", direction="minimize")

    sweep = warm_sweep("w", {"study": "nope"})  # left out, the storage is this study's own
    with pytest.raises(ConfigError) as error:
        plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    assert error.value.problems[0].startswith("study.warm_start.study: no study 'nope' in sqlite:///")
    assert error.value.problems[0].endswith("; studies there: minimized")

    sweep = warm_sweep("w", {"study": "minimized"})
    with pytest.raises(ConfigError) as error:
        plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    assert error.value.problems == [
        "study.warm_start.study: study 'minimized' was to minimize its values, this study is to maximize "
        "score; its values would mislead the sampler: warm-start from a study of the same metric"
    ]


def test_the_earlier_studys_password_is_never_shown_nor_stored(tmp_path: Path) -> None:
    url = "postgresql+psycopg://someone:pw-not-shown@127.0.0.1:1/nowhere"  # nothing listens on port 1
    sweep = load_sweep(write_sweep(tmp_path, warm_sweep("w", {"study": "earlier", "storage": url})))
    assert "pw-not-shown" not in str(sweep_for_store(sweep).raw)

    with pytest.raises(ConfigError) as error:
        plan_sweep(sweep)
    assert error.value.problems[0].startswith(
        "study.warm_start.storage: storage postgresql+psycopg://someone:***@"
    )
    assert "pw-not-shown" not in str(error.value)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_warm_start_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    earlier, name = f"earlier-{uuid.uuid4().hex[:8]}", f"warm-{uuid.uuid4().hex[:8]}"
    make_earlier_study(earlier, POSTGRES_URL)
    sweep = warm_sweep(name, {"study": earlier, "top_k": 2})
    sweep["study"]["storage"] = POSTGRES_URL
    write_sweep(tmp_path, sweep)
    try:
        result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        # The best two: 0.95 has no parameter left (not added), then 0.9.
        assert [(trial.params, trial.value) for trial in warm_started(study)] == [({"x": 0.5}, 0.9)]
        assert len(study.trials) == 2 and study.trials[1].state.name == "COMPLETE"
        resumed = run_cli(["resume", name, "--storage", POSTGRES_URL, "--n-trials", "2"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert len(warm_started(study)) == 1 and len(study.trials) == 3
    finally:
        for study_name in (earlier, name):
            try:
                optuna.delete_study(study_name=study_name, storage=POSTGRES_URL)
            except KeyError:
                pass


def test_the_readme_example_plans_with_the_text_trainer(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Known configurations and warm starts", 1)[1]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    sweep = {
        "study": {"name": "readme", "enqueue": example["study"]["enqueue"]},
        "trainer": {
            "model": str(tiny_model),
            "data": {"train": str(toy_data["train"]), "validation": str(toy_data["validation"])},
        },
        "search_space": "regularization",
    }
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    first = first_trials(plan)
    assert first[0].name == "study.enqueue[0]"
    assert {key: first[0].params[key] for key in example["study"]["enqueue"][0]} == example["study"][
        "enqueue"
    ][0]
    assert [trial.name for trial in first[1:]] in (
        ["default", "linear probe", "LP-FT"],
        ["linear probe", "LP-FT"],
    )
