"""The sweep file: defaults, validation messages, ``--set`` overrides, durations and storage URLs.

Every error a user can fix names the file, the key path and what is allowed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.config import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    SAMPLERS,
    Sweep,
    apply_overrides,
    load_sweep,
    parse_duration,
    validate_sweep,
)
from orchestrator.errors import ConfigError, UserError

MINIMAL = """\
study:
  name: demo
trainer:
  model: ./tiny-bert
  data:
    train: data/train.csv
"""


def write_sweep(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def minimal_with(tmp_path: Path, extra: str) -> Path:
    """The minimal sweep file with more YAML appended (whole sections or replaced ones)."""
    return write_sweep(tmp_path, MINIMAL + textwrap.dedent(extra))


def config_error(path: Path, overrides: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_sweep(path, overrides)
    return caught.value


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults must not depend on the environment the tests run in."""
    monkeypatch.delenv("FTSWEEP_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- A minimal sweep file and its defaults -------------------------------------------------


def test_minimal_sweep_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL)

    sweep = load_sweep(path)

    assert isinstance(sweep, Sweep)
    assert sweep.study.name == "demo"
    assert DEFAULT_STORAGE == "sqlite:///ftsweep.db" and DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    # Relative SQLite files are made absolute against the working directory, once.
    assert sweep.storage_url == f"sqlite:///{Path.cwd() / 'ftsweep.db'}"
    assert sweep.tracking_uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert sweep.experiment_name == "demo"
    assert sweep.study.metric == "val_f1"
    assert sweep.study.direction == "maximize"
    assert sweep.study.sampler.name == "tpe"
    assert sweep.study.sampler.seed is None
    assert sweep.study.sampler.options == {}
    assert sweep.study.n_trials == 20
    assert sweep.study.timeout is None
    assert sweep.execution.workers == "auto"
    assert sweep.execution.gpus_per_trial == 1
    assert sweep.execution.backend == "local"
    assert sweep.tracking.enabled is True
    assert sweep.model.search_space == "regularization"
    assert sweep.trainer.name == "text-classification"
    assert sweep.trainer.params == {}


def test_trainer_settings_are_the_trainer_section_less_name_and_params(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, MINIMAL))

    assert sweep.trainer_settings() == {"model": "./tiny-bert", "data": {"train": "data/train.csv"}}


def test_paths_resolve_against_the_sweep_files_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write_sweep(tmp_path / "conf", MINIMAL)

    sweep = load_sweep(path)

    assert sweep.base_dir == (tmp_path / "conf").resolve()
    assert sweep.source == str(path)
    assert sweep.to_stored() == {"sweep": sweep.raw, "base_dir": str(sweep.base_dir), "source": str(path)}


def test_storage_and_tracking_defaults_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTSWEEP_STORAGE", "postgresql+psycopg://optuna@db:5432/studies")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")

    sweep = load_sweep(write_sweep(tmp_path, MINIMAL))

    assert sweep.storage_url == "postgresql+psycopg://optuna@db:5432/studies"
    assert sweep.tracking_uri == "http://mlflow:5000"


def test_values_in_the_file_win_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTSWEEP_STORAGE", "sqlite:///from-env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env-mlflow.db")
    path = write_sweep(
        tmp_path,
        """\
        study:
          name: demo
          storage: sqlite:///mine.db
        trainer:
          model: ./tiny-bert
        tracking:
          mlflow_uri: sqlite:///my-mlflow.db
          experiment: fine-tuning
        """,
    )

    sweep = load_sweep(path)

    assert sweep.study.storage == "sqlite:///mine.db"
    assert sweep.store.sqlite_file == Path.cwd() / "mine.db"
    assert sweep.tracking_location.sqlite_file == Path.cwd() / "my-mlflow.db"
    assert sweep.experiment_name == "fine-tuning"


def test_sampler_options_pass_through_to_the_sampler(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        """\
        study:
          name: demo
          sampler: {name: tpe, seed: 0, n_startup_trials: 5}
          pruner: {name: hyperband, reduction_factor: 3}
        trainer:
          model: ./tiny-bert
        """,
    )

    sweep = load_sweep(path)

    assert sweep.study.sampler.name == "tpe"
    assert sweep.study.sampler.seed == 0
    assert sweep.study.sampler.options == {"n_startup_trials": 5}
    assert sweep.study.pruner.name == "hyperband"
    assert sweep.study.pruner.options == {"reduction_factor": 3}


def test_workers_may_be_a_count_or_auto(tmp_path: Path) -> None:
    sweep = load_sweep(
        write_sweep(tmp_path, MINIMAL), ["execution.workers=3", "execution.gpus_per_trial=0.5"]
    )

    assert sweep.execution.workers == 3
    assert sweep.execution.gpus_per_trial == 0.5


# --- Errors: each names the file, the key path and what is allowed --------------------------


def test_missing_study_name(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        """\
        study:
          metric: val_loss
        trainer:
          model: ./tiny-bert
        """,
    )

    error = config_error(path)

    assert isinstance(error, UserError)
    assert error.source == str(path)
    assert error.problems == ["study.name: required key is missing"]
    assert str(error) == f"{path}: study.name: required key is missing"


def test_unknown_top_level_key_lists_the_sections(tmp_path: Path) -> None:
    path = minimal_with(tmp_path, "executor:\n  workers: 2\n")

    error = config_error(path)

    assert str(path) in str(error)
    assert error.problems == [
        "executor: unknown key; allowed keys: study, trainer, search_space, execution, tracking"
    ]


def test_unknown_nested_key_lists_that_sections_keys(tmp_path: Path) -> None:
    path = minimal_with(tmp_path, "execution:\n  worker: 2\n")

    error = config_error(path)

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("execution.worker: unknown key; allowed keys: ")
    for key in ("backend", "workers", "gpus_per_trial", "cpus_per_trial", "checkpoint_dir"):
        assert key in problem


def test_bad_direction(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  direction: max"))

    error = config_error(path)

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("study.direction: ")
    assert "'maximize' or 'minimize'" in problem
    assert "(got 'max')" in problem


def test_bad_sampler_name_lists_the_samplers(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  sampler: {name: bayes}"))

    error = config_error(path)

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("study.sampler.name: ")
    assert "(got 'bayes')" in problem
    for sampler in SAMPLERS:
        assert f"'{sampler}'" in problem


def test_zero_trials(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  n_trials: 0"))

    error = config_error(path)

    assert str(path) in str(error)
    assert error.problems == ["study.n_trials: Input should be greater than or equal to 1 (got 0)"]


@pytest.mark.parametrize("workers", [0, -2, "many"])
def test_bad_worker_count(tmp_path: Path, workers: object) -> None:
    path = minimal_with(tmp_path, f"execution:\n  workers: {workers}\n")

    error = config_error(path)

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("execution.workers: must be 'auto' or a whole number of at least 1")


def test_a_boolean_is_not_a_worker_count(tmp_path: Path) -> None:
    # `workers: yes` is YAML for true; it must not quietly mean one worker.
    path = minimal_with(tmp_path, "execution:\n  workers: yes\n")

    error = config_error(path)

    (problem,) = error.problems
    assert problem.startswith("execution.workers: must be 'auto' or a whole number of at least 1")


def test_fractional_worker_count_names_the_key_path_once(tmp_path: Path) -> None:
    path = minimal_with(tmp_path, "execution:\n  workers: 2.5\n")

    error = config_error(path)

    assert str(path) in str(error)
    # One problem, on the key the user wrote: not one per member of the field's type union
    # ("execution.workers.int", "execution.workers.literal['auto']").
    (problem,) = error.problems
    assert problem.startswith("execution.workers: ")
    assert "(got 2.5)" in problem


def test_search_space_of_the_wrong_type_names_the_key_path_once(tmp_path: Path) -> None:
    path = minimal_with(tmp_path, "search_space: 5\n")

    error = config_error(path)

    (problem,) = error.problems
    assert problem.startswith("search_space: ")
    assert "(got 5)" in problem


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        """\
        study:
          name: demo
          direction: up
          n_trials: 0
        trainer:
          model: ./tiny-bert
        execution:
          gpus_per_trial: -1
        colour: blue
        """,
    )

    error = config_error(path)

    assert len(error.problems) == 4
    assert str(error).startswith(f"{path}: 4 problems: ")
    paths = sorted(problem.split(":", 1)[0] for problem in error.problems)
    assert paths == ["colour", "execution.gpus_per_trial", "study.direction", "study.n_trials"]


def test_empty_file_names_both_required_sections(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "# nothing yet\n")

    error = config_error(path)

    assert sorted(error.problems) == ["study: required key is missing", "trainer: required key is missing"]


def test_invalid_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        """\
        study:
          name: demo
           direction: maximize
        trainer:
          model: ./tiny-bert
        """,
    )

    error = config_error(path)

    assert str(path) in str(error)
    assert "line 3" in str(error)
    assert "invalid YAML" in str(error)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    # YAML itself keeps the last value silently: the first epochs would be lost without a word.
    path = write_sweep(
        tmp_path,
        """\
        study:
          name: demo
        trainer:
          model: ./tiny-bert
          epochs: 3
          data:
            train: data/train.csv
          epochs: 5
        """,
    )

    error = config_error(path)

    assert str(error) == f"{path}: line 8: duplicate key 'epochs' (first given on line 5); give each key once"


def test_a_repeated_section_is_refused_but_a_yaml_merge_is_not(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL + "study:\n  name: other\n")
    assert "line 7: duplicate key 'study' (first given on line 1)" in str(config_error(path))

    merged = write_sweep(
        tmp_path,
        """\
        defaults: &defaults
          name: demo
        study:
          <<: *defaults
          n_trials: 3
        trainer:
          model: ./tiny-bert
        """,
        name="merged.yaml",
    )
    from orchestrator.config import read_yaml_mapping

    assert read_yaml_mapping(merged)["study"] == {"name": "demo", "n_trials": 3}


def test_a_search_space_file_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    from search_spaces import load_search_space

    space = tmp_path / "space.yaml"
    space.write_text(
        "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}\n"
        "learning_rate: {type: float, low: 0.1, high: 1}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_search_space(str(space), tmp_path)
    assert str(caught.value) == (
        f"{space}: line 2: duplicate key 'learning_rate' (first given on line 1); give each key once"
    )


def test_yaml_file_holding_a_list(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "- study\n- trainer\n")

    error = config_error(path)

    assert str(error) == f"{path}: must be a YAML mapping of sections, not a list"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    error = config_error(path)

    assert str(error) == f"no such sweep file: {path}"


# --- Timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1.5h", 5400),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_quoted_number_of_seconds_is_a_duration() -> None:
    # The message for a bad duration offers "a number of seconds"; "45" is one.
    assert parse_duration("45") == 45.0


@pytest.mark.parametrize("text", ["soon", "", "m", "30 minutes", True, [30]])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="must be a duration such as 90s, 30m, 2h or a number of seconds"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("1h30m", 5400.0), ("45", 45.0)])
def test_timeout_in_the_sweep_file(tmp_path: Path, text: str, seconds: float) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", f"name: demo\n  timeout: {text}"))

    assert load_sweep(path).study.timeout == seconds


def test_bad_timeout_in_the_sweep_file(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  timeout: soon"))

    error = config_error(path)

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("study.timeout: must be a duration such as 90s, 30m, 2h or a number of seconds")
    assert "'soon'" in problem


def test_zero_timeout_is_rejected(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  timeout: 0s"))

    error = config_error(path)

    (problem,) = error.problems
    assert problem.startswith("study.timeout: Input should be greater than 0")


# --- --set overrides -----------------------------------------------------------------------


def test_override_nested_value_is_read_as_yaml() -> None:
    raw = {"study": {"name": "demo", "n_trials": 20}}

    result = apply_overrides(raw, ["study.n_trials=2"])

    assert result == {"study": {"name": "demo", "n_trials": 2}}
    assert isinstance(result["study"]["n_trials"], int)
    assert raw == {"study": {"name": "demo", "n_trials": 20}}, "the input is left alone"


def test_override_creates_missing_sections() -> None:
    result = apply_overrides(
        {"study": {"name": "demo"}}, ["execution.workers=2", "trainer.params.dropout=0.1"]
    )

    assert result == {
        "study": {"name": "demo"},
        "execution": {"workers": 2},
        "trainer": {"params": {"dropout": 0.1}},
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("2", 2),
        ("0.5", 0.5),
        ("[a, b]", ["a", "b"]),
        ("[1, 2]", [1, 2]),
        ("{name: random, seed: 3}", {"name": "random", "seed": 3}),
        ("null", None),
        ("plain text", "plain text"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_override_values_are_typed_like_yaml(text: str, value: object) -> None:
    assert apply_overrides({}, [f"section.key={text}"]) == {"section": {"key": value}}


def test_override_fills_an_empty_section() -> None:
    # `execution:` with nothing under it reads as null.
    assert apply_overrides({"execution": None}, ["execution.workers=2"]) == {"execution": {"workers": 2}}


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides({}, ["trainer.epochs"])

    assert caught.value.source is None  # the message itself starts with --set
    message = str(caught.value)
    assert "'trainer.epochs'" in message
    assert "expected key.path=value, e.g. trainer.epochs=2" in message


def test_override_through_a_scalar() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides({"study": {"name": "demo"}}, ["study.name.first=x"])

    assert caught.value.problems == [
        "--set study.name.first: study.name is 'demo', not a mapping, so it has no key 'first'"
    ]


def test_bad_overrides_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides({"study": {"name": "demo"}}, ["=3", "study.name.x=1", "ok.key=1"])

    assert len(caught.value.problems) == 2
    assert "2 problems" in str(caught.value)


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL)

    sweep = load_sweep(path, ["study.n_trials=5", "study.sampler.name=random", "tracking.enabled=false"])

    assert sweep.study.n_trials == 5
    assert sweep.study.sampler.name == "random"
    assert sweep.tracking.enabled is False
    assert sweep.raw["study"]["n_trials"] == 5, "raw (stored with the study) holds the overrides"


def test_an_override_that_breaks_the_file_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, MINIMAL)

    error = config_error(path, ["study.direction=sideways"])

    assert str(path) in str(error)
    (problem,) = error.problems
    assert problem.startswith("study.direction: ")
    assert "(got 'sideways')" in problem


# --- SQLite URLs (the rules themselves are tested in test_storage_location.py) -----------------


def test_relative_sqlite_urls_are_made_absolute_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.storage import StoreLocation, TrackingLocation

    monkeypatch.chdir(tmp_path)
    here = Path.cwd()

    assert StoreLocation.resolve("sqlite:///ftsweep.db").url == f"sqlite:///{here / 'ftsweep.db'}"
    assert StoreLocation.resolve("sqlite:///runs/ftsweep.db").sqlite_file == here / "runs" / "ftsweep.db"
    assert StoreLocation.resolve("sqlite+pysqlite:///x.db").url == f"sqlite+pysqlite:///{here / 'x.db'}"
    assert StoreLocation.resolve("sqlite:////srv/studies.db").url == "sqlite:////srv/studies.db"
    assert StoreLocation.resolve("postgresql://u@db/x").sqlite_file is None
    assert TrackingLocation.resolve("http://mlflow:5000").uri == "http://mlflow:5000"
    assert TrackingLocation.resolve("http://mlflow:5000").sqlite_file is None


# --- plan_sweep: the search space and the metric against the trainer ------------------------
# The noop trainer imports nothing heavy and checks no data, so these stay fast.

NOOP_SPACE = {
    "x": {"type": "float", "low": -5.0, "high": 5.0},
    "y": {"type": "float", "low": -5.0, "high": 5.0},
}


def noop_sweep(tmp_path: Path, **sections: object) -> Sweep:
    raw: dict = {
        "study": {"name": "noop-demo", "metric": "score"},
        "trainer": {"name": "noop", "epochs": 2},
        "search_space": NOOP_SPACE,
    }
    raw.update(sections)
    return validate_sweep(raw, base_dir=tmp_path, source=str(tmp_path / "sweep.yaml"))


def test_plan_sweep_with_the_noop_trainer(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    plan = plan_sweep(noop_sweep(tmp_path))

    assert plan.trainer_cls.name == "noop"
    assert plan.space.names == ["x", "y"]
    assert plan.fixed_params == {"epochs": 2}  # only what the file sets; defaults stay searchable
    assert plan.trial_params({"x": 1.0, "y": -2.0}) == {"epochs": 2, "x": 1.0, "y": -2.0}
    assert plan.max_epochs == 2


def test_plan_sweep_removes_parameters_the_sweep_fixes(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    plan = plan_sweep(noop_sweep(tmp_path, trainer={"name": "noop", "params": {"y": -2.0}}))

    assert plan.space.names == ["x"]
    assert plan.fixed_params["y"] == -2.0


def test_plan_sweep_keeps_a_searched_parameter_the_sweep_does_not_fix(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    # `trainer.epochs` is not in this sweep file: the search space, not a settings default,
    # decides the number of epochs.
    space = {**NOOP_SPACE, "epochs": {"type": "int", "low": 1, "high": 5}}
    plan = plan_sweep(noop_sweep(tmp_path, trainer={"name": "noop"}, search_space=space))

    assert plan.space.names == ["x", "y", "epochs"]


def test_plan_sweep_rejects_a_metric_the_trainer_does_not_report(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    with pytest.raises(ConfigError) as caught:
        plan_sweep(noop_sweep(tmp_path, study={"name": "noop-demo", "metric": "val_f1"}))

    assert str(tmp_path / "sweep.yaml") in str(caught.value)
    assert caught.value.problems == [
        "study.metric: 'val_f1' is not a metric the trainer 'noop' reports; allowed: score, loss"
    ]


def test_the_trainer_supplies_the_metric_direction_and_space_a_file_leaves_out(tmp_path: Path) -> None:
    noop = noop_sweep(tmp_path, study={"name": "noop-demo"})
    assert (noop.study.metric, noop.study.direction) == ("score", "maximize")
    assert noop.raw["study"]["metric"] == "score", "the stored sweep keeps the metric it was created with"

    text = load_sweep(write_sweep(tmp_path, MINIMAL.replace("name: demo", "name: demo\n  metric: val_loss")))
    assert (text.study.metric, text.study.direction) == ("val_loss", "minimize")
    assert text.model.search_space == "regularization"


def test_a_trainer_without_a_default_space_needs_one_in_the_file(tmp_path: Path) -> None:
    raw = {"study": {"name": "noop-demo"}, "trainer": {"name": "noop"}}
    with pytest.raises(ConfigError) as caught:
        validate_sweep(raw, base_dir=tmp_path, source="sweep.yaml")
    assert caught.value.problems == ["search_space: required key is missing"]


def test_an_unknown_trainer_is_named_when_its_defaults_are_needed(tmp_path: Path) -> None:
    raw = {"study": {"name": "x"}, "trainer": {"name": "nope"}}
    with pytest.raises(ConfigError) as caught:
        validate_sweep(raw, base_dir=tmp_path, source="sweep.yaml")
    assert str(caught.value).startswith("sweep.yaml: trainer.name: unknown trainer 'nope'")


def test_plan_sweep_rejects_a_parameter_the_trainer_does_not_take(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    space = {**NOOP_SPACE, "z": {"type": "float", "low": 0.0, "high": 1.0}}
    with pytest.raises(ConfigError) as caught:
        plan_sweep(noop_sweep(tmp_path, search_space=space))

    assert str(tmp_path / "sweep.yaml") in str(caught.value)
    assert caught.value.problems == [
        "search_space.z: the trainer 'noop' takes no parameter 'z'; allowed: x, y, epochs, sleep_seconds"
    ]


def test_plan_sweep_rejects_an_unknown_fixed_parameter(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    with pytest.raises(ConfigError) as caught:
        plan_sweep(noop_sweep(tmp_path, trainer={"name": "noop", "params": {"z": 1}}))

    assert str(tmp_path / "sweep.yaml") in str(caught.value)
    assert caught.value.problems == [
        "trainer.params.z: unknown key; allowed keys: x, y, epochs, sleep_seconds"
    ]


def test_plan_sweep_rejects_an_unknown_trainer_setting(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    with pytest.raises(ConfigError) as caught:
        plan_sweep(noop_sweep(tmp_path, trainer={"name": "noop", "sleep": 1}))

    assert str(tmp_path / "sweep.yaml") in str(caught.value)
    assert caught.value.problems == ["trainer.sleep: unknown key; allowed keys: epochs, sleep_seconds"]


def test_plan_sweep_unknown_search_space_names_the_sweep_file(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    with pytest.raises(ConfigError) as caught:
        plan_sweep(noop_sweep(tmp_path, search_space="nope"))

    message = str(caught.value)
    assert str(tmp_path / "sweep.yaml") in message
    assert "search_space: unknown search space 'nope'" in message
    assert "regularization" in message
