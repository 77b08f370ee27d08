"""The text-classification trainer with two test-only hooks, switched on by environment variables.

- ``FTSWEEP_TEST_HIDE``: a path; after the planning check (which validates the test file), the
  test file is moved there. A trial that then opened it would fail on a missing file, so a sweep
  that completes proves that no trial read it.
- ``FTSWEEP_TEST_HOLD``: a path; a final fit, after reporting its first epoch (its checkpoint is
  on disk by then), writes ``<path>.waiting`` with its pid and waits until ``<path>`` exists, so
  a test can kill the fit at a known point instead of racing it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from trainers.base import FinalFitRequest, TrialContext
from trainers.data import resolve_path
from trainers.text_classification import TextClassificationTrainer


class SplitGuardTrainer(TextClassificationTrainer):
    """See the module docstring."""

    def check(self) -> None:
        super().check()
        hide = os.environ.get("FTSWEEP_TEST_HIDE")
        if hide and self.settings.data.test:
            shutil.move(resolve_path(self.settings.data.test, self.base_dir), hide)

    def final_fit(self, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
        hold = os.environ.get("FTSWEEP_TEST_HOLD")
        if hold:
            report = ctx.reporter

            def held(epoch: int, metrics: dict[str, float]) -> bool:
                answer = report(epoch, metrics) if report is not None else False
                if epoch == 1:
                    Path(f"{hold}.waiting").write_text(str(os.getpid()))
                    deadline = time.monotonic() + 600
                    while not os.path.exists(hold) and time.monotonic() < deadline:
                        time.sleep(0.1)
                return answer

            ctx.reporter = held
        return super().final_fit(ctx, request)
