"""``ftsweep ui``: the MLflow UI on a tracking store, announced once it answers, at the study's runs."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from typing import Any

from orchestrator.errors import UserError
from orchestrator.storage import TrackingLocation

#: How long the server may take to answer: MLflow imports a lot and starts its workers first.
START_SECONDS = 600.0


def runs_link(base_url: str, tracking: TrackingLocation, experiment: str | None) -> str:
    """The experiment's runs page (MLflow 3 would land on its GenAI traces page), else the experiments list.

    MLflow's UI routes after ``#``: ``#/experiments/ID/runs`` is the runs table of an experiment.
    """
    if experiment:
        try:
            from mlflow.tracking import MlflowClient

            found = MlflowClient(tracking_uri=tracking.uri).get_experiment_by_name(experiment)
        except Exception:  # noqa: BLE001 - a store that cannot be read still gets its UI; the link is a guess
            found = None
        if found is not None:
            return f"{base_url}/#/experiments/{found.experiment_id}/runs"
    return f"{base_url}/#/experiments"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def serve(command: list[str], environment: dict[str, str], health_url: str, announce: str) -> int:
    """Run the MLflow UI, print ``announce`` once ``health_url`` answers, and wait until it stops.

    Ctrl-C reaches the server with this process (one process group); a SIGTERM to this process is
    passed on to it.

    Raises:
        UserError: when the server exits before it answers (a port in use, say).
    """
    process = subprocess.Popen(command, env=environment)

    def pass_on(signum: int, frame: Any) -> None:
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(health_url):
            if process.poll() is not None:
                raise UserError(
                    f"the MLflow UI exited (code {process.returncode}) before it answered at {health_url}; "
                    "is the port in use? choose another with --port"
                )
            if time.monotonic() > deadline:
                process.terminate()
                raise UserError(f"the MLflow UI did not answer at {health_url} within {START_SECONDS:.0f} s")
            time.sleep(0.5)
        print(announce, flush=True)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            code = process.wait()  # the server got the same Ctrl-C
        return 130 if code < 0 or code == 130 else code
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            process.wait()


def connect_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host`` (all interfaces: the loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
