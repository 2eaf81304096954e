"""Classification accuracy for the example scripts: the `evaluate` "accuracy" module when it can be loaded
(offline: only from a local cache), otherwise the same number computed with numpy."""

from __future__ import annotations

import functools

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)


@functools.lru_cache(maxsize=1)
def _evaluate_accuracy():
    try:
        import evaluate

        return evaluate.load("accuracy")
    except Exception as error:  # noqa: BLE001 - any failure (offline, not cached) means: use numpy
        logger.info(f"`evaluate` accuracy module unavailable ({type(error).__name__}); using numpy")
        return None


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    """Top-1 accuracy of integer `predictions` against `references` (both (N,))."""
    predictions, references = np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"`predictions` {predictions.shape} and `references` {references.shape} differ in length")
    metric = _evaluate_accuracy()
    if metric is not None:
        return float(metric.compute(predictions=predictions, references=references)["accuracy"])
    return float((predictions == references).mean()) if len(references) else float("nan")


def top_k_accuracy(logits: np.ndarray, references: np.ndarray, k: int) -> float:
    """Share of rows whose reference is among the `k` largest logits."""
    top = np.argsort(-np.asarray(logits), axis=1)[:, :k]
    return float((top == np.asarray(references)[:, None]).any(axis=1).mean())


def compute_classification_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer` `compute_metrics`: accuracy (and top-5 when there are more than 5 classes)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics = {"accuracy": accuracy(np.argmax(logits, axis=-1), labels)}
    if logits.shape[-1] > 5:
        metrics["top5_accuracy"] = top_k_accuracy(logits, labels, 5)
    return metrics
