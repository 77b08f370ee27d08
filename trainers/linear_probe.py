"""Linear probing: fit only the head on the frozen model's features (classes or a number).

A linear probe keeps every pre-trained weight and fits a logistic regression (the head's last
linear layer) on what the frozen model feeds that layer. Out of distribution it often beats full
fine-tuning, which distorts the pre-trained features; fitting the head first and fine-tuning from
it (LP-FT) keeps most of both (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022).

The fit is a full-batch L-BFGS minimisation of the mean cross-entropy plus ``l2 / 2 * |W|^2``
(the bias is not penalised), in float64, on features computed once: it is deterministic and takes
seconds; only computing the features costs a forward pass per example, and the trainer serves those
from the feature cache (:mod:`trainers.feature_cache`), so later trials of the study pay nothing.

For a numeric label (``task: regression``) the probe is a ridge regression on the standardized label,
fitted in closed form (:func:`fit_ridge_regression`): the same ``l2`` on the weights, the bias free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: L-BFGS iterations of one fit; the problem is convex and small, so it converges well before this.
MAX_ITERATIONS = 500


def head_inputs(
    model: nn.Module,
    head: nn.Linear,
    batches: Iterable[tuple[dict[str, torch.Tensor], list[int]]],
    serving: Callable[[list[int]], AbstractContextManager[None]],
    autocast: Callable[[], AbstractContextManager[Any]],
    n_rows: int,
) -> torch.Tensor:
    """What ``head`` receives for every row of a split, with the model in eval mode (float32, CPU).

    Args:
        model: the classifier.
        head: its last linear layer (:func:`trainers.heads.classifier_layer`).
        batches: ``(inputs on the device, rows)`` per batch.
        serving: a context in which a forward of ``rows`` may start from cached features.
        autocast: the trial's autocast context.
        n_rows: the number of rows of the split.
    """
    import torch

    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    out: torch.Tensor | None = None
    handle = head.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast():
            for inputs, rows in batches:
                captured.clear()
                with serving(rows):
                    model(**inputs)
                features = captured[-1]
                if out is None:
                    out = torch.zeros(n_rows, features.shape[-1], dtype=torch.float32)
                out[torch.as_tensor(rows)] = features
    finally:
        handle.remove()
        model.train(was_training)
    if out is None:
        raise ValueError("no examples to compute features for")
    return out


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    l2: float,
    class_weights: torch.Tensor | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: ``(weight, bias)`` of shapes ``(C, d)`` and ``(C,)``.

    Minimises the (class-weighted) mean cross-entropy plus ``l2 / 2 * |weight|^2``.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = features.double()
    y = labels.long()
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    if init is not None:
        with torch.no_grad():
            weight.copy_(init[0].double())
            bias.copy_(init[1].double())
    sample_weights = (
        class_weights.double()[y] if class_weights is not None else torch.ones(len(y), dtype=torch.float64)
    )
    sample_weights = sample_weights / sample_weights.sum()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=MAX_ITERATIONS,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (F.cross_entropy(x @ weight.T + bias, y, reduction="none") * sample_weights).sum()
        loss = loss + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def fit_ridge_regression(
    features: torch.Tensor, targets: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression in closed form: ``(weight, bias)`` of shapes ``(1, d)`` and ``(1,)``.

    Minimises ``mean((x @ weight.T + bias - y)^2) / 2 + l2 / 2 * |weight|^2`` (the bias is not
    penalised), in float64: the centred normal equations ``(Xc^T Xc / n + l2 I) w = Xc^T yc / n``,
    solved by least squares so that ``l2 = 0`` with collinear features still has an answer.
    """
    import torch

    x = features.double()
    y = targets.double().reshape(-1)
    n, d = x.shape
    x_mean, y_mean = x.mean(dim=0), y.mean()
    centred = x - x_mean
    gram = centred.T @ centred / n + l2 * torch.eye(d, dtype=torch.float64)
    weight = torch.linalg.lstsq(gram, (centred.T @ (y - y_mean) / n).unsqueeze(-1)).solution.squeeze(-1)
    bias = y_mean - x_mean @ weight
    return weight.unsqueeze(0).float(), bias.reshape(1).float()


def fit_classification_probe(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    n_classes: int,
    l2: float,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """A logistic-regression probe fitted on ``features["train"]``, and each split's metrics.

    Args:
        features: the head's inputs per split, keyed by metric prefix (``train``, ``val``).
        labels: the class ids per split, the same keys.

    Returns:
        ``(weight, bias, metrics)``: ``<prefix>_loss`` (plain cross-entropy), ``_accuracy``, ``_f1``.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    from trainers.metrics import accuracy_and_macro_f1

    weight, bias = fit_logistic_regression(features["train"], labels["train"], n_classes, l2, class_weights)
    metrics: dict[str, float] = {}
    for prefix, x in features.items():
        logits, y = x @ weight.T + bias, labels[prefix]
        confusion = torch.bincount(y * n_classes + logits.argmax(dim=-1), minlength=n_classes**2)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
        loss = F.cross_entropy(logits, y).item()
        metrics.update({f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy, f"{prefix}_f1": f1})
    return weight, bias, metrics


def fit_regression_probe(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    l2: float,
    scaler: Any,
    loss: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """A ridge probe fitted on ``features["train"]`` (standardized ``targets``), and each split's metrics.

    Args:
        features: the head's inputs per split, keyed by metric prefix (``train``, ``val``).
        targets: the standardized labels per split, the same keys.
        scaler: the :class:`trainers.regression_target.LabelScaler` that standardized them.
        loss: the task's loss (``<prefix>_loss``); rmse, mae and r2 are in the label's units.
    """
    from trainers.regression_target import RegressionSums

    weight, bias = fit_ridge_regression(features["train"], targets["train"], l2)
    metrics: dict[str, float] = {}
    for prefix, x in features.items():
        sums = RegressionSums(scaler, loss)
        sums.add((x @ weight.T + bias).squeeze(-1), targets[prefix])
        metrics.update(sums.metrics(prefix))
    return weight, bias, metrics


def set_head(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a fitted ``(weight, bias)`` into the head's last linear layer."""
    import torch

    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device, head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.device, head.bias.dtype))
