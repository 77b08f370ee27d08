"""``ftsweep report``: collect a study, draw it, write the HTML and the PNGs, log them to MLflow.

Where the files go: ``ftsweep-runs/NAME/report/report.html`` and ``.../report/figures/NN-key.png``
(the study's work folder, through :meth:`~orchestrator.storage.StoreLocation.study_dir`), or beside
``--out FILE``. When the study is tracked, both are logged to the study's MLflow parent run under
``report/`` (the run tagged ``ftsweep.role = study``).

At the end of ``run``, ``resume`` and ``final`` the report is made by a child process
(:func:`start_in_background`): the sweep ends when its trials do, not when its report is drawn;
the child's output goes to ``report/report.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.storage import StoreLocation

REPORT_FOLDER = "report"
HTML_NAME = "report.html"
LOG_NAME = "report.log"
ARTIFACT_PATH = "report"
#: ``FTSWEEP_REPORT=off``: no report at the end of ``run`` / ``resume`` / ``final``.
REPORT_ENV = "FTSWEEP_REPORT"
#: The hidden flag of the background child (:func:`write_report`'s ``only_if_kept``).
BACKGROUND_FLAG = "--background"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote and logged."""

    html: Path
    pngs: list[Path]
    logged_to: str | None  # the MLflow parent run's id, when logged
    warnings: list[str]


def default_html(location: StoreLocation, study_name: str) -> Path:
    """``ftsweep-runs/NAME/report/report.html`` beside the study's store."""
    return location.study_dir(study_name) / REPORT_FOLDER / HTML_NAME


def write_report(
    location: StoreLocation,
    study_name: str,
    out: Path | None = None,
    *,
    log_to_mlflow: bool = True,
    only_if_kept: bool = False,
) -> ReportFiles | None:
    """Make the report of a study: HTML, one PNG per figure, and (when tracked) the MLflow artifacts.

    Everything is drawn in memory first, then written at once, so a reader never finds half a report.

    Args:
        only_if_kept: write nothing (and return None) when the study's folder is gone by the time the
            report is drawn (``ftsweep delete`` ran meanwhile): the background report of
            :func:`start_in_background` must not bring a deleted study's folder back.

    Raises:
        StudyNotFound: for a study the store does not hold.
        UserError: for an ``out`` that is not an ``.html`` file or cannot be written.
    """
    from orchestrator.errors import UserError
    from orchestrator.report_data import collect
    from orchestrator.report_figures import draw_all
    from orchestrator.report_html import render
    from orchestrator.report_png import render_pngs

    html_path = out if out is not None else default_html(location, study_name)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {html_path}: the report is an HTML file; give a name ending in .html")
    data = collect(location, study_name, read_mlflow=True)
    drawn = draw_all(data)
    page = render(data, drawn)
    pngs = render_pngs(data, drawn)
    figures = html_path.parent / ("figures" if out is None else f"{html_path.stem}-figures")
    if only_if_kept and not location.study_dir(study_name).is_dir():
        return None
    try:
        figures.mkdir(parents=True, exist_ok=True)
        for old in figures.glob("[0-9][0-9]-*.png"):  # a figure renamed since the last report
            old.unlink()
        paths = []
        for name, content in pngs:
            (figures / name).write_bytes(content)
            paths.append(figures / name)
        temporary = html_path.with_name(html_path.name + ".tmp")
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, html_path)  # a reader never sees half a page
    except OSError as error:
        raise UserError(f"report: cannot write {html_path.parent} ({error.strerror or error})") from None
    warnings: list[str] = []
    run_id = _log(location, study_name, html_path, figures, warnings) if log_to_mlflow else None
    return ReportFiles(html_path, paths, run_id, warnings)


def _log(
    location: StoreLocation, study_name: str, html_path: Path, figures: Path, warnings: list[str]
) -> str | None:
    """Log the HTML and the PNGs to the study's MLflow parent run; a problem is a warning, not an error."""
    from orchestrator.errors import UserError
    from orchestrator.storage import mask_text
    from orchestrator.study import load_study, open_existing_storage, stored_sweep

    try:
        sweep = stored_sweep(load_study(study_name, open_existing_storage(location, study_name)), location)
    except UserError:
        return None
    if not sweep.tracking.enabled:
        return None
    try:
        from orchestrator._tracking_writer import ROLE_TAG, STUDY_TAG, mlflow_client

        client = mlflow_client(sweep.tracking_location.uri)
        experiment = client.get_experiment_by_name(sweep.experiment_name)
        if experiment is None:
            warnings.append(f"MLflow: no experiment {sweep.experiment_name!r}; the report was not logged")
            return None
        quoted = study_name.replace("\\", "\\\\").replace("'", "\\'")
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{quoted}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1,
        )
        if not runs:
            warnings.append("MLflow: the study has no parent run; the report was not logged")
            return None
        run_id = str(runs[0].info.run_id)
        client.log_artifact(run_id, str(html_path), ARTIFACT_PATH)
        client.log_artifacts(run_id, str(figures), f"{ARTIFACT_PATH}/figures")
        return run_id
    except Exception as error:  # noqa: BLE001 - MLflow raises many kinds; the files are written anyway
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.append(f"MLflow: the report was not logged ({mask_text(text)})")
        return None


def automatic_report_wanted() -> bool:
    """False when ``$FTSWEEP_REPORT`` is ``off`` (or ``0``, ``false``, ``no``): no report at the end of a
    sweep (``ftsweep report NAME`` still makes one)."""
    return os.environ.get(REPORT_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def start_in_background(location: StoreLocation, study_name: str) -> Path | None:
    """Start ``ftsweep report NAME`` as a child process that outlives this one; the HTML it will write.

    The child's output goes to ``report/report.log``. The store's URL reaches it through
    ``$FTSWEEP_STORAGE``, not its command line (which ``ps`` shows every user). Returns None when
    ``$FTSWEEP_REPORT`` is off or the child cannot be started: a sweep never fails for its report.
    """
    if not automatic_report_wanted():
        return None
    folder = location.study_dir(study_name) / REPORT_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOG_NAME, "wb") as log:
            subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "report", BACKGROUND_FLAG, "--", study_name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FTSWEEP_STORAGE": location.url, "PYTHONPATH": _python_path()},
                cwd=str(location.work_root),
                start_new_session=True,  # a Ctrl-C meant for the sweep does not cut its report short
            )
    except OSError:
        return None
    return folder / HTML_NAME


def announce(html: Path | None, say: Callable[[str], None]) -> None:
    """One line saying where the background report goes (nothing when none was started)."""
    if html is not None:
        say(f"report: {html} (drawn in the background; its log is {html.with_name(LOG_NAME)})")


def _python_path() -> str:
    """The folder holding the ``orchestrator`` package first, so the child runs this very ftsweep."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
