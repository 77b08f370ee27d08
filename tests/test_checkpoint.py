"""Checkpoints cannot run code, come back exactly, and one that does not load restarts the trial loudly."""

from __future__ import annotations

import json
import math
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_classification import Interrupted, Recorder, make_trainer

from trainers.base import TrialContext
from trainers.checkpoint import (
    LEGACY_FILES,
    STATE_FILE,
    CheckpointUnreadable,
    load_checkpoint,
    save_checkpoint,
)
from trainers.noop import NoopTrainer

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """A pickle that creates ``marker`` when it is unpickled: what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(folder: Path, name: str, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(pickle.dumps({"epoch": 2, "payload": Payload(marker)}))
    return path


def run_logged(trainer, params: dict, checkpoint_dir: Path, recorder: Recorder | None = None):
    """Run a trial; its result, the epochs it reported and the lines it logged."""
    lines: list[str] = []
    recorder = recorder or Recorder()
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **params},
        reporter=recorder,
        checkpoint_dir=checkpoint_dir,
        metric="val_f1",
        logger=lines.append,
        direction="maximize",
    )
    return trainer.run(ctx), recorder.epochs, lines


# --- The format ------------------------------------------------------------------------------


def test_a_state_comes_back_exactly(tmp_path: Path) -> None:
    weights = torch.randn(3, 4)
    parameter = torch.nn.Parameter(torch.randn(2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    parameter.grad = torch.ones(2)
    optimizer.step()
    state = {
        "epoch": 2,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "weights": {"a": weights, "a_row": weights[0], "half": torch.ones(2, dtype=torch.bfloat16)},
        "optimizer": optimizer.state_dict(),  # integer keys, tuples (betas), 0-d tensors (step)
        "history": [{"val_f1": 0.5, "val_loss": math.inf}],
        "nan": math.nan,
        "odd_keys": {"$type": "not a tag", 3: (1, "x")},
        "count": np.int64(7),
    }

    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)

    assert loaded is not None
    assert loaded["rng"]["python"] == random.getstate()
    numpy_state = loaded["rng"]["numpy"]
    assert numpy_state[0] == "MT19937" and np.array_equal(numpy_state[1], np.random.get_state()[1])
    assert numpy_state[1].dtype == np.random.get_state()[1].dtype
    assert torch.equal(loaded["rng"]["torch"], torch.get_rng_state())
    assert torch.equal(loaded["weights"]["a"], weights) and torch.equal(
        loaded["weights"]["a_row"], weights[0]
    )
    assert loaded["weights"]["half"].dtype == torch.bfloat16
    assert loaded["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    assert list(loaded["optimizer"]["state"]) == [0]
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(loaded["optimizer"]["state"][0][key], value)
    assert loaded["history"] == [{"val_f1": 0.5, "val_loss": math.inf}] and math.isnan(loaded["nan"])
    assert loaded["odd_keys"] == {"$type": "not a tag", 3: (1, "x")}
    assert loaded["count"] == 7
    optimizer.load_state_dict(loaded["optimizer"])


def test_a_checkpoint_is_json_and_tensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    save_checkpoint(tmp_path, {"epoch": 3, "weights": torch.zeros(2)})

    assert sorted(path.name for path in tmp_path.iterdir()) == [STATE_FILE]
    with safe_open(tmp_path / STATE_FILE, framework="pt") as stream:
        assert json.loads(stream.metadata()["ftsweep.state"]) == {
            "epoch": 3,
            "weights": {"$type": "tensor", "name": "0"},
        }
        assert list(stream.keys()) == ["0"]


def test_a_state_without_tensors_needs_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from trainers.checkpoint import save_checkpoint, load_checkpoint\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "save_checkpoint(folder, {'epoch': 2, 'history': [(1, 0.5)]})\n"
        "assert load_checkpoint(folder) == {'epoch': 2, 'history': [(1, 0.5)]}\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_a_value_a_checkpoint_cannot_hold_is_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot hold a builtins.set"):
        save_checkpoint(tmp_path, {"epoch": 1, "seen": {1, 2}})
    assert not (tmp_path / STATE_FILE).exists()


# --- A checkpoint that does not load ---------------------------------------------------------


@pytest.mark.parametrize("name", [*LEGACY_FILES, STATE_FILE])
def test_a_pickle_in_place_of_the_checkpoint_is_never_run(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "ckpt", name, marker)

    with pytest.raises(CheckpointUnreadable) as caught:
        load_checkpoint(tmp_path / "ckpt")

    assert caught.value.path == path
    assert not marker.exists()


@pytest.mark.parametrize("name", [*LEGACY_FILES, STATE_FILE])
def test_a_trial_over_a_planted_pickle_starts_over_and_says_so(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "ckpt", name, marker)
    trainer = NoopTrainer(NoopTrainer.Settings(epochs=3), base_dir=tmp_path)

    result, epochs, lines = run_logged(trainer, {"x": 1.0, "y": -2.0}, tmp_path / "ckpt")

    assert not marker.exists()
    assert epochs == [1, 2, 3] and result["best_epoch"] == 3
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and str(path) in warnings[0] and "starts over from epoch 0" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["reports.json", STATE_FILE]


def test_the_text_trainer_never_runs_a_planted_pickle(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "ckpt", "state.pt", marker)
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=2)

    result, epochs, lines = run_logged(trainer, {"learning_rate": 5e-3}, tmp_path / "ckpt")

    assert not marker.exists()
    assert epochs == [1, 2] and result["epochs_run"] == 2
    assert any(str(path) in line and "old pickle-based format" in line for line in lines)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_restarts_the_trial_which_completes(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=3)
    params = {"learning_rate": 8e-3, "dropout": 0.1, "warmup_ratio": 0.1}
    full, _, _ = run_logged(trainer, params, tmp_path / "full")

    def crash(epoch: int, metrics: dict[str, float]) -> bool:
        if epoch == 2:
            raise Interrupted
        return False

    with pytest.raises(Interrupted):
        run_logged(trainer, params, tmp_path / "ckpt", Recorder(crash))
    truncate(tmp_path / "ckpt" / STATE_FILE)
    result, epochs, lines = run_logged(trainer, params, tmp_path / "ckpt")

    assert epochs == [1, 2, 3], (
        "the trial starts over: nothing is replayed from a checkpoint it could not read"
    )
    assert result == pytest.approx(full, abs=1e-5)  # the same seed, from the start: the same trial
    warning = next(line for line in lines if line.startswith("WARNING"))
    assert str(tmp_path / "ckpt" / STATE_FILE) in warning and "truncated" in warning
    assert "starts over from epoch 0" in warning


@pytest.mark.parametrize(
    "state_json",
    ['{"epoch": ', '{"$type": "tuple"}', "[1, 2]", '{"epoch": {"$type": "tensor", "name": "9"}}'],
)
def test_a_checkpoint_with_a_bad_state_is_unreadable(tmp_path: Path, state_json: str) -> None:
    from safetensors.numpy import save_file

    save_file(
        {},
        str(tmp_path / STATE_FILE),
        metadata={"ftsweep.format": "ftsweep-checkpoint-2", "ftsweep.state": state_json},
    )

    with pytest.raises(CheckpointUnreadable) as caught:
        load_checkpoint(tmp_path)

    assert str(caught.value).startswith(f"checkpoint {tmp_path / STATE_FILE} cannot be loaded: ")


def test_a_checkpoint_that_does_not_fit_the_trial_restarts_it(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=2)
    params = {"learning_rate": 5e-3}
    run_logged(trainer, params, tmp_path / "ckpt")
    state = load_checkpoint(tmp_path / "ckpt")
    assert state is not None
    state["trainable"] = {name: tensor[:1] for name, tensor in state["trainable"].items()}  # wrong shapes
    state["epoch"] = 1
    save_checkpoint(tmp_path / "ckpt", state)

    result, epochs, lines = run_logged(trainer, params, tmp_path / "ckpt")

    assert result["epochs_run"] == 2
    assert any(line.startswith("WARNING") and "no weights of the right shape" in line for line in lines)
