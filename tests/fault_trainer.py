"""A user trainer (plugged in as ``fault_trainer:FaultTrainer``) whose trials misbehave on demand.

It shows that a team's own trainer class works through the import-path registry, and lets
the orchestration tests make a trial raise, diverge, or run slowly enough to be killed.
"""

from __future__ import annotations

import math
import os
import time

from pydantic import Field

from trainers.base import BaseTrainer, StrictModel, TrialContext, TrialDiverged


class FaultSettings(StrictModel):
    epochs: int = 3
    sleep_seconds: float = 0.0
    fail_trials: list[int] = Field(default_factory=list)
    nan_trials: list[int] = Field(default_factory=list)
    oom_trials: list[int] = Field(default_factory=list)
    record_file: str | None = None  # each run appends where and when it ran (JSON lines)
    # A test holds trials at a known point instead of racing them: a trial whose number is in
    # pause_trials (every trial when None) waits before epoch pause_before_epoch until release_file exists.
    release_file: str | None = None
    pause_trials: list[int] | None = None
    pause_before_epoch: int = 1
    # Scripted learning curves: trial number -> its score at each epoch (the trial's value is the best one).
    curves: dict[int, list[float]] = Field(default_factory=dict)
    # Reported as majority_score with the first epoch (the score of always predicting the majority class).
    majority_score: float | None = None


class FaultParams(StrictModel):
    x: float = 0.0
    epochs: int = 3
    sleep_seconds: float = 0.0
    gradient_accumulation_steps: int = 1
    slope: float = 0.1  # the score's change per epoch: a negative slope gets worse as it trains


class FaultTrainer(BaseTrainer):
    name = "fault"
    Settings = FaultSettings
    Params = FaultParams
    metric_names = ("score",)
    settings_as_params = ("epochs", "sleep_seconds")

    def on_out_of_memory(self, params: dict) -> dict | None:
        """Like the text trainer: twice the accumulation, half the per-step batch."""
        return {**params, "gradient_accumulation_steps": int(params["gradient_accumulation_steps"]) * 2}

    def run(self, ctx: TrialContext) -> dict[str, float]:
        settings: FaultSettings = self.settings  # type: ignore[assignment]
        started = time.time()
        try:
            return self._run(ctx, settings)
        finally:
            if settings.record_file:
                self._record(settings.record_file, ctx.trial_number, started)

    @staticmethod
    def _record(path: str, number: int, started: float) -> None:
        import json
        import os
        import sys

        node = sys.modules["ray"].get_runtime_context().get_node_id() if "ray" in sys.modules else "local"
        line = {
            "trial": number,
            "node": node,
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "start": started,
            "end": time.time(),
        }
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")

    @staticmethod
    def _wait_for_release(
        settings: FaultSettings, number: int, epoch: int, bound_seconds: float = 600
    ) -> None:
        if settings.release_file is None or epoch != settings.pause_before_epoch:
            return
        if settings.pause_trials is not None and number not in settings.pause_trials:
            return
        print(f"trial {number} (pid {os.getpid()}) waits for {settings.release_file}", flush=True)
        deadline = time.monotonic() + bound_seconds
        while not os.path.exists(settings.release_file):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{settings.release_file} did not appear within {bound_seconds:.0f} s")
            time.sleep(0.05)

    def _run(self, ctx: TrialContext, settings: FaultSettings) -> dict[str, float]:
        state = ctx.load_checkpoint()
        if state is not None:
            print(f"resuming after epoch {state['epoch']}", flush=True)
        state = state or {"epoch": 0, "history": []}
        score = 0.0
        for epoch in range(state["epoch"] + 1, ctx.params["epochs"] + 1):
            self._wait_for_release(settings, ctx.trial_number, epoch)
            print(f"epoch {epoch} starts", flush=True)
            time.sleep(ctx.params["sleep_seconds"])
            if ctx.trial_number in settings.oom_trials and ctx.params["gradient_accumulation_steps"] == 1:
                import torch

                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated on purpose)")
            if ctx.trial_number in settings.fail_trials and epoch == 2:
                raise RuntimeError(f"trial {ctx.trial_number} broke on purpose")
            score = -((ctx.params["x"] - 1.0) ** 2) + ctx.params.get("slope", 0.1) * epoch
            curve = settings.curves.get(ctx.trial_number)
            if curve is not None:
                score = curve[epoch - 1]
            if ctx.trial_number in settings.nan_trials:
                score = math.nan
                raise TrialDiverged(f"diverged: loss is nan at epoch {epoch}")
            state = {"epoch": epoch, "history": [*state["history"], {"epoch": epoch, "score": score}]}
            ctx.save_checkpoint(state)
            majority = settings.majority_score
            extra = {"majority_score": majority} if majority is not None and epoch == 1 else {}
            ctx.report(epoch, {"score": score, **extra})
        curve = settings.curves.get(ctx.trial_number)
        if curve is not None:
            best = max(curve[: ctx.params["epochs"]])
            return {"score": best, "best_epoch": float(curve.index(best) + 1)}
        return {"score": score, "best_epoch": float(ctx.params["epochs"])}


class BrokenCheckTrainer(FaultTrainer):
    """A trainer with a bug in ``check``: ftsweep must show it as a bug (exit 1, a log file)."""

    def check(self) -> None:
        raise ZeroDivisionError("a bug in the trainer's own code")


class PresetFaultTrainer(FaultTrainer):
    """A fault trainer whose new studies first try its default (x = 0) and one preset (x = 2.5)."""

    first_trials = (("default", {}), ("far", {"x": 2.5}))
