"""Planning catches a model or data that no trial could use: one line, exit 2, nothing created.

Each test runs ``ftsweep run`` as a real process on a tiny BERT built from a config and saved
with ``save_pretrained``, broken in one way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_rows, run_cli, write_csv, write_sweep
from test_cli import assert_user_error

from trainers.tiny_model import build_tiny_model

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "model"
    return build_tiny_model(folder, [row["text"] for row in make_rows(64)], num_layers=2, hidden_size=32)


@pytest.fixture
def project(tmp_path: Path, model_template: Path) -> Path:
    """A folder with ./model (a copy of the tiny BERT), ./data/{train,val}.csv and sweep.yaml."""
    shutil.copytree(model_template, tmp_path / "model")
    write_csv(tmp_path / "data" / "train.csv", make_rows(32, seed=1))
    write_csv(tmp_path / "data" / "val.csv", make_rows(16, seed=2))
    write_sweep(tmp_path, sweep())
    return tmp_path


def sweep(**trainer: object) -> dict:
    return {
        "study": {"name": "checks", "n_trials": 1},
        "trainer": {
            "model": "./model",
            "data": {"train": "data/train.csv", "validation": "data/val.csv"},
            "epochs": 1,
            "max_length": 16,
            **trainer,
        },
        "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
        "execution": {"workers": 1},
    }


def run_planning(project: Path, **trainer: object):
    if trainer:
        write_sweep(project, sweep(**trainer))
    result = run_cli(["run", "sweep.yaml"], cwd=project)
    assert not list(project.glob("*.db")), "a refused sweep creates no store"
    return result


def test_a_healthy_model_passes_the_plan(project: Path) -> None:
    from orchestrator.config import load_sweep
    from orchestrator.plan import plan_sweep

    plan = plan_sweep(load_sweep(project / "sweep.yaml"))

    assert plan.space.names == ["learning_rate"]


def test_a_truncated_weights_file(project: Path) -> None:
    weights = project / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])

    assert_user_error(run_planning(project), "trainer.model", str(weights), "truncated", "download or copy")


def test_a_weights_file_that_is_not_safetensors(project: Path) -> None:
    weights = project / "model" / "model.safetensors"
    weights.write_bytes(b"<html>rate limited</html>")

    assert_user_error(run_planning(project), "trainer.model", str(weights), "is damaged")


def test_a_fixed_freeze_depth_above_the_models_layers(project: Path) -> None:
    result = run_planning(project, params={"freeze_depth": 3})

    assert_user_error(
        result,
        "sweep.yaml",
        "trainer.params.freeze_depth: 3 is more than the 2 encoder layers",
        "allowed: 0 to 2",
    )


def test_a_searched_freeze_depth_above_the_models_layers(project: Path) -> None:
    spec = sweep()
    spec["search_space"]["freeze_depth"] = {"type": "int", "low": 0, "high": 6}
    write_sweep(project, spec)

    assert_user_error(
        run_planning(project), "search_space.freeze_depth: 6 is more than the 2 encoder layers", "num_layers"
    )


def test_a_model_folder_without_tokenizer_files(project: Path) -> None:
    for name in TOKENIZER_FILES:
        (project / "model" / name).unlink(missing_ok=True)

    assert_user_error(
        run_planning(project),
        "trainer.model",
        str(project / "model"),
        "tokenizer files",
        "tokenizer.save_pretrained",
    )


def test_a_tokenizer_that_does_not_know_the_datas_words(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A tokenizer of another "language": every training word is unknown to it.
    foreign = [" ".join(f"w{index}x{word}" for word in range(8)) for index in range(40)]
    other = build_tiny_model(tmp_path_factory.mktemp("foreign") / "model", foreign)
    for name in TOKENIZER_FILES:
        if (other / name).exists():
            shutil.copy(other / name, project / "model" / name)

    assert_user_error(
        run_planning(project), "trainer.model", "to its unknown token '[UNK]'", "does not fit this data"
    )


def test_a_missing_label_written_as_nan(project: Path) -> None:
    rows = make_rows(32, seed=1)
    rows[3]["label"] = "NaN"
    write_csv(project / "data" / "train.csv", rows)

    assert_user_error(run_planning(project), "trainer.data.train", "train.csv", "'NaN'", "data row 4")


def test_the_text_column_cannot_be_the_label_column(project: Path) -> None:
    data = {"train": "data/train.csv", "validation": "data/val.csv", "text_column": "label"}

    assert_user_error(
        run_planning(project, data=data),
        "trainer.data: text_column and label_column are both 'label'",
        "trainer.data.text_column",
        "trainer.data.label_column",
    )
