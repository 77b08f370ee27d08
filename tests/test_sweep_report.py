"""The sweep report (issue 14): every figure, in one HTML file that opens offline and in Chromium,
a PNG per figure, logged to the study's MLflow run, made by itself at the end of a sweep, and
honest about what it lacks."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli, write_sweep

from orchestrator.report_data import FIGURES

STUDY = "gaps"


def gap_sweep(name: str = STUDY, n_trials: int = 6, tracking: bool = True) -> dict:
    """A sweep of the tests' GapTrainer: train/val metrics and two regularization parameters."""
    return {
        "study": {
            "name": name,
            "metric": "val_f1",
            "n_trials": n_trials,
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
        },
        "trainer": {"name": "report_trainer:GapTrainer", "epochs": 3},
        "search_space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        "execution": {"workers": 2},
        "tracking": {"enabled": tracking},
    }


def wait_for(condition, what: str, timeout: float = 300.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def report_artifacts(folder: Path) -> list[str]:
    """The files under ``report/`` of the study's MLflow parent run."""
    from conftest import mlflow_runs

    (parent,), _, client = mlflow_runs(f"sqlite:///{folder / 'mlflow.db'}", STUDY)
    listed = [item.path for item in client.list_artifacts(parent.info.run_id, "report")]
    figures = [item.path for item in client.list_artifacts(parent.info.run_id, "report/figures")]
    return listed + figures


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep whose report the end of `ftsweep run` made by itself, in the background."""
    folder = tmp_path_factory.mktemp("report")
    write_sweep(folder, gap_sweep())
    result = run_cli(["run", "sweep.yaml"], cwd=folder, FTSWEEP_REPORT="on")
    assert result.returncode == 0, result.stderr
    html = folder / "ftsweep-runs" / STUDY / "report" / "report.html"
    assert f"report: {html}" in result.stderr
    # The sweep ended before its report: the child process draws it and logs it to MLflow.
    wait_for(lambda: "report/report.html" in report_artifacts(folder), "the report in the MLflow run")
    return folder


@pytest.mark.slow
def test_the_report_of_a_finished_sweep_holds_every_figure(finished_sweep: Path) -> None:
    html = (finished_sweep / "ftsweep-runs" / STUDY / "report" / "report.html").read_text(encoding="utf-8")
    for key, title in FIGURES:
        assert title in html, title
        if key != "final":  # drawn once `ftsweep final` has run
            assert f'id="figure-{key}"' in html, key
    assert "no complete `ftsweep final gaps` yet" in html
    # The generalization gap against each regularization parameter searched, not the learning rate.
    assert '"text":"weight_decay"' in html and '"text":"dropout"' in html
    assert '"text":"learning_rate"' not in html
    # Self-contained: plotly's JavaScript is in the page, and the page fetches no script.
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert bundle in html
    page = html.replace(bundle, "")
    assert "<script src=" not in page and "cdn.plot.ly" not in page


@pytest.mark.slow
def test_each_figure_has_a_png_and_the_report_is_logged_to_the_studys_mlflow_run(
    finished_sweep: Path,
) -> None:
    figures = finished_sweep / "ftsweep-runs" / STUDY / "report" / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert [path.stem.split("-", 1)[1] for path in pngs] == [key for key, _ in FIGURES]
    for path in pngs:
        assert path.read_bytes().startswith(b"\x89PNG"), path
        # A drawn figure, not a note: the gap figure has points in two panels and a colour bar.
        assert path.stat().st_size > (2_000 if path.stem.endswith("final") else 10_000), path
    logged = report_artifacts(finished_sweep)
    assert "report/report.html" in logged
    assert sorted(f"report/figures/{path.name}" for path in pngs) == sorted(
        item for item in logged if item.startswith("report/figures/")
    )


def chromium() -> str:
    """The Chromium binary; off CI a missing one skips the test, on CI it fails it (.ci/run installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, and CI needs it (.ci/run installs it with apt-get)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


@pytest.mark.slow
def test_the_report_renders_in_a_headless_chromium(finished_sweep: Path) -> None:
    import numpy as np
    from PIL import Image

    browser = chromium()
    html = finished_sweep / "ftsweep-runs" / STUDY / "report" / "report.html"
    shot = finished_sweep / "screenshot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (900, 1200, 3)
    assert (pixels != 255).any(axis=2).mean() > 0.02, "a blank page"
    # The best-so-far line of the optimization history, which only plotly's JavaScript draws.
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((abs(red - 214) < 25) & (green < 80) & (blue < 80)).sum() > 100, "the history was not drawn"


def stored_study(folder: Path, name: str, n_complete: int) -> None:
    """A study with the sweep record ftsweep keeps and ``n_complete`` complete trials (no MLflow)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from orchestrator.study import save_sweep_record

    sweep = gap_sweep(name, tracking=False)
    sweep["study"]["storage"] = f"sqlite:///{folder / 'ftsweep.db'}"
    study = optuna.create_study(study_name=name, storage=sweep["study"]["storage"], direction="maximize")
    save_sweep_record(study, {"sweep": sweep, "base_dir": str(folder)})
    for number in range(n_complete):
        study.add_trial(
            optuna.trial.create_trial(
                params={"weight_decay": 0.01 * (number + 1)},
                distributions={"weight_decay": FloatDistribution(1e-4, 0.1, log=True)},
                value=0.7 + number / 100,
                intermediate_values={1: 0.6, 2: 0.7 + number / 100},
                user_attrs={"device": "cuda:0"},
            )
        )


def test_a_study_with_no_trial_gets_a_report_that_says_so(tmp_path: Path) -> None:
    stored_study(tmp_path, "empty", 0)
    result = run_cli(["report", "empty", "--storage", f"sqlite:///{tmp_path / 'ftsweep.db'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    html_path = tmp_path / "ftsweep-runs" / "empty" / "report" / "report.html"
    assert f"report: {html_path}" in result.stdout
    html = html_path.read_text(encoding="utf-8")
    assert "the study has no trial yet" in html
    for _, title in FIGURES:
        assert title in html
    assert 'id="figure-' not in html  # nothing drawn, each section says why
    assert len(list((html_path.parent / "figures").glob("*.png"))) == len(FIGURES)


def test_a_study_with_one_trial_gets_a_report_that_says_what_is_missing(tmp_path: Path) -> None:
    from orchestrator.report_build import write_report
    from orchestrator.storage import StoreLocation

    stored_study(tmp_path, "single", 1)
    out = tmp_path / "one.html"
    files = write_report(StoreLocation.resolve(f"sqlite:///{tmp_path / 'ftsweep.db'}"), "single", out)
    assert files is not None and files.html == out and files.logged_to is None
    html = out.read_text(encoding="utf-8")
    assert "one complete trial: importances need at least 2" in html
    assert "needs at least 2 complete trials with parameters; the study has 1" in html
    assert "MLflow tracking is off for this study" in html  # why there are no train curves and no gap
    assert 'id="figure-history"' in html and 'id="figure-top"' in html
    assert sorted(p.name for p in (tmp_path / "one-figures").iterdir())[0] == "01-history.png"


def test_report_of_an_unknown_study_or_a_wrong_out_is_a_one_line_error(tmp_path: Path) -> None:
    stored_study(tmp_path, "there", 0)
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    for args, fragment in (
        (["report", "absent", "--storage", storage], "absent"),
        (["report", "there", "--storage", storage, "--out", "report.pdf"], "give a name ending in .html"),
    ):
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _big_study(n: int):  # noqa: ANN202
    """A ReportData of ``n`` trials on 4 GPUs, made in memory (no store)."""
    from orchestrator.report_data import ReportData, TrialRow

    start = datetime.datetime(2026, 1, 1)
    trials = []
    for number in range(n):
        began = start + datetime.timedelta(minutes=number // 4 * 3)
        value = 0.5 + (number % 97) / 200
        trials.append(
            TrialRow(
                number=number,
                state="PRUNED" if number % 5 == 0 else "COMPLETE",
                value=value,
                params={"weight_decay": 1e-4 * (1 + number % 50), "dropout": (number % 7) / 14},
                curve={1: value - 0.1, 2: value - 0.05, 3: value},
                device=f"cuda:{number % 4}",
                start=began,
                end=began + datetime.timedelta(minutes=2),
                run_id=None,
                gap=0.2 - (number % 7) / 50,
            )
        )
    return ReportData("big", "val_f1", "maximize", n, trials, {"weight_decay": True})


def test_a_study_of_5000_trials_is_sampled_or_aggregated_and_says_so() -> None:
    from orchestrator.report_figures import draw_all

    notes = {item.key: item.note or "" for item in draw_all(_big_study(5000))}
    assert "showing the best 100 and a random 400" in notes["parallel"]
    assert "the best 20 drawn, every trial summarized as a median and a 10-90% band" in notes["curves"]
    assert "showing the best 200 and a random 1800" in notes["gap"]
    assert "busy share per time slice" in notes["timeline"]
    assert "the best 20 of 4,000 complete trials" in notes["top"]
    # At 50 trials every trial is drawn: no sampling note.
    small = {item.key: item.note for item in draw_all(_big_study(50))}
    assert small["parallel"] is None and small["gap"] is None and small["timeline"] is None


def test_the_report_reads_the_file_final_writes() -> None:
    from orchestrator.final import RESULT_FILE
    from orchestrator.report_data import FINAL_FILE

    assert FINAL_FILE == RESULT_FILE


def test_the_report_at_the_end_of_a_sweep_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from orchestrator.report_build import start_in_background
    from orchestrator.storage import StoreLocation

    monkeypatch.setenv("FTSWEEP_REPORT", "off")
    assert start_in_background(StoreLocation.resolve(f"sqlite:///{tmp_path / 'x.db'}"), "x") is None
    assert not (tmp_path / "ftsweep-runs").exists()


@pytest.mark.slow
def test_resume_makes_the_report_again(finished_sweep: Path) -> None:
    # Last in this file: the report it starts rewrites the files the tests above read.
    html = finished_sweep / "ftsweep-runs" / STUDY / "report" / "report.html"
    before = html.stat().st_mtime_ns
    result = run_cli(["resume", STUDY], cwd=finished_sweep, FTSWEEP_REPORT="on")
    assert result.returncode == 0, result.stderr
    assert f"report: {html} (drawn in the background" in result.stderr
    wait_for(lambda: html.stat().st_mtime_ns != before, "the report drawn again")


def test_a_study_of_two_objectives_draws_its_front_and_the_rest_on_its_first_and_says_so() -> None:
    import optuna

    from orchestrator.report_data import from_study
    from orchestrator.report_figures import draw_all

    study = optuna.create_study(directions=["maximize", "minimize"])
    for number in range(6):
        study.enqueue_trial({"dropout": number / 10})
        study.optimize(lambda t: (t.suggest_float("dropout", 0, 1), 1 - t.params["dropout"]), n_trials=1)
    data = from_study(study)
    assert (
        "this study has 2 objectives: the Pareto front figure draws objective 0 against objective 1; "
        "the other figures show the first one" in data.notes[0]
    )
    assert data.best is not None and data.best.params == {"dropout": 0.5}
    assert data.front == [5]  # more dropout is better on both objectives: the last trial dominates
    drawn = {item.key: item.figure is not None for item in draw_all(data)}
    assert drawn["pareto"] and drawn["history"] and drawn["importances"] and drawn["top"]
