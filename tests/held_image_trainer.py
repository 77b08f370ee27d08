"""The image-classification trainer, held after its first epoch until a release file exists.

For tests that act on a real image trial at a known point (after epoch 1 was checkpointed and
reported, before epoch 2): the file is named by ``FTSWEEP_TEST_RELEASE_FILE``; a trial started
after the file exists (a re-run) does not wait.
"""

from __future__ import annotations

import os
import time

from trainers.base import TrialContext
from trainers.image_classification import ImageClassificationTrainer


class HeldImageTrainer(ImageClassificationTrainer):
    name = "held-image-classification"

    def run(self, ctx: TrialContext) -> dict[str, float]:
        release = os.environ["FTSWEEP_TEST_RELEASE_FILE"]
        report = ctx.report

        def held_report(epoch: int, metrics: dict[str, float]) -> None:
            report(epoch, metrics)
            if epoch == 1 and not os.path.exists(release):
                ctx.log(f"trial {ctx.trial_number} (pid {os.getpid()}) waits for {release}")
                deadline = time.monotonic() + 600
                while not os.path.exists(release) and time.monotonic() < deadline:
                    time.sleep(0.1)

        ctx.report = held_report  # type: ignore[method-assign]
        return super().run(ctx)
