"""A user trainer (plugged in as ``fault_trainer:FaultTrainer``) whose trials misbehave on demand.

It shows that a team's own trainer class works through the import-path registry, and lets
the orchestration tests make a trial raise, diverge, or run slowly enough to be killed.
"""

from __future__ import annotations

import math
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
        line = {"trial": number, "node": node, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "start": started, "end": time.time()}
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")

    def _run(self, ctx: TrialContext, settings: FaultSettings) -> dict[str, float]:
        state = ctx.load_checkpoint()
        if state is not None:
            print(f"resuming after epoch {state['epoch']}", flush=True)
        state = state or {"epoch": 0, "history": []}
        score = 0.0
        for epoch in range(state["epoch"] + 1, ctx.params["epochs"] + 1):
            print(f"epoch {epoch} starts", flush=True)
            time.sleep(ctx.params["sleep_seconds"])
            if ctx.trial_number in settings.oom_trials and ctx.params["gradient_accumulation_steps"] == 1:
                import torch

                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated on purpose)")
            if ctx.trial_number in settings.fail_trials and epoch == 2:
                raise RuntimeError(f"trial {ctx.trial_number} broke on purpose")
            score = -((ctx.params["x"] - 1.0) ** 2) + ctx.params.get("slope", 0.1) * epoch
            if ctx.trial_number in settings.nan_trials:
                score = math.nan
                raise TrialDiverged(f"diverged: loss is nan at epoch {epoch}")
            state = {"epoch": epoch, "history": [*state["history"], {"epoch": epoch, "score": score}]}
            ctx.save_checkpoint(state)
            ctx.report(epoch, {"score": score})
        return {"score": score, "best_epoch": float(ctx.params["epochs"])}


class BrokenCheckTrainer(FaultTrainer):
    """A trainer with a bug in ``check``: ftsweep must show it as a bug (exit 1, a log file)."""

    def check(self) -> None:
        raise ZeroDivisionError("a bug in the trainer's own code")
