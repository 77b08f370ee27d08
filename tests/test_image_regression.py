"""The image trainer with ``trainer.task: regression``: a tiny ResNet built from its config and saved with
save_pretrained learns a number from generated images (the shape's size as a fraction of the image),
through the CLI: a sweep minimizes val_rmse in the label's units, bad labels and image folders are one
line, and ``ftsweep final`` + ``ftsweep predict`` give a ``prediction`` column."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
from conftest import REPO_ROOT, mlflow_runs, run_cli, write_sweep

from trainers.regression_target import regression_metric_names

sys.path.insert(0, str(REPO_ROOT / "examples" / "shapes"))
from make_data import CLASSES, make_shapes  # noqa: E402


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 x 32 shapes labelled by their size: 18 training, 6 validation and 6 test images, as tables."""
    folder = tmp_path_factory.mktemp("sizes")
    make_shapes(folder, counts={"train": 6, "validation": 2, "test": 2}, layout="table", target="size")
    return folder


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainers.tiny_image_model import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("image-models") / "resnet", CLASSES)


def regression_sweep(name: str, model: Path, sizes: Path, **trainer: object) -> dict:
    return {
        "study": {"name": name, "sampler": {"name": "tpe", "seed": 0}, "n_trials": 1},
        "trainer": {
            "name": "image-classification",
            "task": "regression",
            "model": str(model),
            "data": {
                "train": str(sizes / "train.csv"),
                "validation": str(sizes / "validation.csv"),
                "test": str(sizes / "test.csv"),
            },
            "epochs": 2,
            "batch_size": 8,
            **trainer,
        },
        "execution": {"workers": 1},
    }


def one_line_error(result) -> str:  # noqa: ANN001 - a CompletedProcess
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_the_size_labels_are_numbers_in_a_table(sizes: Path) -> None:
    with open(sizes / "train.csv", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 18 and all(1 / 3 - 1e-3 <= float(row["label"]) <= 2 / 3 + 1e-3 for row in rows)


@pytest.mark.slow
def test_a_regression_sweep_of_images_minimizes_val_rmse_in_the_default_space(
    tmp_path: Path, sizes: Path, resnet: Path
) -> None:
    sweep = regression_sweep("sizes", resnet, sizes, loss="huber")
    sweep["study"]["n_trials"] = 2
    write_sweep(tmp_path, sweep)

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="sizes", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val_rmse"]
    complete = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    assert complete and all(math.isfinite(trial.value) and trial.value > 0 for trial in complete)
    # search_spaces/image-regression.yaml: the augmentations, no class or mixing keys
    sampled = set(study.trials[-1].params)
    assert "hflip" in sampled and not sampled & {"label_smoothing", "class_weights", "mixup_alpha"}
    _, children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "sizes")
    assert children and all(set(regression_metric_names()) <= set(run.data.metrics) for run in children)
    with open(sizes / "train.csv", encoding="utf-8") as stream:
        mean = sum(float(row["label"]) for row in csv.DictReader(stream)) / 18
    log = (tmp_path / "ftsweep-runs" / "sizes" / "logs" / "trial-0.log").read_text()
    assert f"label standardized: mean {mean:.6g}" in log  # fitted on the training table


def test_a_label_that_is_not_a_number_is_one_line_naming_its_row(
    tmp_path: Path, sizes: Path, resnet: Path
) -> None:
    lines = (sizes / "train.csv").read_text(encoding="utf-8").splitlines()
    path = lines[3].split(",")[0]
    lines[3] = f"{sizes / path},big"
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sweep = regression_sweep("bad", resnet, sizes)
    sweep["trainer"]["data"]["train"] = str(tmp_path / "train.csv")
    write_sweep(tmp_path, sweep)

    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))

    assert "trainer.data.train" in line and "'big'" in line and "data row 3 (counting from 1)" in line
    assert not (tmp_path / "ftsweep.db").exists()


def test_an_image_folder_is_refused_for_regression(tmp_path: Path, resnet: Path) -> None:
    make_shapes(tmp_path / "shapes", counts={"train": 1, "validation": 1, "test": 1})
    sweep = regression_sweep("folder", resnet, tmp_path / "shapes")
    sweep["trainer"]["data"] = {"train": str(tmp_path / "shapes" / "train")}
    write_sweep(tmp_path, sweep)

    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))

    assert line.startswith("ftsweep: error: trainer.data.train: ") and "is an image folder" in line
    assert "trainer.task regression needs a .csv, .jsonl, .parquet table" in line


def test_mixup_and_class_weights_are_refused_by_key_for_regression(
    tmp_path: Path, sizes: Path, resnet: Path
) -> None:
    sweep = regression_sweep("mixed", resnet, sizes)
    sweep["search_space"] = {"mixup_alpha": {"type": "categorical", "choices": [0.0, 0.2]}}
    sweep["trainer"]["params"] = {"class_weights": "balanced"}
    write_sweep(tmp_path, sweep)

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "mixup_alpha" in result.stderr and "class_weights" in result.stderr
    assert "trainer.task regression" in result.stderr


@pytest.mark.slow
def test_final_and_predict_give_the_fits_numbers_for_image_paths(
    tmp_path: Path, sizes: Path, resnet: Path
) -> None:
    import numpy as np
    import pandas as pd

    write_sweep(tmp_path, regression_sweep("final", resnet, sizes))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0

    result = run_cli(["final", "final"], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    work = tmp_path / "ftsweep-runs" / "final" / "final"
    report = json.loads((work / "model" / "final.json").read_text())
    assert report["task"] == "regression" and set(report["exported"]["test"]) == {"rmse", "mae", "r2"}
    info = json.loads((work / "model" / "ftsweep_model.json").read_text())
    assert info["task"] == "regression" and set(info["label_scaler"]) == {"mean", "scale"}
    fitted = json.loads((work / "fits" / "tuned-seed0" / "predictions.json").read_text())
    predicted = np.asarray(fitted["splits"]["test"]["predicted"])
    assert len(predicted) == 6 and np.isfinite(predicted).all()

    # The predictor reads image paths relative to the current folder: the table's folder here.
    out = tmp_path / "scored.csv"
    scored = run_cli(["predict", str(work / "model"), "test.csv", "--out", str(out)], cwd=sizes)

    assert scored.returncode == 0, scored.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "label", "prediction"]
    np.testing.assert_allclose(table["prediction"].to_numpy(), predicted, rtol=0, atol=1e-5)
