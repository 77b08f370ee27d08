"""The epoch engine: what every recipe's trial does the same way, whatever the task.

A recipe (text classification, and any trainer of your own) *calls* the engine; it does not
derive from it. The contract:

**The recipe supplies** a :class:`TrainingTask`: the model (with ``requires_grad`` set as it will
train, e.g. by :func:`trainers.regularization.freeze`), the modules it froze, the training batches
of each epoch, the loss of one batch, and the training and validation metrics. It builds the model
*after* :func:`trainers.runtime.start_runtime` (which seeds every generator), on that runtime's
device, and runs its forward passes under ``runtime.autocast()``.

**The engine does the rest**, identically for every task:

- the optimizer, its schedule, weight-decay groups, layer-wise and head learning rates, the L1 /
  L2-SP penalties and gradient clipping (:class:`trainers.optim.Optimization`);
- the epochs: ``epochs``, or more to reach ``min_steps``; training mode with the frozen modules in
  eval mode; one optimizer step per item of :meth:`TrainingTask.train_steps`; validation in eval
  mode under ``torch.inference_mode``;
- a diverged trial (a non-finite loss) raises :class:`trainers.base.TrialDiverged`;
- per-epoch reporting: the training and validation metrics and ``generalization_gap``, a log line
  with the throughput, and, with the first epoch, the task's baseline (``majority_<metric>``, what
  the session's ``no progress`` rule compares with);
- early stopping on the study metric, the best epoch's weights, and the result (the best epoch's
  metrics, ``best_epoch``, ``epochs_run``);
- a checkpoint after every epoch (weights, optimizer, schedule, every random generator, history)
  and resuming from it, so an interrupted trial reports what an uninterrupted one would have.

Out of memory, the trial process retries once with the parameters the trainer's
:meth:`~trainers.base.BaseTrainer.on_out_of_memory` returns; for an engine recipe that is
:func:`trainers.training_params.retry_with_less_memory` (twice the ``gradient_accumulation_steps``),
and the task splits each step into micro-batches of at most ``params.micro_batch_size`` examples.
``README.md`` ("Your own trainer on the epoch engine") shows a task in about 30 lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

from trainers.base import TrialContext, TrialDiverged

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trainers.optim import Optimization
    from trainers.runtime import Runtime
    from trainers.training_params import TrainingParams

CHECKPOINT_FORMAT = 1
#: What a checkpoint's state holds (see :meth:`Engine._state`).
STATE_KEYS = ("epoch", "trainable", "optimizer", "scheduler", "rng", "history", "early_stopping", "best")


class TrainingTask(Protocol):
    """What a recipe hands the engine: the model, the batches, the loss and the metrics."""

    @property
    def model(self) -> nn.Module:
        """The model, on the runtime's device, with ``requires_grad`` set as it will train."""
        ...

    @property
    def frozen(self) -> Sequence[nn.Module]:
        """Modules that stay in eval mode while the rest trains (frozen layers: no dropout inside them)."""
        ...

    @property
    def n_train(self) -> int:
        """How many training examples one epoch sees (steps per epoch, throughput)."""
        ...

    def train_steps(self, epoch: int) -> Iterable[Sequence[Any]]:
        """One item per optimizer step: its micro-batches (at most ``params.micro_batch_size`` each).

        Starting the iteration starts the epoch: reset the running training metrics there.
        """
        ...

    def train_loss(self, batch: Any) -> torch.Tensor:
        """The batch's share of its step's mean loss; the engine back-propagates it.

        Add the batch to the running training metrics here (under ``torch.no_grad``).
        """
        ...

    def train_metrics(self) -> dict[str, float]:
        """The epoch's training metrics, ``train_loss`` first.

        May hold ``train_objective`` (the loss as optimized: label smoothing, class weights), which
        the engine checks for divergence and does not report.
        """
        ...

    def validation_metrics(self) -> dict[str, float]:
        """The current weights' validation metrics, ``val_loss`` first (called in eval mode, no grad)."""
        ...

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        """With the first epoch: a trivial predictor's score of ``metric``, as ``majority_<metric>``;
        ``{}`` when there is none."""
        ...


class Engine:
    """Trains a :class:`TrainingTask` for one trial; see the module docstring.

    Args:
        ctx: the trial's context (reporting, checkpoints, the study metric and its direction).
        params: the trial's parameters.
        runtime: the device and precision (:func:`trainers.runtime.start_runtime`).
        metric: the study metric early stopping and the best epoch follow.
        head_learning_rate: the head's learning rate; default ``params.head_lr()``. A model without
            blocks (:func:`trainers.regularization.find_blocks`), e.g. a plain ``nn.Module``, learns at
            ``learning_rate`` throughout unless ``head_learning_rate`` is set in the parameters.
        keep: ``best`` keeps the best epoch's weights; ``last`` the last epoch's (a final fit on
            train+val, whose validation rows are training rows).
    """

    def __init__(
        self,
        ctx: TrialContext,
        params: TrainingParams,
        runtime: Runtime,
        metric: str,
        head_learning_rate: float | None = None,
        keep: Literal["best", "last"] = "best",
    ) -> None:
        self.ctx = ctx
        self.params = params
        self.runtime = runtime
        self.metric = metric
        self.head_learning_rate = params.head_lr() if head_learning_rate is None else head_learning_rate
        self.keep = keep
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": None, "weights": None}
        self.stopping: dict[str, Any] = {"best": None, "bad_epochs": 0}
        self.new_parameters: list[str] = []

    # ---- the two ways a trial runs -------------------------------------------------------

    def train(self, task: TrainingTask, new_parameters: Iterable[str] = ()) -> dict[str, float]:
        """Resume if a checkpoint fits, train the remaining epochs; the best epoch's metrics.

        Args:
            task: what the recipe supplies.
            new_parameters: names of parameters the pre-trained checkpoint lacked (L2-SP spares them).
        """
        self._setup(task, new_parameters)
        n_epochs = self.params.epochs_for(task.n_train)
        if n_epochs > self.params.epochs:
            self.ctx.log(
                f"{n_epochs} epochs instead of {self.params.epochs}: "
                f"min_steps {self.params.min_steps} on {task.n_train} training examples"
            )
        for epoch in range(self._resume(), n_epochs + 1):
            if self._should_stop():
                break
            self._run_epoch(task, epoch)
        return self.result()

    def report_fitted(
        self, task: TrainingTask, metrics: dict[str, float], new_parameters: Iterable[str] = ()
    ) -> dict[str, float]:
        """A model fitted without epochs (a linear probe): ``metrics`` reported, checkpointed, as epoch 1."""
        self._setup(task, new_parameters)
        if self._resume() == 1:
            self._end_epoch(task, 1, dict(metrics))
        return self.result()

    def result(self) -> dict[str, float]:
        """The best epoch's metrics, ``best_epoch`` and ``epochs_run``; ``{}`` before any epoch."""
        if not self.history:
            return {}
        best_epoch = self.best["epoch"]
        return {
            **self.history[best_epoch - 1],
            "best_epoch": float(best_epoch),
            "epochs_run": float(len(self.history)),
        }

    def restore_best(self) -> None:
        """Put the kept epoch's weights (see ``keep``) back into the model."""
        self.load_weights(self.best["weights"])

    # ---- one epoch -----------------------------------------------------------------------

    def _setup(self, task: TrainingTask, new_parameters: Iterable[str]) -> None:
        self.task = task
        self.new_parameters = list(new_parameters)
        self.trainable = [(name, p) for name, p in task.model.named_parameters() if p.requires_grad]
        self.optimization = self._optimization()

    def _optimization(self) -> Optimization:
        from trainers.optim import Optimization
        from trainers.regularization import find_blocks

        params, model = self.params, self.task.model
        head_learning_rate: float | None = self.head_learning_rate
        if params.head_learning_rate is None and params.layerwise_lr_decay == 1.0:
            try:
                find_blocks(model)
            except ValueError:  # no blocks, so no head above them: one learning rate throughout
                head_learning_rate = None
        steps_per_epoch = math.ceil(self.task.n_train / params.batch_size)
        return Optimization(
            model,
            params,
            steps_per_epoch * params.epochs_for(self.task.n_train),
            head_learning_rate,
            self.new_parameters,
        )

    def _run_epoch(self, task: TrainingTask, epoch: int) -> None:
        import torch

        from trainers.regularization import train_mode

        started = time.perf_counter()
        train_mode(task.model, task.frozen)
        for step in task.train_steps(epoch):
            for batch in step:
                task.train_loss(batch).backward()
            self.optimization.step()
        train = task.train_metrics()
        train_seconds = time.perf_counter() - started
        task.model.eval()
        with torch.inference_mode():
            validation = task.validation_metrics()
        val_seconds = time.perf_counter() - started - train_seconds
        metrics = {**train, **validation}
        for key, value in metrics.items():
            if (key.endswith("loss") or key == "train_objective") and not math.isfinite(value):
                raise TrialDiverged(f"diverged: loss is {value} at epoch {epoch}")
        metrics.pop("train_objective", None)
        self._end_epoch(
            task,
            epoch,
            metrics,
            f"; {task.n_train / train_seconds:.1f} training samples/s"
            f" (training {train_seconds:.2f} s, validation {val_seconds:.2f} s)",
        )

    def _end_epoch(self, task: TrainingTask, epoch: int, metrics: dict[str, float], timing: str = "") -> None:
        from trainers.metrics import generalization_gap

        metrics["generalization_gap"] = generalization_gap(metrics, self.metric)
        self.history.append(metrics)
        self._track_best(epoch, metrics[self.metric])
        if timing:
            self.ctx.log(
                f"epoch {epoch}: "
                + ", ".join(f"{key}={value:.4f}" for key, value in metrics.items())
                + timing
            )
        # Checkpoint first: a trial pruned or killed while reporting resumes after this epoch.
        self.ctx.save_checkpoint(self._state(epoch))
        baseline = task.baseline_metrics(self.metric) if epoch == 1 else {}
        self.ctx.report(epoch, {**metrics, **baseline})

    def _track_best(self, epoch: int, value: float) -> None:
        if self.keep == "last":
            self.best = {"epoch": epoch, "value": value, "weights": self._weights_copy()}
            return
        direction = self.ctx.direction
        if is_better(value, self.best["value"], direction):
            self.best = {"epoch": epoch, "value": value, "weights": self._weights_copy()}
        if is_better(value, self.stopping["best"], direction, self.params.early_stopping_min_delta):
            self.stopping = {"best": value, "bad_epochs": 0}
        else:
            self.stopping = {**self.stopping, "bad_epochs": self.stopping["bad_epochs"] + 1}

    def _should_stop(self) -> bool:
        patience = self.params.early_stopping_patience
        if patience and self.stopping["bad_epochs"] >= patience:
            self.ctx.log(f"early stopping: no improvement of {self.metric} for {patience} epoch(s)")
            return True
        return False

    def _weights_copy(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in self.trainable}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``weights`` (name -> tensor, e.g. ``best["weights"]``) into the trainable parameters."""
        import torch

        with torch.no_grad():
            for name, parameter in self.trainable:
                parameter.copy_(weights[name])

    # ---- checkpoints ---------------------------------------------------------------------

    def _state(self, epoch: int) -> dict[str, Any]:
        from trainers.runtime import rng_state

        return {
            "format": CHECKPOINT_FORMAT,
            "params": self.params.model_dump(),
            "epoch": epoch,
            "trainable": {name: p.detach() for name, p in self.trainable},
            **self.optimization.state_dict(),
            "rng": rng_state(self.runtime.on_cuda),
            "history": self.history,
            "early_stopping": self.stopping,
            # When this epoch is the best, its weights are "trainable": not stored twice.
            "best": {**self.best, "weights": None} if self.best["epoch"] == epoch else self.best,
        }

    def _resume(self) -> int:
        """Restore the last checkpoint if there is one for these parameters; the epoch to start at."""
        from trainers.runtime import restore_rng_state

        state = self.ctx.load_checkpoint()
        if not state:
            return 1
        if state.get("format") != CHECKPOINT_FORMAT or state.get("params") != self.params.model_dump():
            self.ctx.log("checkpoint ignored: it was written for other parameters; starting afresh")
            return 1
        problem = self._checkpoint_problem(state)
        if problem is None:
            try:
                self.optimization.load_state_dict(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                problem = f"its optimizer or scheduler state does not fit ({type(error).__name__}: {error})"
                # A fresh optimizer: the failed load may have left part of its state behind.
                self.optimization = self._optimization()
        if problem is not None:
            self.ctx.log(
                f"WARNING: checkpoint in {self.ctx.checkpoint_dir} cannot be used: {problem}; "
                "it is ignored and the trial starts over from epoch 0"
            )
            return 1
        self.load_weights(state["trainable"])
        self.history = list(state["history"])
        self.stopping = dict(state["early_stopping"])
        self.best = dict(state["best"])
        if self.best["weights"] is None:
            self.best["weights"] = {name: tensor.clone() for name, tensor in state["trainable"].items()}
        restore_rng_state(state["rng"], self.runtime.on_cuda)
        self.ctx.log(f"resumed from the checkpoint of epoch {state['epoch']}")
        return int(state["epoch"]) + 1

    def _checkpoint_problem(self, state: dict[str, Any]) -> str | None:
        """What makes a loaded state unusable for this trial, or None; checked before anything is restored."""
        import torch

        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            return f"it lacks {', '.join(missing)}"
        rng = state["rng"]
        if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
            return "its random-generator states are incomplete"
        weights = state["trainable"]
        best = state["best"]
        if not isinstance(weights, dict) or not isinstance(best, dict) or "weights" not in best:
            return "its weights are not a mapping of tensors"
        for stored in (weights, best["weights"]):
            if stored is None and stored is best["weights"]:
                continue
            for name, parameter in self.trainable:
                tensor = stored.get(name) if isinstance(stored, dict) else None
                if not isinstance(tensor, torch.Tensor) or tensor.shape != parameter.shape:
                    return f"it holds no weights of the right shape for {name}"
        return None


def is_better(value: float, best: float | None, direction: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in ``direction`` (all beat None)."""
    if best is None:
        return True
    return value > best + min_delta if direction == "maximize" else value < best - min_delta


@contextmanager
def timed_trial(ctx: TrialContext) -> Iterator[None]:
    """Log how long the block took, in wall-clock and in this process's CPU time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        ctx.log(
            f"trial took {time.perf_counter() - started:.1f} s "
            f"({time.process_time() - cpu_started:.1f} s of CPU time in this process)"
        )
