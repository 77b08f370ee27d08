"""The README's "Your own trainer on the epoch engine" example, run exactly as written."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from trainers.base import TrialContext

HEADING = "### Your own trainer on the epoch engine"


def readme_example() -> str:
    """The first Python block under the example's heading in README.md."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found, f"README.md: no python block under {HEADING!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def line_trainer() -> type:
    namespace: dict[str, object] = {"__name__": "readme_engine_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace["LineTrainer"]  # type: ignore[return-value]


def run(trainer_class: type, checkpoint_dir: Path, **params: object):
    reports: list[tuple[int, dict[str, float]]] = []
    lines: list[str] = []
    trainer = trainer_class(trainer_class.Settings(), base_dir=checkpoint_dir.parent)
    ctx = TrialContext(
        trial_number=0,
        params={"learning_rate": 0.3, "epochs": 6, "batch_size": 32, **params},
        reporter=lambda epoch, metrics: reports.append((epoch, metrics)) or False,
        checkpoint_dir=checkpoint_dir,
        metric="val_loss",
        direction="minimize",
        logger=lines.append,
    )
    return trainer.run(ctx), reports, lines


def test_the_example_trains_reports_and_resumes(line_trainer: type, tmp_path: Path) -> None:
    result, reports, lines = run(line_trainer, tmp_path / "checkpoint")
    assert [epoch for epoch, _ in reports] == [1, 2, 3, 4, 5, 6]
    losses = [metrics["val_loss"] for _, metrics in reports]
    assert losses[-1] < losses[0] / 10  # the line is learned
    for _, metrics in reports:
        assert set(metrics) == {"train_loss", "val_loss", "generalization_gap"}
        assert metrics["generalization_gap"] == pytest.approx(metrics["val_loss"] - metrics["train_loss"])
    assert result["epochs_run"] == 6 and result["val_loss"] == min(losses)
    assert any(line.startswith("epoch 6: ") for line in lines)
    # The checkpoint of the last epoch: a second run trains nothing and gives the same result.
    again, replayed, _ = run(line_trainer, tmp_path / "checkpoint")
    assert replayed in ([], reports) and again == result


def test_the_engine_stops_early_and_flags_divergence(line_trainer: type, tmp_path: Path) -> None:
    from trainers.base import TrialDiverged

    result, reports, _ = run(
        line_trainer, tmp_path / "stop", early_stopping_patience=1, early_stopping_min_delta=1e6
    )
    assert [epoch for epoch, _ in reports] == [1, 2] and result["epochs_run"] == 2
    with pytest.raises(TrialDiverged, match="diverged: loss is"):
        run(line_trainer, tmp_path / "diverge", learning_rate=1e30, max_grad_norm=0.0, epochs=30)
    assert math.isfinite(result["val_loss"])
