"""The image-classification trainer end to end: tiny ViT / ResNet saved with save_pretrained, on
generated coloured shapes, through the CLI (a sweep, resume after SIGKILL) and at the recipe level
(freezing, augmentation of training batches only, worker errors)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO_ROOT, mlflow_runs, run_cli, write_sweep
from test_resume import process_gone, start_cli, wait_for_epoch, wait_until

from ftsweep_common.errors import DataError
from trainers.base import TrialContext
from trainers.image_classification import ImageClassificationTrainer
from trainers.image_trial import ImageClassificationTrial
from trainers.regularization import find_blocks

sys.path.insert(0, str(REPO_ROOT / "examples" / "shapes"))
from make_data import CLASSES, make_shapes  # noqa: E402

METRICS = {
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "generalization_gap",
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 x 32 shapes: 8 training, 4 validation and 4 test images per class."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, counts={"train": 8, "validation": 4, "test": 4})
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trainers.tiny_image_model import build_tiny_resnet, build_tiny_vit

    folder = tmp_path_factory.mktemp("image-models")
    return {
        "vit": build_tiny_vit(folder / "vit", CLASSES),
        "resnet": build_tiny_resnet(folder / "resnet", CLASSES),
    }


def image_sweep(name: str, model: Path, shapes: Path, **study: object) -> dict:
    return {
        "study": {"name": name, "sampler": {"name": "tpe", "seed": 0}, "n_trials": 2, **study},
        "trainer": {
            "name": "image-classification",
            "model": str(model),
            "data": {
                "train": str(shapes / "train"),
                "validation": str(shapes / "validation"),
                "test": str(shapes / "test"),
            },
            "epochs": 2,
            "batch_size": 8,
        },
        "execution": {"workers": 1},
    }


def trainer_for(model: Path, shapes: Path, **settings: object) -> ImageClassificationTrainer:
    data = {"train": str(shapes / "train"), "validation": str(shapes / "validation")}
    config = ImageClassificationTrainer.Settings(model=str(model), data=data, batch_size=8, **settings)
    return ImageClassificationTrainer(config, shapes)


def trial_for(model: Path, shapes: Path, **params: object) -> ImageClassificationTrial:
    trainer = trainer_for(model, shapes)
    ctx = TrialContext(trial_number=0, params={"epochs": 1, "batch_size": 8, **params}, metric="val_f1")
    return ImageClassificationTrial(trainer, ctx, trainer.Params(**ctx.params))


# ---- through the CLI ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_a_sweep_completes_with_the_shipped_image_space(
    tmp_path: Path, shapes: Path, models: dict[str, Path], kind: str
) -> None:
    write_sweep(tmp_path, image_sweep(kind, models[kind], shapes))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name=kind, storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert len(study.trials) == 2  # the trainer's defaults first, then one the sampler chose
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    # search_spaces/image-regularization.yaml, the trainer's default; num_layers bounds freeze_depth
    assert {"hflip", "mixup_alpha", "random_resized_crop_scale"} <= set(study.trials[-1].params)
    assert all(0 <= t.params.get("freeze_depth", 0) <= 2 for t in study.trials)

    parents, children, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", kind)
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert METRICS <= set(child.data.metrics)
    assert not [key for run in children for key in run.data.metrics if "test_" in key]


@pytest.mark.slow
def test_sigkill_the_driver_after_epoch_one_then_resume_continues_from_the_checkpoint(
    tmp_path: Path, shapes: Path, models: dict[str, Path]
) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    sweep = image_sweep("held", models["vit"], shapes, n_trials=1, pruner={"name": "none"})
    sweep["trainer"]["name"] = "held_image_trainer:HeldImageTrainer"
    sweep["trainer"]["epochs"] = 3
    sweep["search_space"] = {"hflip": {"type": "categorical", "choices": [0.5]}}
    write_sweep(tmp_path, sweep)
    release = tmp_path / "release"
    import os

    os.environ["FTSWEEP_TEST_RELEASE_FILE"] = str(release)
    try:
        driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
        wait_for_epoch(storage, "held", trial_number=0, epoch=1, process=driver)
        trial_pid = int((tmp_path / "ftsweep-runs" / "held" / "logs" / "trial-0.pid").read_text())
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        wait_until(lambda: process_gone(trial_pid), "the trial to die with its driver", [], timeout=120)
        release.touch()
        result = run_cli(["resume", "held", "--storage", storage], cwd=tmp_path)
    finally:
        os.environ.pop("FTSWEEP_TEST_RELEASE_FILE", None)
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name="held", storage=storage)
    rerun = next(t for t in study.trials if t.user_attrs.get("rerun_of") == 0)
    assert rerun.state.name == "COMPLETE"
    assert sorted(rerun.intermediate_values) == [1, 2, 3]
    log = (tmp_path / "ftsweep-runs" / "held" / "logs" / f"trial-{rerun.number}.log").read_text()
    assert "resumed from the checkpoint of epoch 1" in log
    assert "epoch 1:" not in log  # epoch 1 was not trained again


def test_the_shipped_image_space_plans_and_starts_with_the_defaults(
    tmp_path: Path, shapes: Path, models: dict[str, Path]
) -> None:
    from orchestrator.config import load_sweep
    from orchestrator.first_trials import enqueue_first_trials
    from orchestrator.plan import plan_sweep

    plan = plan_sweep(load_sweep(write_sweep(tmp_path, image_sweep("space", models["resnet"], shapes))))
    assert plan.space.source.endswith("image-regularization.yaml")
    assert plan.space.resolve(plan.trainer.symbols()).specs["freeze_depth"].high == 2  # the ResNet's stages
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'ftsweep.db'}", study_name="space")
    assert enqueue_first_trials(study, plan) == ["default"]


def test_a_model_without_drop_path_refuses_it_while_planning(
    tmp_path: Path, shapes: Path, models: dict[str, Path]
) -> None:
    sweep = image_sweep("nodroppath", models["vit"], shapes)
    sweep["search_space"] = {"drop_path": {"type": "float", "low": 0.0, "high": 0.2}}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "search_space.drop_path" in result.stderr and "drop_path_rate" in result.stderr


# ---- at the recipe level --------------------------------------------------------------------


def test_freeze_depth_freezes_the_stem_and_the_lowest_stages(shapes: Path, models: dict[str, Path]) -> None:
    trial = trial_for(models["resnet"], shapes, freeze_depth=1, learning_rate=1e-2)
    trial.setup()
    before = {name: p.detach().clone() for name, p in trial.model.named_parameters()}
    trial.engine.train(trial)
    after = dict(trial.model.named_parameters())
    frozen = [name for name in before if name.startswith(("resnet.embedder", "resnet.encoder.stages.0."))]
    trained = [name for name in before if name.startswith("resnet.encoder.stages.1.")]
    assert frozen and trained
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    assert all(not after[name].requires_grad for name in frozen)
    assert any(not torch.equal(before[name], after[name]) for name in trained)


def first_batch(trial: ImageClassificationTrial) -> tuple[torch.Tensor, torch.Tensor | None]:
    images, _, targets, _ = next(iter(trial.train_steps(1)))[0]
    return images, targets


AUGMENTATIONS = [
    {"random_resized_crop_scale": 0.5},
    {"hflip": 1.0},
    {"rotation_degrees": 30.0},
    {"color_jitter": 0.4},
    {"randaugment_magnitude": 9},
    {"trivial_augment": True},
    {"random_erasing": 1.0},
    {"mixup_alpha": 0.4},
    {"cutmix_alpha": 1.0},
]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda a: next(iter(a)))
def test_each_augmentation_changes_training_batches_and_not_validation_ones(
    shapes: Path, models: dict[str, Path], augmentation: dict
) -> None:
    plain = trial_for(models["vit"], shapes)
    augmented = trial_for(models["vit"], shapes, **augmentation)
    plain.setup()
    augmented.setup()
    plain_images, plain_targets = first_batch(plain)
    images, targets = first_batch(augmented)
    assert plain_targets is None
    assert not torch.equal(plain_images, images)
    if "mixup_alpha" in augmentation or "cutmix_alpha" in augmentation:
        assert targets is not None and (targets.max(dim=1).values < 1).any()  # soft labels
    assert plain.validation is not None and augmented.validation is not None
    for (a, labels_a), (b, labels_b) in zip(plain.validation, augmented.validation, strict=True):
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b)


def test_a_broken_image_in_a_dataloader_worker_is_one_line(
    tmp_path: Path, shapes: Path, models: dict[str, Path]
) -> None:
    import shutil

    copy = tmp_path / "shapes"
    shutil.copytree(shapes, copy)
    broken = next((copy / "train" / "circle").iterdir())
    broken.write_bytes(b"not a png")
    trainer = trainer_for(models["vit"], copy, num_workers=1)
    ctx = TrialContext(trial_number=0, params={"epochs": 1, "batch_size": 8}, metric="val_f1")
    trial = ImageClassificationTrial(trainer, ctx, trainer.Params(**ctx.params))
    trial.setup()
    with pytest.raises(DataError) as caught:
        list(trial.train_steps(1))
    trial.close()
    message = str(caught.value)
    assert "\n" not in message and broken.name in message and "cannot be read as an image" in message


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("augmentation", [{}, {"hflip": 1.0}], ids=["plain", "hflip"])
def test_the_feature_cache_serves_the_frozen_stages_with_the_same_metrics(
    shapes: Path, models: dict[str, Path], kind: str, augmentation: dict
) -> None:
    results, calls, logs = {}, {}, {}
    for cache in (True, False):
        trainer = trainer_for(models[kind], shapes, feature_cache=cache)
        lines: list[str] = []
        params = {"epochs": 2, "batch_size": 8, "freeze_depth": 1, "learning_rate": 1e-3, **augmentation}
        ctx = TrialContext(trial_number=0, params=params, metric="val_f1", logger=lines.append)
        trial = ImageClassificationTrial(trainer, ctx, trainer.Params(**params))
        trial.setup()
        first_frozen_stage = find_blocks(trial.model)[1][0]
        inner = next(
            module
            for module in first_frozen_stage.modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        )
        count = [0]

        def counted(*_: object, count: list[int] = count) -> None:
            count[0] += 1

        inner.register_forward_hook(counted)
        try:
            results[cache] = trial.engine.train(trial)
        finally:
            trial.close()
        calls[cache], logs[cache] = count[0], lines
    assert results[True] == pytest.approx(results[False], abs=1e-6)
    assert calls[False] > 0
    if augmentation:  # training images are augmented: only validation is served
        assert any("train not cached" in line for line in logs[True])
        assert 0 < calls[True] < calls[False]
    else:  # the frozen stage never runs once its states are in memory
        assert any("served from memory for validation, train" in line for line in logs[True])
        assert calls[True] == 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"hflip": 1.5}, "trainer.params.hflip"),
        ({"randaugment_magnitude": 5, "trivial_augment": True}, "choose one"),
    ],
)
def test_a_bad_augmentation_is_one_line_while_planning(
    tmp_path: Path, shapes: Path, models: dict[str, Path], params: dict, expected: str
) -> None:
    sweep = image_sweep("badparams", models["vit"], shapes)
    sweep["trainer"]["params"] = params
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "ftsweep.db").exists()


@pytest.mark.slow
def test_final_fits_exports_and_predict_scores_image_paths(
    tmp_path: Path, shapes: Path, models: dict[str, Path]
) -> None:
    import csv
    import json

    write_sweep(tmp_path, image_sweep("final", models["vit"], shapes, n_trials=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    result = run_cli(["final", "final"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    work = tmp_path / "ftsweep-runs" / "final" / "final"
    model = work / "model"
    assert {"config.json", "preprocessor_config.json", "ftsweep_model.json"} <= {
        p.name for p in model.iterdir()
    }
    report = json.loads((model / "final.json").read_text())
    assert report["data"]["test"]["rows"] == 12 and report["data"]["test"]["sha256"] != "-"
    card = (model / "README.md").read_text()  # the model card speaks of images, not texts
    assert "pipeline_tag: image-classification" in card and "image classifier" in card
    assert "Classifying images like those" in card and "text" not in card.split("## Training")[0].lower()

    fitted = json.loads((work / "fits" / "tuned-seed0" / "predictions.json").read_text())
    test_paths = sorted(str(path) for path in (shapes / "test").rglob("*.png"))
    with open(tmp_path / "images.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([["path"], *[[path] for path in test_paths]])
    scored = run_cli(["predict", str(model), "images.csv", "--out", "scored.csv"], cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    with open(tmp_path / "scored.csv", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    # The image folder's files in sorted order are the test split's order: the same probabilities.
    expected = fitted["splits"]["test"]["probabilities"]
    got = [[float(row[f"probability_{label}"]) for label in fitted["labels"]] for row in rows]
    assert [value for row in got for value in row] == pytest.approx(
        [value for row in expected for value in row], abs=1e-5
    )
