"""The Ray backend: the same study, its trials placed on a Ray cluster by Ray Tune.

Ray Tune does the placing: ``tune.Tuner`` with per-trial resources (Ray sets
``CUDA_VISIBLE_DEVICES`` for each trial), concurrency limits and retries of trials whose node
died (``FailureConfig``). ftsweep plugs into Tune's two extension points:

- a :class:`~ray.tune.search.Searcher` (:class:`StudySearcher`) that asks the ftsweep
  :class:`~orchestrator.session.StudySession` for each trial, so the study in the SQL store, its
  sampler, its exact budget, re-runs of interrupted trials and the MLflow runs are the local
  backend's, to the letter;
- a :class:`~ray.tune.schedulers.TrialScheduler` (:class:`StudyScheduler`) that records every
  epoch's report in the study and stops a trial when Optuna's pruner says so, or defers to Ray's
  ASHA (``pruner: {name: asha}``).

Tune's own ``OptunaSearch`` is not used: it forces Optuna's pruner to NopPruner, and restoring it
after a killed driver fails on a persistent storage (its pickled state disagrees with the
database). ftsweep never relies on ``Tuner.restore``: ``ftsweep resume`` continues the study from
the SQL store whether or not Ray's experiment folder survived.

Searcher and scheduler run in the driver's Tune loop, so the driver alone writes to the storage,
as on the local backend. Trials checkpoint into the study's checkpoint folder, which must be on
storage every node sees (as must the data and the model): a trial re-run on another node
continues from its last epoch.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends._trial_process import TrialJob, make_job, run_job
from orchestrator.backends.base import BaseBackend
from orchestrator.errors import ConfigError, UserError
from orchestrator.messages import EpochReport, Failed, Interrupted, Pruned, from_ray_result, to_ray_result
from orchestrator.storage import study_folder

if TYPE_CHECKING:
    from orchestrator.config import Sweep
    from orchestrator.devices import Slot
    from orchestrator.messages import TrialOutcome
    from orchestrator.session import StudySession, TrialHandle


def ray_trainable(config: dict[str, Any]) -> None:
    """Runs one trial inside a Ray worker; reports each epoch, then the outcome, through ``tune.report``."""
    import ray
    from ray import tune

    from orchestrator.backends._trial_process import _redirect_output

    job = TrialJob(**config["job"])
    _redirect_output(job.log_path)
    node = ray.get_runtime_context().get_node_id()[:8]
    device = f"node {node} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}"
    job.device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") and _cuda_usable() else "cpu"

    def reporter(epoch: int, metrics: dict[str, float]) -> bool:
        tune.report(to_ray_result(EpochReport(epoch, dict(metrics)), device))
        return False  # pruning comes from the scheduler, which stops this actor

    tune.report(to_ray_result(run_job(job, reporter), device))


def _cuda_usable() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class _Bridge:
    """What the searcher and the scheduler share: Tune trial ids to ftsweep trial handles."""

    def __init__(self, session: StudySession, work_dir: Path) -> None:
        self.session = session
        self.work_dir = work_dir
        self.handles: dict[str, TrialHandle] = {}
        self.finals: dict[str, TrialOutcome] = {}
        self.stopped: dict[str, str] = {}

    # Tune pickles its searcher and scheduler into its experiment folder (for Tuner.restore).
    # ftsweep never restores from there (the study is in the SQL store), and the live session
    # (database engines, MLflow thread) cannot be pickled: a snapshot carries nothing.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.handles, self.finals, self.stopped = {}, {}, {}

    def pruning_result(self, trial_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as ASHA must see it: the study's metric replaced by the trial's running best
        (the trial's value is its best epoch's; see :meth:`StudySession.report`)."""
        handle = self.handles.get(trial_id)
        best = self.session.pruning_value(handle) if handle is not None else None
        return result if best is None else {**result, self.session.metric: best}

    def finished_training(self, trial_id: str, result: dict[str, Any]) -> bool:
        """True when ``result`` reports the trial's last epoch (its outcome follows: nothing to stop)."""
        handle = self.handles.get(trial_id)
        epoch = result.get("epoch")
        return handle is not None and isinstance(epoch, int) and self.session.is_last_epoch(handle, epoch)

    def record(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record a result; True when Optuna's pruner says the trial should stop."""
        handle = self.handles.get(trial_id)
        self.session.heartbeat()
        message, device = from_ray_result(result)
        if handle is None or message is None:
            return False
        if device and handle.device != device:
            self.session.set_device(handle, str(device))
        if isinstance(message, EpochReport):
            return self.session.report(handle, message.epoch, message.metrics)
        self.finals[trial_id] = message
        return False


class StudySearcher:
    """Factory for the Tune Searcher subclass (Ray is imported only when the ray backend runs)."""

    @staticmethod
    def build(bridge: _Bridge, job_template: dict[str, Any]) -> Any:
        from ray.tune.search import Searcher

        class _StudySearcher(Searcher):
            def __init__(self) -> None:
                # No metric for Tune to check in every result: the study's metric travels inside the
                # ftsweep message (orchestrator.messages.to_ray_result), and the session reads it there.
                super().__init__(metric=None, mode=None)

            def suggest(self, trial_id: str) -> dict[str, Any] | None:
                session = bridge.session
                handle = session.start_trial("ray")
                if handle is None:
                    # Tune's own "no more trials" marker is a string, though Searcher.suggest says dict.
                    finished: Any = Searcher.FINISHED
                    return finished if not bridge.handles or session.stop_reason else None
                bridge.handles[trial_id] = handle
                options = dict(job_template)
                log_dir = options.pop("log_dir")
                job = make_job(session, handle, log_path=f"{log_dir}/trial-{handle.number}.log", **options)
                return {"job": asdict(job)}

            def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
                return None  # recorded by the scheduler, which sees every result first

            # The study's state is in the SQL store; Tune's snapshots of the searcher are not needed.
            def save(self, checkpoint_path: str) -> None:
                return None

            def restore(self, checkpoint_path: str) -> None:
                return None

            def on_trial_complete(
                self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
            ) -> None:
                handle = bridge.handles.pop(trial_id, None)
                if handle is None:
                    return
                session = bridge.session
                final = bridge.finals.pop(trial_id, None)
                if trial_id in bridge.stopped:
                    final = Pruned(bridge.stopped.pop(trial_id))
                elif final is None and session.stop_reason and not error:
                    final = Interrupted("stopped")
                elif final is None:
                    final = Failed(
                        "the trial's Ray actor failed (node lost or process died) and its retries ran out"
                    )
                session.end(handle, final)

        return _StudySearcher()


class StudyScheduler:
    """Factory for the Tune TrialScheduler that records reports and prunes (Optuna's pruner or ASHA)."""

    @staticmethod
    def build(bridge: _Bridge, inner: Any) -> Any:
        from ray.tune.schedulers import FIFOScheduler, TrialScheduler

        inner = inner or FIFOScheduler()

        class _StudyScheduler(TrialScheduler):
            def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
                return inner.set_search_properties(metric, mode, **spec)

            def on_trial_add(self, controller: Any, trial: Any) -> None:
                inner.on_trial_add(controller, trial)

            def on_trial_error(self, controller: Any, trial: Any) -> None:
                inner.on_trial_error(controller, trial)

            def on_trial_result(self, controller: Any, trial: Any, result: dict[str, Any]) -> str:
                if bridge.record(trial.trial_id, result):
                    bridge.stopped[trial.trial_id] = f"pruned after epoch {result.get('epoch')}"
                    return TrialScheduler.STOP
                if not isinstance(from_ray_result(result)[0], EpochReport):
                    return TrialScheduler.CONTINUE
                decision = inner.on_trial_result(
                    controller, trial, bridge.pruning_result(trial.trial_id, result)
                )
                if decision == TrialScheduler.STOP:
                    if bridge.finished_training(trial.trial_id, result):
                        # ASHA stops every trial at max_t; one that trained all its epochs completes.
                        return TrialScheduler.CONTINUE
                    bridge.stopped[trial.trial_id] = f"stopped by ASHA after epoch {result.get('epoch')}"
                return decision

            def on_trial_complete(self, controller: Any, trial: Any, result: dict[str, Any]) -> None:
                inner.on_trial_complete(controller, trial, result)

            def on_trial_remove(self, controller: Any, trial: Any) -> None:
                inner.on_trial_remove(controller, trial)

            def choose_trial_to_run(self, controller: Any) -> Any:
                bridge.session.heartbeat()
                return inner.choose_trial_to_run(controller)

            def debug_string(self) -> str:
                return "ftsweep: Optuna pruner through the study" + (
                    f" + {inner.debug_string()}" if inner else ""
                )

        return _StudyScheduler()


class RayBackend(BaseBackend):
    """Runs a study's trials on a Ray cluster through Ray Tune.

    Args:
        address: an existing cluster (``auto``, ``ray://...``, ``host:port``), or None for a local Ray.
        work_dir: the study's folder (Ray Tune's experiment folder goes in it).
    """

    name = "ray"

    def __init__(self, address: str | None, work_dir: Path, max_retries: int = 3) -> None:
        self.address = address
        self.work_dir = work_dir
        self.max_retries = max_retries

    @classmethod
    def check_available(cls) -> None:
        """Ray Tune must import (``pip install -e '.[ray]'`` in the clone)."""
        try:
            import ray  # noqa: F401 - only whether it imports
            import ray.tune  # noqa: F401
        except ImportError as error:
            raise ConfigError(
                f"execution.backend: ray needs Ray Tune, which is not installed ({error}); "
                "install it in your ftsweep clone with: pip install -e '.[ray]'"
            ) from None

    @classmethod
    def for_sweep(cls, sweep: Sweep, slots: list[Slot], work_dir: Path) -> RayBackend:
        return cls(sweep.execution.ray_address, work_dir)

    def run(self, session: StudySession) -> None:
        # ftsweep shows its own progress; Tune's tables would interleave with it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        import logging

        import ray
        from ray import tune

        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)

        sweep = session.plan.sweep
        execution = sweep.execution
        started_here = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    log_to_driver=False,
                    include_dashboard=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UserError(
                    f"execution.ray_address {self.address!r}: cannot join the Ray cluster ({error})"
                ) from error
            started_here = True
        try:
            cluster_gpus = ray.cluster_resources().get("GPU", 0)
            gpus = execution.gpus_per_trial if cluster_gpus else 0
            cpus = execution.cpus_per_trial or 1
            if session.checkpoint_root is not None:
                session.checkpoint_root.mkdir(parents=True, exist_ok=True)
            check_paths_on_nodes([*session.plan.trainer.input_paths(), session.checkpoint_root])
            bridge = _Bridge(session, self.work_dir)
            job_template: dict[str, Any] = {
                "environment": {},
                "device": "cuda" if gpus else "cpu",
                "n_threads": max(1, int(cpus)),
                "log_dir": str(self.work_dir / "logs"),
            }
            searcher = StudySearcher.build(bridge, job_template)
            # Several objectives: no ASHA either (it ranks one value); the session records and never prunes.
            asha = sweep.study.pruner.name == "asha" and not sweep.multi_objective
            scheduler = StudyScheduler.build(bridge, _asha(session) if asha else None)
            tuner = tune.Tuner(
                tune.with_resources(ray_trainable, {"cpu": cpus, "gpu": gpus}),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=-1,
                    max_concurrent_trials=execution.max_concurrent_trials,
                    reuse_actors=False,
                ),
                run_config=tune.RunConfig(
                    # Ray Tune joins storage_path and name: the study name becomes a folder only
                    # through study_folder.
                    name=study_folder(self.work_dir / "ray_results", sweep.study.name).name,
                    storage_path=str(self.work_dir / "ray_results"),
                    failure_config=tune.FailureConfig(max_failures=self.max_retries),
                    verbose=0,
                ),
            )
            session.progress.start()
            try:
                tuner.fit()
            finally:
                session.progress.stop()
                for handle in list(session.in_flight.values()):
                    session.interrupt(handle, "the Ray driver stopped before the trial finished")
        finally:
            if started_here:
                ray.shutdown()


def _asha(session: StudySession) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    options = session.plan.sweep.study.pruner.options
    return ASHAScheduler(
        time_attr="epoch",
        metric=session.metric,
        mode="max" if session.maximize else "min",
        max_t=session.plan.max_epochs or 100,
        grace_period=int(options.get("grace_period", 1)),
        reduction_factor=float(options.get("reduction_factor", 3)),
    )


def check_paths_on_nodes(paths: list[Path | None]) -> None:
    """Every node must see the data, the model and the checkpoint folder at the same paths.

    Raises:
        ConfigError: naming the first path a node cannot see, and the node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = [str(path) for path in paths if path is not None]
    if not wanted:
        return

    @ray.remote(num_cpus=0)
    def missing(candidates: list[str]) -> list[str]:
        import os as _os

        return [candidate for candidate in candidates if not _os.path.exists(candidate)]

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    futures = {
        node["NodeManagerAddress"]: missing.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ).remote(wanted)
        for node in nodes
    }
    for address, future in futures.items():
        absent = ray.get(future)
        if absent:
            raise ConfigError(
                f"{absent[0]} is not visible on Ray node {address}: with execution.backend ray, data, model "
                "and checkpoint paths must be on storage every node mounts at the same path"
            )
