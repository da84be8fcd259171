"""Task metrics as plain, JSON-serialisable dicts: classification (scikit-learn), regression (scipy) and
generation (rouge-score, sacrebleu)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

# Which way is better, for the metrics transferlab reports (used to pick "best" values in summaries).
HIGHER_IS_BETTER = frozenset({
    "accuracy", "precision", "recall", "f1", "roc_auc", "pearson", "spearman", "exact_match",
    "bleu", "rouge1", "rouge2", "rougeL", "rougeLsum",
})
LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae"})
# The metric a run is judged by, in order of preference, when several are present.
_HEADLINE_ORDER = ("accuracy", "f1", "spearman", "pearson", "exact_match", "rougeL", "bleu")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities from logits (float64, stable for large logits)."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def headline_metric(metrics: Mapping[str, object]) -> str | None:
    """Name of the metric a run is judged by: accuracy, f1, spearman... if present, else the first scalar."""
    scalars = [name for name, value in metrics.items() if is_number(value)]
    preferred = [name for name in _HEADLINE_ORDER if name in scalars]
    others = [name for name in scalars if name not in LOWER_IS_BETTER]
    return (preferred or others or scalars or [None])[0]


def classification_metrics(labels: Sequence[int], probs: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/f1, per-class scores, binary ROC AUC and the confusion matrix.

    Macro averages cover the classes seen in the labels or the predictions (scikit-learn's convention), so a
    class absent from a small eval split does not count as a zero; per_class lists every class.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    n_classes = len(label_names)
    if len(y) == 0:
        raise ValueError("classification_metrics needs at least one example")
    if p.shape != (len(y), n_classes):
        raise ValueError(f"probs must have shape ({len(y)}, {n_classes}), got {p.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    pred = p.argmax(axis=1)
    ids = list(range(n_classes))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    per_p, per_r, per_f, support = skm.precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    result: dict = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
    if n_classes == 2 and len(np.unique(y)) == 2:
        result["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
    result["per_class"] = {
        name: {"precision": float(per_p[i]), "recall": float(per_r[i]), "f1": float(per_f[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    result["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=ids).tolist()
    return result


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN: an undefined statistic is reported as null
    return float(value) if math.isfinite(value) else None


def regression_metrics(targets: Sequence[float], predictions: Sequence[float]) -> dict:
    """MSE, RMSE, MAE and the Pearson / Spearman correlations (None when undefined, e.g. constant input)."""
    t = np.asarray(targets, dtype=float)
    p = np.asarray(predictions, dtype=float)
    if t.ndim != 1 or t.shape != p.shape or len(t) == 0:
        raise ValueError(f"targets and predictions must be non-empty 1-d of one length: {t.shape}, {p.shape}")
    mse = float(skm.mean_squared_error(t, p))
    pearson = spearman = math.nan
    if len(t) > 1:
        with warnings.catch_warnings():
            # a constant input has no correlation: it becomes None below, not a warning
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            pearson = stats.pearsonr(t, p).statistic
            spearman = stats.spearmanr(t, p).statistic
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(skm.mean_absolute_error(t, p)),
        "pearson": _finite_or_none(pearson),
        "spearman": _finite_or_none(spearman),
    }


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """ROUGE-1/2/L F1 (rouge-score, stemmed, 0-1), corpus BLEU (sacrebleu, 0-100) and mean generated words."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need one prediction per reference, got {len(predictions)} and {len(references)}")
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions, strict=True)]
    result = {kind: float(np.mean([s[kind].fmeasure for s in scores])) for kind in kinds}
    result["bleu"] = float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
    result["generated_words"] = float(np.mean([len(p.split()) for p in predictions]))
    return result
