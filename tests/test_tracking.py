"""The MLflow tracker on a real SQLite tracking store: batching, live metrics, limits, re-runs."""

from __future__ import annotations

import time

from conftest import mlflow_runs

from orchestrator._tracking_writer import RunWriter
from orchestrator.messages import EndRun, LogMetrics, RunCreated, StartRun
from orchestrator.tracking import StudyTracker, mlflow_client


def open_tracker(tmp_path, name: str = "tracked", flush_seconds: float | None = None) -> StudyTracker:
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", name, name, flush_seconds=flush_seconds)
    tracker.open()
    tracker.start_study(params={"n_trials": 2}, artifacts={}, tags={})
    return tracker


class CountingClient:
    """The real MlflowClient, with its calls counted."""

    def __init__(self, client) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


def test_the_writer_merges_a_quick_trial_into_three_calls(tmp_path):
    """What the writer process runs, in this process, so that its MLflow calls can be counted."""
    tracker = open_tracker(tmp_path)
    client = CountingClient(mlflow_client(tracker.tracking_uri))
    sent: list = []
    writer = RunWriter(client, tracker._experiment_id, "tracked", tracker.parent_run_id, 600.0, sent.append)
    writer.handle(StartRun(7, 0, {"lr": 0.1, "dropout": 0.2}, "cpu"))
    for epoch in (1, 2, 3):
        writer.handle(LogMetrics(7, {"val_f1": 0.5 + epoch / 10, "loss": 1.0 / epoch}, epoch, 1000 + epoch))
        writer.flush()  # not due yet: nothing written
    writer.handle(EndRun(7, "COMPLETE", 0.8, None, {"val_f1": 0.8}, None, {}, 2000))
    assert tracker.close() == []

    assert client.calls == ["create_run", "log_batch", "set_terminated"]
    (created,) = sent
    assert isinstance(created, RunCreated) and created.key == 7
    run_id = created.run_id
    _, (child,), mlflow = mlflow_runs(tracker.tracking_uri, "tracked")
    assert child.info.run_id == run_id and child.info.status == "FINISHED"
    assert child.data.params == {"lr": "0.1", "dropout": "0.2"}
    assert child.data.tags["ftsweep.state"] == "COMPLETE"
    assert [(m.step, round(m.value, 6)) for m in mlflow.get_metric_history(run_id, "val_f1")] == [
        (1, 0.6),
        (2, 0.7),
        (3, 0.8),
    ]
    assert child.data.metrics["final_objective"] == 0.8


def test_a_quick_trial_through_the_writer_process(tmp_path):
    tracker = open_tracker(tmp_path)
    run = tracker.start_trial(0, {"lr": 0.1, "dropout": 0.2}, "cpu")
    for epoch in (1, 2, 3):
        tracker.log_epoch(run, epoch, {"val_f1": 0.5 + epoch / 10, "loss": 1.0 / epoch})
    tracker.end_trial(run, "COMPLETE", value=0.8, summary={"val_f1": 0.8})
    assert tracker.close() == []
    parents, (child,), client = mlflow_runs(tracker.tracking_uri, "tracked")
    assert child.info.run_id == run.result(timeout=0)
    assert parents[0].info.status == "FINISHED"
    assert child.data.params == {"lr": "0.1", "dropout": "0.2"}
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_f1")] == [1, 2, 3]


def test_a_long_trials_epochs_show_up_before_it_ends(tmp_path):
    tracker = open_tracker(tmp_path, flush_seconds=0.2)
    run = tracker.start_trial(0, {"lr": 0.1}, "cpu")
    tracker.log_epoch(run, 1, {"val_f1": 0.5})
    parents, children, client = mlflow_runs(tracker.tracking_uri, "tracked")
    # the writer process starts (imports MLflow) first: slow on a loaded machine
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        data = client.get_run(run.result()).data
        if "val_f1" in data.metrics:
            break
        time.sleep(0.05)
    assert data.metrics == {"val_f1": 0.5}
    assert data.params == {"lr": "0.1"}
    assert client.get_run(run.result()).info.status == "RUNNING"
    tracker.end_trial(run, "PRUNED", value=0.5, reason="pruned at epoch 1")
    assert tracker.close() == []
    assert client.get_run(run.result()).info.status == "KILLED"


def test_more_params_and_metrics_than_one_mlflow_call_takes(tmp_path):
    tracker = open_tracker(tmp_path)
    params = {f"p{index}": index for index in range(250)}
    run = tracker.start_trial(0, params, "cpu")
    for epoch in range(1, 5):
        tracker.log_epoch(run, epoch, {f"m{index}": float(index) for index in range(300)})
    tracker.end_trial(run, "COMPLETE", value=1.0)
    assert tracker.close() == []
    _, (child,), client = mlflow_runs(tracker.tracking_uri, "tracked")
    assert len(child.data.params) == 250
    assert len(client.get_metric_history(child.info.run_id, "m299")) == 4


def test_the_parent_run_keeps_the_best_trial(tmp_path):
    tracker = open_tracker(tmp_path)
    for number, value in enumerate((0.3, 0.7)):
        run = tracker.start_trial(number, {"x": value}, "cpu")
        tracker.end_trial(run, "COMPLETE", value=value)
        tracker.set_best(number, value, {"x": value})
    assert tracker.close() == []
    (parent,), children, client = mlflow_runs(tracker.tracking_uri, "tracked")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == "1"
    assert [m.value for m in client.get_metric_history(parent.info.run_id, "best_value")] == [0.3, 0.7]
    assert len(children) == 2


def test_a_rerun_continues_the_same_run_and_relogs_its_params(tmp_path):
    tracker = open_tracker(tmp_path)
    first = tracker.start_trial(0, {"lr": 0.1}, "cpu")
    tracker.log_epoch(first, 1, {"val_f1": 0.5})
    tracker.end_trial(first, "INTERRUPTED", reason="SIGKILL")
    run_id = first.result()
    again = tracker.start_trial(3, {"lr": 0.1}, "cpu", run_id=run_id)
    tracker.log_epoch(again, 2, {"val_f1": 0.6})
    tracker.end_trial(again, "COMPLETE", value=0.6)
    assert tracker.close() == []
    _, (child,), client = mlflow_runs(tracker.tracking_uri, "tracked")
    assert again.result() == run_id == child.info.run_id
    assert child.data.tags["ftsweep.trial_number"] == "3"
    assert child.data.tags["ftsweep.earlier_trial_numbers"] == "0"
    assert [m.step for m in client.get_metric_history(run_id, "val_f1")] == [1, 2]


def test_a_failing_store_is_reported_not_raised(tmp_path):
    tracker = open_tracker(tmp_path)
    run = tracker.start_trial(0, {"lr": 0.1}, "cpu")
    tracker.end_trial(run, "COMPLETE", value=1.0)
    tracker.log_artifacts("no-such-run", tmp_path, "checkpoint")
    errors = tracker.close()
    assert len(errors) == 1 and errors[0].startswith("MLflow:")
    _, (child,), _ = mlflow_runs(tracker.tracking_uri, "tracked")
    assert child.info.status == "FINISHED"


def test_the_writer_keeps_what_a_killed_driver_sent(tmp_path):
    tracker = open_tracker(tmp_path)
    run = tracker.start_trial(0, {"lr": 0.1}, "cpu")
    tracker.log_epoch(run, 1, {"val_f1": 0.5})
    process = tracker._process
    tracker._outbox.put(None)  # the pipe closes with no "close" message, as when the driver dies
    assert process.wait(timeout=120) == 0
    _, (child,), client = mlflow_runs(tracker.tracking_uri, "tracked")
    assert child.info.status == "RUNNING"  # a resume continues it
    assert child.data.metrics == {"val_f1": 0.5}
    assert child.data.params == {"lr": "0.1"}
