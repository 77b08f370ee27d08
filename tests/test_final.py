"""From a finished sweep to a shipped model, through the real CLI on the tiny BERT.

One sweep (two trials of a learnable toy task) is shared by the module: its trials run with the
test file moved away after planning, which proves that no trial reads it; then ``ftsweep final``
is killed mid-fit and run again, and the exported folder, the model card, ``final.json``, the
MLflow run and the registered version are checked, and ``ftsweep predict`` scores files with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, fault_sweep, make_rows, mlflow_runs, run_cli, write_csv, write_sweep

pytestmark = pytest.mark.slow

STUDY = "ship"
REGISTERED = "ship-model"
FINAL_ARGS = ["final", STUDY, "--seeds", "2", "--baseline", "--register", REGISTERED]


def text_sweep(name: str, model: Path, test: bool = True, n_trials: int = 2, epochs: int = 4) -> dict:
    data = {"train": "data/train.csv", "validation": "data/val.csv"}
    if test:
        data["test"] = "data/test.csv"
    return {
        "study": {
            "name": name,
            "sampler": {"name": "tpe", "seed": 0},
            "n_trials": n_trials,
            "pruner": {"name": "none"},
        },
        # The text trainer plus test-only hooks (tests/split_guard_trainer.py), on by environment variables.
        "trainer": {
            "name": "split_guard_trainer:SplitGuardTrainer",
            "model": str(model),
            "data": data,
            "max_length": 16,
            "epochs": epochs,
            "batch_size": 8,
        },
        # Learning rates that learn the toy task in a few epochs; the default config (3e-5) does not.
        "search_space": {"learning_rate": {"type": "float", "low": 4.0e-3, "high": 6.0e-3, "log": True}},
        "execution": {"workers": 1},
    }


def write_data(folder: Path) -> None:
    write_csv(folder / "data" / "train.csv", make_rows(64, seed=1))
    write_csv(folder / "data" / "val.csv", make_rows(32, seed=2))
    write_csv(folder / "data" / "test.csv", make_rows(32, seed=3))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def final_runs(folder: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [run for run in runs if run.data.tags.get("ftsweep.role") == "final"]


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> tuple[Path, subprocess.CompletedProcess]:
    """The module's sweep, run while the test file is moved away right after planning checked it."""
    folder = tmp_path_factory.mktemp("final")
    write_data(folder)
    write_sweep(folder, text_sweep(STUDY, tiny_model))
    hidden = folder / "hidden-test.csv"
    result = run_cli(["run", "sweep.yaml"], cwd=folder, timeout=900, FTSWEEP_TEST_HIDE=str(hidden))
    return folder, result


@pytest.fixture(scope="module")
def finished(swept: tuple[Path, subprocess.CompletedProcess]) -> dict:
    """``final`` killed (SIGKILL) after the first epoch of its first fit, then the same command run again."""
    folder, _ = swept
    if (folder / "hidden-test.csv").exists():
        shutil.move(folder / "hidden-test.csv", folder / "data" / "test.csv")
    hold = folder / "hold"
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *FINAL_ARGS],
        cwd=folder,
        env=cli_env(FTSWEEP_TEST_HOLD=str(hold)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiting = Path(f"{hold}.waiting")
    deadline = time.monotonic() + 900
    while not waiting.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert waiting.exists(), process.stderr.read() if process.poll() is not None else "the fit never held"
    fit_pid = int(waiting.read_text())
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    # The fit's process leaves when its driver is gone (its lifeline closes).
    deadline = time.monotonic() + 120
    while _alive(fit_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(fit_pid)
    work = folder / "ftsweep-runs" / STUDY / "final"
    assert not (work / "final.json").exists() and not final_runs(folder)
    again = run_cli(FINAL_ARGS, cwd=folder, timeout=1800)
    assert again.returncode == 0, again.stderr
    return {"folder": folder, "work": work, "model": work / "model", "result": again}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_trials_never_open_the_test_file(swept: tuple[Path, subprocess.CompletedProcess]) -> None:
    folder, result = swept
    # The test file was gone from the first trial on, and every trial completed: none read it.
    assert result.returncode == 0, result.stderr
    assert not (folder / "data" / "test.csv").exists() and (folder / "hidden-test.csv").exists()
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'ftsweep.db'}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    # Validation metrics only, wherever a trial is shown.
    status = run_cli(["status", STUDY, "--format", "json"], cwd=folder)
    best = run_cli(["best", STUDY, "--format", "json"], cwd=folder)
    assert status.returncode == 0 and best.returncode == 0
    assert "test_" not in status.stdout and "test_" not in best.stdout
    _, children, _ = mlflow_runs(f"sqlite:///{folder / 'mlflow.db'}", STUDY)
    assert len(children) == 2 and all("final_val_f1" in run.data.metrics for run in children)
    assert not [key for run in children for key in run.data.metrics if "test" in key]
    # `final` reads the test file: its absence is one line, and nothing is created.
    line = one_line_error(run_cli(["final", STUDY], cwd=folder))
    assert "trainer.data.test" in line and "test.csv" in line
    assert not (folder / "ftsweep-runs" / STUDY / "final").exists()


def test_a_killed_final_continues_from_its_checkpoint_into_one_mlflow_run(finished: dict) -> None:
    folder, work = finished["folder"], finished["work"]
    log = (work / "logs" / "tuned-seed0.log").read_text()
    assert "resumed from the checkpoint of epoch 1" in log
    runs = final_runs(folder)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    parents, _, _ = mlflow_runs(f"sqlite:///{folder / 'mlflow.db'}", STUDY)
    assert runs[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    expected = {
        "README.md",
        "config.json",
        "final.json",
        "ftsweep_model.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert expected <= set(os.listdir(finished["model"]))
    before = digests(finished["model"])
    # Run again: the stored result is printed, nothing is fitted or logged again.
    again = run_cli(FINAL_ARGS, cwd=folder)
    assert again.returncode == 0, again.stderr
    assert "exists already" in again.stderr and "fitting" not in again.stderr
    assert again.stdout == finished["result"].stdout
    assert digests(finished["model"]) == before and len(final_runs(folder)) == 1
    # Other options on a finished final: one line, nothing changed.
    line = one_line_error(run_cli(["final", STUDY, "--seeds", "3"], cwd=folder))
    assert "--force" in line and digests(finished["model"]) == before


def test_the_model_card_and_final_json_carry_hyperparameters_and_test_metrics(finished: dict) -> None:
    import optuna

    folder, model = finished["folder"], finished["model"]
    report = json.loads((model / "final.json").read_text())
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'ftsweep.db'}")
    best = max(study.trials, key=lambda trial: (trial.value, -trial.number))
    assert report["trial"] == best.number and report["refit"] == "train"
    assert report["params"]["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert report["params"]["epochs"] == 4 and report["exported_seed"] in (0, 1)
    assert report["labels"] == ["no", "yes"] and report["n_test"] == 32
    test = report["exported"]["test"]
    for name in ("loss", "accuracy", "macro_f1"):
        low, high = report["exported"]["test_intervals"][name]
        assert low <= test[name] <= high
        assert report["seeds_test"][name]["n"] == 2 and report["seeds_test"][name]["sd"] >= 0
    assert set(report["exported"]["test_per_class"]) == {"no", "yes"}
    assert sum(map(sum, report["exported"]["test_confusion_matrix"])) == 32
    assert "macro_f1" in report["exported"]["generalization_gap"]
    difference = report["baseline"]["difference"]["macro_f1"]
    assert difference["interval"][0] <= difference["difference"] <= difference["interval"][1]
    assert report["baseline"]["params"]["learning_rate"] == pytest.approx(3e-5)  # the trainer's default
    test_sha = hashlib.sha256((folder / "data" / "test.csv").read_bytes()).hexdigest()
    assert report["data"]["test"]["sha256"] == test_sha
    card = (model / "README.md").read_text()
    assert card.startswith("---\n") and "base_model:" in card and "pipeline_tag: text-classification" in card
    for text in (
        "## Intended use",
        "## Evaluation",
        "## Baseline comparison",
        "learning_rate",
        test_sha,
        f"{test['macro_f1']:.4f}",
        "95%",
    ):
        assert text in card
    stdout = finished["result"].stdout
    assert "over 2 seeds" in stdout and "±" in stdout
    assert "against the default config" in stdout and "difference" in stdout
    runs = final_runs(folder)
    assert runs[0].data.metrics["test_macro_f1"] == pytest.approx(test["macro_f1"])
    assert "baseline_difference_macro_f1_ci_low" in runs[0].data.metrics
    assert runs[0].data.params["learning_rate"] == str(report["params"]["learning_rate"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    artifacts = {artifact.path for artifact in client.list_artifacts(runs[0].info.run_id)}
    assert {"confusion_matrix.png", "README.md", "final.json"} <= artifacts
    # Only the exported seed's model is kept among the fits (the others' predictions stay).
    kept = sorted(path.parent.name for path in (finished["work"] / "fits").glob("*/model"))
    assert kept == [f"tuned-seed{report['exported_seed']}"]


def test_the_export_predicts_the_same_labels_everywhere(finished: dict) -> None:
    import mlflow
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, model_dir = finished["folder"], finished["model"]
    texts = pd.read_csv(folder / "data" / "test.csv")["text"].tolist()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "no", 1: "yes"} and model.config.label2id == {"no": 0, "yes": 1}
    with torch.no_grad():
        logits = model(
            **tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        ).logits
    expected = [model.config.id2label[int(index)] for index in logits.argmax(dim=-1)]

    scored = run_cli(
        ["predict", str(model_dir), "data/test.csv", "--out", "scored.csv", "--batch-size", "5"], cwd=folder
    )
    assert scored.returncode == 0, scored.stderr
    table = pd.read_csv(folder / "scored.csv")
    assert list(table.columns) == ["text", "label", "predicted_label", "probability_no", "probability_yes"]
    assert table["predicted_label"].tolist() == expected
    assert (table["probability_no"] + table["probability_yes"]).round(6).eq(1).all()

    uri = f"models:/{REGISTERED}/1"
    registry = run_cli(["predict", uri, "data/test.csv", "--out", "scored.jsonl"], cwd=folder)
    assert registry.returncode == 0, registry.stderr
    assert pd.read_json(folder / "scored.jsonl", lines=True)["predicted_label"].tolist() == expected

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    version = MlflowClient().get_model_version(REGISTERED, "1")
    assert version.tags["ftsweep.study"] == STUDY and version.tags["ftsweep.trial_number"].isdigit()
    cwd = os.getcwd()
    os.chdir(folder)  # the experiment's artifact location is relative to the store's folder
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    finally:
        os.chdir(cwd)
    assert pyfunc.metadata.signature is not None
    assert pyfunc.predict(texts)["label"].tolist() == expected


def test_bad_input_is_one_line_and_changes_nothing(finished: dict, tmp_path: Path) -> None:
    folder, model_dir = finished["folder"], finished["model"]
    before = digests(model_dir)
    line = one_line_error(run_cli(["final", STUDY, "--trial", "99"], cwd=folder))
    assert "--trial 99" in line and "complete trials: 0, 1" in line
    write_csv(folder / "no-text.csv", [{"message": "hello", "label": "no"}])
    line = one_line_error(run_cli(["predict", str(model_dir), "no-text.csv", "--out", "out.csv"], cwd=folder))
    assert "no-text.csv" in line and "'text'" in line and "message" in line
    assert not (folder / "out.csv").exists()
    (tmp_path / "not-a-model").mkdir()
    line = one_line_error(run_cli(["predict", str(tmp_path / "not-a-model"), "data/test.csv"], cwd=folder))
    assert "not-a-model" in line and "ftsweep final" in line
    assert digests(model_dir) == before


def test_final_needs_a_finished_trial_and_a_trainer_with_the_final_hooks(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("failing", n_trials=2, workers=1, fail_trials=[0, 1]))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 2
    line = one_line_error(run_cli(["final", "failing"], cwd=tmp_path))
    assert "no finished" in line and "failing" in line
    write_sweep(tmp_path, fault_sweep("hookless", n_trials=1, workers=1), name="hookless.yaml")
    assert run_cli(["run", "hookless.yaml"], cwd=tmp_path).returncode == 0
    line = one_line_error(run_cli(["final", "hookless"], cwd=tmp_path))
    assert "final_fit" in line and "fault_trainer:FaultTrainer" in line
    assert not (tmp_path / "ftsweep-runs" / "hookless" / "final").exists()


def test_a_mean_pooling_model_refitted_on_train_and_validation_predicts_as_it_was_tested(
    tmp_path: Path, tiny_model: Path
) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    write_data(tmp_path)
    sweep = text_sweep("pooled", tiny_model, n_trials=1, epochs=2)
    sweep["trainer"]["params"] = {
        "pooling": "mean"
    }  # not a transformers option: only ftsweep's loader has it
    write_sweep(tmp_path, sweep)
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    result = run_cli(["final", "pooled", "--refit", "train+val"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    work = tmp_path / "ftsweep-runs" / "pooled" / "final"
    report = json.loads((work / "model" / "final.json").read_text())
    assert report["refit"] == "train+val" and report["epochs"] in (1, 2) and report["pooling"] == "mean"
    assert f"refit train+val for {report['epochs']} epochs" in result.stdout
    assert report["data"]["train"]["rows"] == 64 + 32  # trained on train and validation together
    card = (work / "model" / "README.md").read_text()
    assert "train + validation" in card and "pooling: mean" in card
    # What the fit scored on the test split is what `predict` and the MLflow model give.
    fitted = json.loads((work / "fits" / "tuned-seed0" / "predictions.json").read_text())
    probabilities = np.asarray(fitted["splits"]["test"]["probabilities"])
    expected = [fitted["labels"][index] for index in probabilities.argmax(axis=1)]
    scored = run_cli(
        ["predict", str(work / "model"), "data/test.csv", "--out", "scored.parquet"], cwd=tmp_path
    )
    assert scored.returncode == 0, scored.stderr
    table = pd.read_parquet(tmp_path / "scored.parquet")
    assert table["predicted_label"].tolist() == expected
    np.testing.assert_allclose(
        table[["probability_no", "probability_yes"]].to_numpy(), probabilities, atol=1e-5
    )
    model_uri = json.loads((work / "mlflow.json").read_text())["model_uri"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    finally:
        os.chdir(cwd)
    texts = pd.read_csv(tmp_path / "data" / "test.csv")["text"].tolist()
    assert pyfunc.predict(texts)["label"].tolist() == expected
    assert pyfunc.predict(pd.DataFrame({"text": texts}))["label"].tolist() == expected
    # Logging the model warned about the missing type hint of `predict` (a first-hour stumble).
    assert "Add type hints" not in result.stderr + result.stdout


def test_without_a_test_split_final_fits_and_exports_untested(tmp_path: Path, tiny_model: Path) -> None:
    write_data(tmp_path)
    write_sweep(tmp_path, text_sweep("untested", tiny_model, test=False, n_trials=1, epochs=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    result = run_cli(["final", "untested"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nothing was tested" in result.stdout
    model = tmp_path / "ftsweep-runs" / "untested" / "final" / "model"
    report = json.loads((model / "final.json").read_text())
    assert "test" not in report["exported"] and report["n_test"] == 0
    assert "not tested" in (model / "README.md").read_text()
