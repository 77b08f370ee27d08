"""The typed messages at the process boundaries (orchestrator.messages), without processes."""

from __future__ import annotations

import math

import pytest

from orchestrator._tracking_writer import RunWriter
from orchestrator.messages import (
    Completed,
    EpochReport,
    Failed,
    Interrupted,
    Pruned,
    WriterError,
    from_ray_result,
    to_ray_result,
)


@pytest.mark.parametrize(
    "message",
    [
        EpochReport(2, {"val_f1": 0.5, "val/loss": 0.7}),
        Completed({"val_f1": 0.8, "best_epoch": 2.0}),
        Pruned("pruned after epoch 1"),
        Failed("RuntimeError: broke", "Traceback ..."),
        Interrupted("no space left on device", disk_full=True),
    ],
)
def test_a_message_survives_a_tune_result_with_tunes_own_keys(message) -> None:
    result = to_ray_result(message, "node abc CUDA_VISIBLE_DEVICES=0")
    # What Tune adds to every result, and a numeric key a later Tune might add: never a metric.
    result.update({"time_total_s": 1.5, "training_iteration": 3, "pid": 42, "some_new_tune_number": 7.0})

    back, device = from_ray_result(result)

    assert back == message
    assert device == "node abc CUDA_VISIBLE_DEVICES=0"


def test_asha_finds_the_epoch_and_the_metric_at_the_top_level_of_a_report() -> None:
    result = to_ray_result(EpochReport(3, {"val_f1": 0.25}), "cpu")
    assert result["epoch"] == 3 and result["val_f1"] == 0.25


def test_a_non_finite_metric_survives_the_trip() -> None:
    back, _ = from_ray_result(to_ray_result(EpochReport(1, {"loss": math.nan}), "cpu"))
    assert isinstance(back, EpochReport) and math.isnan(back.metrics["loss"])


def test_a_result_ftsweep_did_not_send_carries_no_message() -> None:
    assert from_ray_result({"score": 1.0, "ftsweep": 3}) == (None, None)
    assert from_ray_result({"ftsweep": "{not json"}) == (None, None)


def test_the_writer_answers_an_unknown_message_with_an_error_and_goes_on() -> None:
    sent: list = []
    writer = RunWriter(object(), "0", "study", "parent", 1.0, sent.append)

    writer.handle(("start", 1, 0, {}, "cpu", None))  # the old tuple form is no message

    assert sent == [WriterError("MLflow writer: unknown message tuple")]
