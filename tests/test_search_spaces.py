"""Search spaces: shipped files, loading by name/path/mapping, validation messages, symbols,
sampling through a real Optuna trial, grids."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from orchestrator.errors import ConfigError
from search_spaces import (
    SPACES_DIR,
    SearchSpace,
    available_spaces,
    load_search_space,
    parse_search_space,
)

REPO = Path(__file__).resolve().parents[1]

REGULARIZATION = {
    "learning_rate": {"type": "float", "low": 1.0e-5, "high": 3.0e-4, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "freeze_depth": {"type": "int", "low": 0, "high": "num_layers"},
    "regularizer": {"type": "categorical", "choices": ["none", "l1", "l2sp"]},
    "reg_strength": {
        "type": "float",
        "low": 1.0e-5,
        "high": 1.0,
        "log": True,
        "when": {"regularizer": ["l1", "l2sp"]},
    },
}


def space_error(data: dict, source: str = "space.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_search_space(data, source=source)
    return caught.value


def only_problem(error: ConfigError) -> str:
    assert len(error.problems) == 1, error.problems
    return error.problems[0]


@pytest.fixture
def trial() -> optuna.trial.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return study.ask()


# --- Shipped spaces --------------------------------------------------------------------------


def test_the_shipped_spaces_are_listed() -> None:
    assert available_spaces() == sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))
    assert {"quick", "regularization"} <= set(available_spaces())


@pytest.mark.parametrize("name", available_spaces())
def test_every_shipped_space_loads_and_resolves(name: str, tmp_path: Path) -> None:
    space = load_search_space(name, base_dir=tmp_path)

    resolved = space.resolve({"num_layers": 6})

    assert space.source == str(SPACES_DIR / f"{name}.yaml")
    assert resolved.names == space.names and resolved.names
    for spec in resolved.specs.values():
        if spec.type == "categorical":
            assert spec.choices
        else:
            assert isinstance(spec.low, int | float) and isinstance(spec.high, int | float)
            assert spec.low <= spec.high


def test_search_spaces_can_be_imported_on_their_own() -> None:
    # A user's script (or a trainer) may import search_spaces before anything from orchestrator.
    result = subprocess.run(
        [sys.executable, "-c", "import search_spaces; print(search_spaces.available_spaces())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "regularization" in result.stdout


# --- Loading by name, by path, inline ----------------------------------------------------------


def test_load_by_name(tmp_path: Path) -> None:
    space = load_search_space("regularization", base_dir=tmp_path)

    assert space.names == [
        "strategy",
        "probe_l2",
        "learning_rate",
        "head_learning_rate",
        "min_steps",
        "weight_decay",
        "dropout",
        "label_smoothing",
        "freeze_depth",
        "regularizer",
        "reg_strength",
    ]
    assert space.specs["freeze_depth"].high == "num_layers"
    assert space.specs["reg_strength"].when == {"regularizer": ["l1", "l2sp"]}


def test_load_by_path_relative_to_the_sweep_folder(tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "mine.yaml").write_text(
        "lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "batch_size: {type: categorical, choices: [16, 32]}\n",
        encoding="utf-8",
    )

    space = load_search_space("spaces/mine.yaml", base_dir=tmp_path)

    assert space.names == ["lr", "batch_size"]
    assert space.source == str(tmp_path / "spaces" / "mine.yaml")
    assert space.specs["batch_size"].choices == [16, 32]


def test_load_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_search_space("spaces/gone.yaml", base_dir=tmp_path)

    assert str(caught.value) == f"search_space: no such search space file {tmp_path / 'spaces' / 'gone.yaml'}"


def test_load_inline_mapping(tmp_path: Path) -> None:
    space = load_search_space({"dropout": {"type": "float", "low": 0.0, "high": 0.3}}, base_dir=tmp_path)

    assert space.names == ["dropout"]
    assert space.source == "search_space (inline)"


def test_unknown_name_lists_the_shipped_spaces(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_search_space("regularisation", base_dir=tmp_path)

    message = str(caught.value)
    assert message.startswith("search_space: unknown search space 'regularisation'; shipped spaces: ")
    assert ", ".join(available_spaces()) in message
    assert "path to a YAML file" in message


def test_a_bad_file_names_the_file_and_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            lr: {type: float, low: 0.0, high: 1.0e-3, log: true}
            layers: {type: int, low: 0, high: 4, stride: 2}
            """
        ),
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as caught:
        load_search_space("bad.yaml", base_dir=tmp_path)

    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: 2 problems: ")
    assert caught.value.problems == [
        "lr: log: true needs low > 0 (got low=0)",
        "layers.stride: unknown key; allowed keys: type, low, high, step, log, choices, when",
    ]


def test_a_file_with_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("lr: {type: float, low: 0.1\ndropout: {type: float}\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_search_space(str(path), base_dir=tmp_path)

    assert str(path) in str(caught.value)
    assert "invalid YAML" in str(caught.value)
    assert "line " in str(caught.value)


def test_an_empty_space() -> None:
    assert str(space_error({})) == "space.yaml: the search space is empty; give at least one parameter"


def test_a_parameter_that_is_not_a_mapping() -> None:
    assert only_problem(space_error({"lr": 0.001})) == (
        "lr: expected a mapping such as {type: float, low: 0.0, high: 0.5}, got 0.001"
    )


# --- Validation of one parameter ---------------------------------------------------------------


def test_log_needs_a_positive_low() -> None:
    error = space_error({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}})

    assert error.source == "space.yaml"
    assert str(error) == "space.yaml: lr: log: true needs low > 0 (got low=0)"


def test_low_above_high() -> None:
    assert only_problem(space_error({"dropout": {"type": "float", "low": 0.5, "high": 0.1}})) == (
        "dropout: low (0.5) must not exceed high (0.1)"
    )


def test_int_needs_whole_number_bounds() -> None:
    assert only_problem(space_error({"layers": {"type": "int", "low": 0.5, "high": 3}})) == (
        "layers: an int parameter needs whole-number bounds (got 0.5..3)"
    )


def test_int_step_must_be_whole() -> None:
    assert only_problem(space_error({"layers": {"type": "int", "low": 0, "high": 4, "step": 1.5}})) == (
        "layers: an int parameter's step must be a whole number, not 1.5"
    )


def test_float_needs_both_bounds() -> None:
    assert only_problem(space_error({"dropout": {"type": "float", "low": 0.1}})) == (
        "dropout: a float parameter needs both 'low' and 'high'"
    )


def test_unknown_type_lists_the_types() -> None:
    problem = only_problem(space_error({"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}))

    assert problem.startswith("lr.type: ")
    assert "'float', 'int' or 'categorical'" in problem
    assert "(got 'loguniform')" in problem


def test_categorical_without_choices() -> None:
    assert only_problem(space_error({"regularizer": {"type": "categorical"}})) == (
        "regularizer: a categorical parameter needs a non-empty list 'choices'"
    )
    assert only_problem(space_error({"regularizer": {"type": "categorical", "choices": []}})) == (
        "regularizer: a categorical parameter needs a non-empty list 'choices'"
    )


def test_categorical_with_low() -> None:
    assert only_problem(
        space_error({"batch_size": {"type": "categorical", "choices": [16, 32], "low": 16}})
    ) == ("batch_size: a categorical parameter takes 'choices', not low")


def test_float_with_choices() -> None:
    assert only_problem(space_error({"dropout": {"type": "float", "choices": [0.1, 0.2]}})) == (
        "dropout: a float parameter takes low/high, not 'choices' (use type: categorical)"
    )


def test_step_and_log_together() -> None:
    assert only_problem(
        space_error({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "step": 1e-5, "log": True}})
    ) == ("lr: 'step' and 'log: true' cannot be combined (Optuna does not support it)")


def test_negative_step() -> None:
    problem = only_problem(space_error({"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": -0.1}}))

    assert problem.startswith("dropout.step: Input should be greater than 0")


def test_unknown_key_in_a_spec_lists_the_keys() -> None:
    assert only_problem(
        space_error({"dropout": {"type": "float", "low": 0.0, "high": 0.5, "logscale": True}})
    ) == ("dropout.logscale: unknown key; allowed keys: type, low, high, step, log, choices, when")


def test_a_bound_that_is_neither_number_nor_symbol() -> None:
    assert only_problem(space_error({"depth": {"type": "int", "low": 0, "high": "2 * num_layers"}})) == (
        "depth: high must be a number or a symbol such as num_layers, not '2 * num_layers'"
    )


def test_exponent_bounds_are_numbers() -> None:
    # PyYAML reads `1e-5` (no dot) as a string; it is still a number, not a symbol.
    space = parse_search_space(
        {"lr": {"type": "float", "low": "1e-5", "high": "1e-3", "log": True}}, "space.yaml"
    )

    assert space.resolve({}).specs["lr"].low == pytest.approx(1e-5)


def test_several_problems_are_reported_together() -> None:
    error = space_error(
        {
            "dropout": {"type": "float", "low": 0.5, "high": 0.1},
            "ok": {"type": "int", "low": 0, "high": 3},
            "regularizer": {"type": "categorical"},
        }
    )

    assert len(error.problems) == 2
    assert str(error).startswith("space.yaml: 2 problems: dropout: ")


# --- Conditions (`when`) -----------------------------------------------------------------------


def test_when_must_refer_to_an_earlier_parameter() -> None:
    error = space_error(
        {
            "reg_strength": {
                "type": "float",
                "low": 1e-5,
                "high": 1.0,
                "log": True,
                "when": {"regularizer": ["l1"]},
            },
            "regularizer": {"type": "categorical", "choices": ["none", "l1"]},
        }
    )

    assert only_problem(error) == "reg_strength.when: 'regularizer' must be declared before 'reg_strength'"


def test_when_values_must_be_among_the_choices() -> None:
    error = space_error(
        {
            "regularizer": {"type": "categorical", "choices": ["none", "l1", "l2sp"]},
            "reg_strength": {
                "type": "float",
                "low": 1e-5,
                "high": 1.0,
                "log": True,
                "when": {"regularizer": ["l2"]},
            },
        }
    )

    assert (
        only_problem(error)
        == "reg_strength.when.regularizer: ['l2'] not among regularizer's choices ['none', 'l1', 'l2sp']"
    )


def test_a_parameter_cannot_depend_on_itself() -> None:
    error = space_error({"dropout": {"type": "float", "low": 0.0, "high": 0.5, "when": {"dropout": [0.1]}}})

    assert only_problem(error) == "dropout.when: a parameter cannot depend on itself"


def test_when_may_name_a_parameter_the_sweep_fixes() -> None:
    space = parse_search_space(
        {
            "reg_strength": {
                "type": "float",
                "low": 1e-5,
                "high": 1.0,
                "log": True,
                "when": {"regularizer": ["l1"]},
            }
        },
        "space.yaml",
    )

    assert space.names == ["reg_strength"]


def test_an_invalid_condition_parameter_is_reported_once() -> None:
    # regularizer is declared before reg_strength; its only problem is its missing choices.
    error = space_error(
        {
            "regularizer": {"type": "categorical"},
            "reg_strength": {
                "type": "float",
                "low": 1e-5,
                "high": 1.0,
                "log": True,
                "when": {"regularizer": ["l1"]},
            },
        }
    )

    assert error.problems == ["regularizer: a categorical parameter needs a non-empty list 'choices'"]


# --- Symbols -----------------------------------------------------------------------------------


def test_resolve_symbols_and_offsets() -> None:
    space = parse_search_space(
        {
            "freeze_depth": {"type": "int", "low": 0, "high": "num_layers"},
            "top_layers": {"type": "int", "low": 1, "high": "num_layers - 1"},
            "width": {"type": "int", "low": "num_layers+2", "high": 20},
        },
        "space.yaml",
    )

    resolved = space.resolve({"num_layers": 6})

    assert resolved.specs["freeze_depth"].high == 6
    assert resolved.specs["top_layers"].high == 5
    assert resolved.specs["width"].low == 8
    assert resolved.symbols == {"num_layers": 6}
    assert space.specs["freeze_depth"].high == "num_layers", "resolve returns a copy"


def test_resolve_unknown_symbol_names_what_the_trainer_provides() -> None:
    space = parse_search_space(
        {"freeze_depth": {"type": "int", "low": 0, "high": "num_layers"}}, "space.yaml"
    )

    with pytest.raises(ConfigError) as caught:
        space.resolve({})
    assert str(caught.value) == (
        "search space space.yaml: freeze_depth.high: unknown symbol 'num_layers'; this trainer provides: none"
    )

    with pytest.raises(ConfigError) as caught:
        space.resolve({"num_heads": 4, "hidden_size": 32})
    assert caught.value.problems == [
        "freeze_depth.high: unknown symbol 'num_layers'; this trainer provides: hidden_size, num_heads"
    ]


def test_resolve_checks_the_bounds_it_produces() -> None:
    space = parse_search_space(
        {"top_layers": {"type": "int", "low": 2, "high": "num_layers - 1"}}, "space.yaml"
    )

    with pytest.raises(ConfigError) as caught:
        space.resolve({"num_layers": 2})

    assert caught.value.problems == ["top_layers: low (2) must not exceed high (1)"]


# --- Sampling through a real Optuna trial ------------------------------------------------------


def test_suggest_samples_within_the_bounds(trial: optuna.trial.Trial) -> None:
    space = parse_search_space(
        {
            "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "freeze_depth": {"type": "int", "low": 0, "high": "num_layers"},
            "batch": {"type": "int", "low": 8, "high": 32, "step": 8},
            "pooling": {"type": "categorical", "choices": ["cls", "mean"]},
        },
        "space.yaml",
    ).resolve({"num_layers": 6})

    sampled = space.suggest(trial)

    assert list(sampled) == space.names
    assert sampled == trial.params
    assert 1e-5 <= sampled["learning_rate"] <= 3e-4
    assert 0.0 <= sampled["dropout"] <= 0.5
    assert sampled["dropout"] == pytest.approx(round(sampled["dropout"], 1)), "on the 0.1 grid"
    assert isinstance(sampled["freeze_depth"], int) and 0 <= sampled["freeze_depth"] <= 6
    assert sampled["batch"] in (8, 16, 24, 32)
    assert sampled["pooling"] in ("cls", "mean")


def test_suggest_skips_a_parameter_whose_condition_is_false(trial: optuna.trial.Trial) -> None:
    space = (
        parse_search_space(REGULARIZATION, "space.yaml").resolve({"num_layers": 6}).without({"regularizer"})
    )

    sampled = space.suggest(trial, fixed={"regularizer": "none"})

    assert set(sampled) == {"learning_rate", "dropout", "freeze_depth"}
    assert "reg_strength" not in trial.params


def test_suggest_includes_a_parameter_whose_condition_is_true(trial: optuna.trial.Trial) -> None:
    space = (
        parse_search_space(REGULARIZATION, "space.yaml").resolve({"num_layers": 6}).without({"regularizer"})
    )

    sampled = space.suggest(trial, fixed={"regularizer": "l2sp"})

    assert set(sampled) == {"learning_rate", "dropout", "freeze_depth", "reg_strength"}
    assert 1e-5 <= sampled["reg_strength"] <= 1.0


def test_suggest_follows_a_sampled_condition(trial: optuna.trial.Trial) -> None:
    space = parse_search_space(
        {
            "regularizer": {"type": "categorical", "choices": ["l1"]},
            "reg_strength": {"type": "float", "low": 0.1, "high": 1.0, "when": {"regularizer": ["l1"]}},
            "augmentation_prob": {
                "type": "float",
                "low": 0.1,
                "high": 0.3,
                "when": {"augmentation": ["word_swap"]},
            },
        },
        "space.yaml",
    )

    sampled = space.suggest(trial)

    assert sampled["regularizer"] == "l1"
    assert 0.1 <= sampled["reg_strength"] <= 1.0
    assert "augmentation_prob" not in sampled, "a condition on a parameter nobody sets is false"


# --- Grids and without() -----------------------------------------------------------------------


def test_grid_values() -> None:
    space = parse_search_space(
        {
            "freeze_depth": {"type": "int", "low": 0, "high": 3},
            "batch": {"type": "int", "low": 8, "high": 32, "step": 8},
            "regularizer": {"type": "categorical", "choices": ["none", "l1", "l2sp"]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        },
        "space.yaml",
    )

    assert space.grid() == {
        "freeze_depth": [0, 1, 2, 3],
        "batch": [8, 16, 24, 32],
        "regularizer": ["none", "l1", "l2sp"],
        "dropout": [0.0, 0.1, 0.2, 0.3],
    }


def test_grid_of_a_resolved_symbol() -> None:
    space = parse_search_space(
        {"freeze_depth": {"type": "int", "low": 0, "high": "num_layers - 1"}}, "space.yaml"
    )

    assert space.resolve({"num_layers": 4}).grid() == {"freeze_depth": [0, 1, 2, 3]}


def test_grid_needs_a_step_for_floats() -> None:
    space = parse_search_space(
        {
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "regularizer": {"type": "categorical", "choices": ["none", "l1"]},
        },
        "space.yaml",
    )

    with pytest.raises(ConfigError) as caught:
        space.grid()

    assert str(caught.value) == (
        "search space space.yaml: dropout: the grid sampler needs a 'step' for float parameters "
        "(or make it categorical with explicit 'choices')"
    )


def test_without() -> None:
    space = parse_search_space(REGULARIZATION, "space.yaml")

    smaller = space.without({"dropout", "regularizer", "not_there"})

    assert isinstance(smaller, SearchSpace)
    assert smaller.names == ["learning_rate", "freeze_depth", "reg_strength"]
    assert smaller.source == "space.yaml"
    assert space.names == list(REGULARIZATION), "without returns a copy"


def test_to_dict_round_trips() -> None:
    space = parse_search_space(REGULARIZATION, "space.yaml")

    again = parse_search_space(space.to_dict(), "stored")

    assert again.specs == space.specs
