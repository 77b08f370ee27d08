"""Finding trials whose process died: by their owner on this host, or by a stale heartbeat."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import sqlalchemy

from orchestrator.recovery import OWNER_ATTR, find_orphans, recover
from orchestrator.store_adapter import record_heartbeats, trial_id
from orchestrator.study import INTERRUPTED_ATTR, RERUN_OF_ATTR, open_storage


def running_trial(study: optuna.Study, owner: str | None) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    if owner is not None:
        trial.set_user_attr(OWNER_ATTR, owner)
    record_heartbeats(study, [trial_id(trial)])
    return trial


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_orphans_by_owner_and_by_heartbeat(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    host = socket.gethostname()
    alive_here = running_trial(study, f"{host}:{subprocess.os.getppid()}")
    dead_here = running_trial(study, f"{host}:{dead_pid()}")
    elsewhere_fresh = running_trial(study, "another-host:123")
    elsewhere_stale = running_trial(study, "another-host:456")
    unowned = running_trial(study, None)

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:  # this owner's last heartbeat was ten minutes ago
        connection.execute(
            sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-600 seconds') WHERE trial_id = :id"
            ),
            {"id": trial_id(elsewhere_stale)},
        )
    orphans = {trial.number for trial in find_orphans(study)}
    assert orphans == {dead_here.number, elsewhere_stale.number, unowned.number}
    assert alive_here.number not in orphans and elsewhere_fresh.number not in orphans


def test_recover_queues_each_interrupted_trial_once(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    orphan = running_trial(study, f"{socket.gethostname()}:{dead_pid()}")
    assert recover(study) == [orphan.number]
    assert recover(study) == []  # a second resume does not queue it again
    trials = study.get_trials()
    assert trials[orphan.number].state.name == "FAIL" and trials[orphan.number].user_attrs[INTERRUPTED_ATTR]
    queued = [t for t in trials if t.state.name == "WAITING"]
    assert len(queued) == 1 and queued[0].user_attrs[RERUN_OF_ATTR] == orphan.number
    rerun = study.ask()  # the queued re-run comes first, with the interrupted trial's parameters
    assert rerun.number == queued[0].number
    assert rerun.suggest_float("x", 0, 1) == trials[orphan.number].params["x"]
