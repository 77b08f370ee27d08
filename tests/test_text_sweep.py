"""The README's promise with the real trainer: a tiny BERT saved with save_pretrained, swept end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from conftest import make_rows, mlflow_runs, run_cli, write_csv, write_sweep

METRICS = {
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "generalization_gap",
}


def text_sweep(name: str, tiny_model: Path, data: dict[str, Path], **study: object) -> dict:
    return {
        "study": {"name": name, "sampler": {"name": "tpe", "seed": 0}, "n_trials": 4, **study},
        "trainer": {
            "name": "text-classification",
            "model": str(tiny_model),
            "data": {"train": "data/train.csv", "validation": "data/val.csv", "test": "data/test.csv"},
            "max_length": 16,
            "epochs": 2,
            "batch_size": 8,
        },
        "search_space": "quick",
        "execution": {"workers": 2},
    }


@pytest.mark.slow
def test_four_trials_two_workers_with_the_tiny_model(
    tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]
) -> None:
    write_sweep(tmp_path, text_sweep("tiny", tiny_model, toy_data))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert len(study.trials) == 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    searched = {"strategy", "learning_rate", "dropout", "freeze_depth"}  # search_spaces/quick.yaml
    assert all(set(t.params) <= searched for t in study.trials)
    # num_layers of the tiny model bounds freeze_depth
    assert all(0 <= t.params.get("freeze_depth", 0) <= 2 for t in study.trials)

    parents, children, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    assert len(parents) == 1 and len(children) == 4
    for child in children:
        number = int(child.data.tags["ftsweep.trial_number"])
        # every searched parameter of the trial (they depend on its strategy) and the fixed settings
        assert set(study.trials[number].params) | {"epochs", "batch_size"} <= set(child.data.params)
        assert METRICS <= set(child.data.metrics)
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_f1"))
        assert steps == sorted(study.trials[number].intermediate_values)
    complete = [run for run in children if run.data.tags["ftsweep.state"] == "COMPLETE"]
    assert complete and all("final_val_f1" in run.data.metrics for run in complete)
    # The test split is for the final model only: no trial run carries a test metric.
    assert not [key for run in children for key in run.data.metrics if "test_" in key]

    best = run_cli(["best", "tiny", "--format", "json"], cwd=tmp_path)
    assert best.returncode == 0 and '"metric": "val_f1"' in best.stdout
    optuna_cli = subprocess.run(
        [
            str(Path(__import__("sys").executable).with_name("optuna")),
            "trials",
            "--study-name",
            "tiny",
            "--storage",
            "sqlite:///ftsweep.db",
            "-f",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert optuna_cli.stdout.count('"number"') == 4


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_data_file_without_the_text_column(
    tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]
) -> None:
    write_csv(toy_data["train"], [{"message": r["text"], "label": r["label"]} for r in make_rows(20)])
    write_sweep(tmp_path, text_sweep("nocolumn", tiny_model, toy_data))
    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))
    assert "trainer.data.train" in line and "train.csv" in line and "'text'" in line and "message" in line


def test_a_training_set_with_one_class(tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]) -> None:
    write_csv(toy_data["train"], [{"text": r["text"], "label": "yes"} for r in make_rows(20)])
    write_sweep(tmp_path, text_sweep("oneclass", tiny_model, toy_data))
    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))
    assert "train.csv" in line and "two classes" in line


def test_an_empty_data_file(tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]) -> None:
    toy_data["validation"].write_text("text,label\n")
    write_sweep(tmp_path, text_sweep("empty", tiny_model, toy_data))
    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))
    assert "trainer.data.validation" in line and "val.csv" in line


def test_a_missing_model_folder(tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]) -> None:
    sweep = text_sweep("nomodel", tiny_model, toy_data)
    sweep["trainer"]["model"] = "models/does-not-exist"
    write_sweep(tmp_path, sweep)
    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))
    assert "trainer.model" in line and "does-not-exist" in line


def test_a_missing_data_file_records_nothing(
    tmp_path: Path, tiny_model: Path, toy_data: dict[str, Path]
) -> None:
    toy_data["test"].unlink()
    write_sweep(tmp_path, text_sweep("nodata", tiny_model, toy_data))
    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))
    assert "trainer.data.test" in line and "test.csv" in line
    assert not (tmp_path / "ftsweep.db").exists() and not (tmp_path / "mlflow.db").exists()
