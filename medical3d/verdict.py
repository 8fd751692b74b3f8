"""From logits to calibrated probabilities and a verdict: positive, negative or REVIEW; how a run chooses its rule.

Binary runs: ``positive`` when p(positive) >= the band's upper edge, ``negative`` when p < its lower edge,
``REVIEW`` in between. The threshold is chosen on the evidence (validation, or out-of-fold predictions over
train+val: ``medical3d.operating``) for a target sensitivity. The band comes from the calibrated uncertainty
(``review_error`` e, ``uncertainty_edges``): with calibrated p a negative call (p < t) is wrong with probability
about p and a positive call with about 1 - p, so a study goes to REVIEW when that chance exceeds e: the band is
[min(e, t), max(1 - e, t)]. Runs without ``review_error`` (null, or older runs) use ``review_band`` either side of
the threshold, narrowed to the evidence (``review_edges``): a score at or below an evidence negative under the
threshold is not uncertain, nor one at or above an evidence positive over it. Either way the edges are stored as
``review_low``/``review_high``, so the scorer applies them without knowing how they were chosen. With more than two
classes the verdict is the top label, or REVIEW when the top probability is below ``1 - review_band``.

Fail safe: a rule read back from metadata is validated (``from_metadata``), and a study whose probabilities are not
finite (NaN/inf logits) is REVIEW, with no predicted label: the model gave no answer to judge.

Numpy only at import: the scorer loads this module. ``choose_threshold`` and ``decision_metrics`` (training and
eval) import scikit-learn's metrics from ``common.metrics`` when called.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import InputError
from common.inference import softmax

POSITIVE, NEGATIVE, REVIEW = "positive", "negative", "REVIEW"


@dataclass
class DecisionRule:
    labels: list[str]
    positive_label: str
    threshold: float
    review_band: float
    temperature: float
    bias: list[float] | None = None  # per-class logit offset fitted with T (None/absent: zeros, older runs)
    review_low: float | None = None  # REVIEW band edges (None/absent: threshold -/+ review_band, older runs)
    review_high: float | None = None
    review_error: float | None = None  # calibrated error chance above which a call is REVIEW (None: review_band)

    @property
    def band(self) -> tuple[float, float]:
        """(low, high): binary verdict is negative below low, positive at or above high, REVIEW between."""
        low = self.threshold - self.review_band if self.review_low is None else self.review_low
        high = self.threshold + self.review_band if self.review_high is None else self.review_high
        return low, high

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "metadata") -> DecisionRule:
        """Read the rule back from model.onnx metadata (its one home) and validate it.

        Absent keys take the defaults older runs relied on; present ones must make sense, or an ``InputError``
        names ``source`` and the key: labels a list of >= 2 unique strings, positive_label one of them, threshold
        and the band edges finite in [0, 1] with review_low <= threshold <= review_high, review_band finite in
        [0, 1], review_error finite in [0, 0.5], temperature finite > 0, bias one finite number per label.
        """
        labels = meta.get("labels")
        if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels)
                or len(set(labels)) != len(labels)):
            raise InputError(f"{source}: labels {labels!r} must be a list of at least 2 unique non-empty strings")
        positive = meta.get("positive_label", labels[-1])
        if positive not in labels:
            raise InputError(f"{source}: positive_label {positive!r} is not one of the labels {labels}")

        def number(key: str, default: float | None, lo: float, hi: float = 1.0, *, above: bool = False
                   ) -> float | None:
            """meta[key] (``default`` when absent) as a finite float in [lo, hi] ((lo, hi] when ``above``)."""
            v = meta.get(key, default)
            if v is None and default is None:
                return None
            if (not isinstance(v, int | float) or isinstance(v, bool) or not np.isfinite(v) or v > hi
                    or v < lo or (above and v == lo)):
                raise InputError(f"{source}: {key} {v!r} must be a finite number "
                                 + (f"> {lo:g}" if above else f"in [{lo:g}, {hi:g}]"))
            return float(v)

        bias = meta.get("bias")
        if bias is not None and (not isinstance(bias, list) or len(bias) != len(labels) or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and np.isfinite(b) for b in bias)):
            raise InputError(f"{source}: bias {bias!r} must be {len(labels)} finite numbers, one per label")
        rule = cls(labels=list(labels), positive_label=positive, threshold=number("threshold", 0.5, 0),
                   review_band=number("review_band", 0.0, 0), temperature=number("temperature", 1.0, 0, np.inf,
                                                                                 above=True),
                   bias=[float(b) for b in bias] if bias is not None else None,
                   review_low=number("review_low", None, 0), review_high=number("review_high", None, 0),
                   review_error=number("review_error", None, 0, 0.5))
        low, high = rule.band
        if not low <= rule.threshold <= high:
            raise InputError(f"{source}: the REVIEW band [{low:g}, {high:g}] (review_low, review_high) must hold the "
                             f"threshold {rule.threshold:g}")
        return rule

    def to_dict(self) -> dict:
        return {"labels": self.labels, "positive_label": self.positive_label, "threshold": self.threshold,
                "review_band": self.review_band, "temperature": self.temperature, "bias": self.bias,
                "review_low": self.review_low, "review_high": self.review_high, "review_error": self.review_error}

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> (N, C) calibrated probabilities, ``softmax(logits / T + bias)``. A row with any NaN or
        infinite logit comes out all NaN (``verdicts`` makes it REVIEW): even a lone -inf, which softmax would turn
        into a confident answer, says the model is broken for that input."""
        z = np.array(logits, dtype=np.float64)  # a copy: non-finite rows are blanked below
        if self.bias is not None:
            z = z + np.asarray(self.bias, dtype=np.float64) * self.temperature
        z[~np.isfinite(z).all(axis=-1)] = np.nan
        with np.errstate(invalid="ignore"):
            return softmax(z, self.temperature)

    def verdicts(self, probs: np.ndarray) -> list[str]:
        """One verdict per row of calibrated probabilities (N, C); REVIEW for a row that is not all finite."""
        probs = np.atleast_2d(probs)
        finite = np.isfinite(probs).all(axis=1)
        if len(self.labels) == 2:
            low, high = self.band
            out = []
            for v, ok in zip(probs[:, self.positive_index], finite, strict=True):
                if not ok:
                    out.append(REVIEW)
                elif v >= high:
                    out.append(POSITIVE)
                elif v < low:
                    out.append(NEGATIVE)
                else:
                    out.append(REVIEW)
            return out
        return [self.labels[int(np.argmax(row))] if ok and row.max() >= 1.0 - self.review_band else REVIEW
                for row, ok in zip(probs, finite, strict=True)]

    def predicted_labels(self, probs: np.ndarray) -> list[str | None]:
        """The label a study is called by the threshold alone (no REVIEW band); None for a non-finite row."""
        probs = np.atleast_2d(probs)
        finite = np.isfinite(probs).all(axis=1)
        if len(self.labels) == 2:
            neg = self.labels[1 - self.positive_index]
            return [None if not ok else self.positive_label if v >= self.threshold else neg
                    for v, ok in zip(probs[:, self.positive_index], finite, strict=True)]
        return [self.labels[int(np.argmax(row))] if ok else None for row, ok in zip(probs, finite, strict=True)]


def choose_threshold(y_pos: np.ndarray, p_pos: np.ndarray, target_sensitivity: float) -> float:
    """Threshold on calibrated p(positive) that reaches the target sensitivity on validation, placed halfway (in
    log-odds) between the weakest positive it must catch and the next lower validation score.

    The highest threshold that reaches the target sits exactly on a validation positive, so a new study like it
    falls below it about half the time; the midpoint keeps the margin the validation data allows.
    """
    from common.metrics import threshold_for_recall  # scikit-learn: kept off the scorer's import path

    if not y_pos.any():
        return 0.5
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 1e-6, 1 - 1e-6)
    t = float(np.clip(threshold_for_recall(y_pos, p, target_sensitivity), 1e-6, 1 - 1e-6))
    below = p[p < t]
    if len(below):
        logit = lambda v: np.log(v / (1 - v))  # noqa: E731
        t = float(1 / (1 + np.exp(-(logit(t) + logit(below.max())) / 2)))
    return float(min(max(t, 0.0), 1.0))


def review_edges(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float, band: float) -> tuple[float, float]:
    """REVIEW band ``threshold -/+ band`` narrowed to what the evidence shows: the lower edge is raised to the highest
    evidence negative below the threshold, the upper edge lowered to the lowest evidence positive at or above it.
    A study scoring like the validation normals is not uncertain just because the model gives all normals one
    score that happens to lie within ``band`` of the threshold. Studies between the two groups, where the evidence
    has none, stay REVIEW. Edges are kept within [0, 1] (a stored edge outside it would not load back)."""
    y = np.asarray(y_pos, bool)
    p = np.asarray(p_pos, np.float64)
    low, high = max(threshold - band, 0.0), min(threshold + band, 1.0)
    neg_below = p[~y & (p < threshold)]
    pos_above = p[y & (p >= threshold)]
    if len(neg_below):
        low = max(low, float(np.nextafter(neg_below.max(), np.inf)))  # that negative itself stays negative
    if len(pos_above):
        high = min(high, float(pos_above.min()))
    return float(min(low, threshold)), float(max(high, threshold))


def uncertainty_edges(threshold: float, review_error: float) -> tuple[float, float]:
    """REVIEW band from calibrated uncertainty: (min(e, t), max(1 - e, t)). A negative call (p < t) is wrong with
    calibrated probability p, a positive call with 1 - p; the call stands where that chance is at most ``e``
    (negative for p < e, positive for p >= 1 - e) and goes to REVIEW where it is larger."""
    return float(min(review_error, threshold)), float(max(1.0 - review_error, threshold))


def band_edges(threshold: float, review_band: float, review_error: float | None,
               y_pos: np.ndarray | None = None, p_pos: np.ndarray | None = None) -> tuple[float, float]:
    """The REVIEW band a run stores for ``threshold``: ``uncertainty_edges`` with a ``review_error``; else
    ``threshold -/+ review_band``, narrowed by ``review_edges`` when the evidence (y_pos, p_pos) is given."""
    if review_error is not None:
        return uncertainty_edges(threshold, review_error)
    if y_pos is None or p_pos is None:
        return float(max(threshold - review_band, 0.0)), float(min(threshold + review_band, 1.0))
    return review_edges(y_pos, p_pos, threshold, review_band)


def decision_metrics(y: np.ndarray, probs: np.ndarray, rule: DecisionRule) -> dict:
    """AUROC, ECE, per-class metrics (argmax) plus accuracy, sensitivity, specificity and the confusion matrix
    at the run's threshold, and how many studies fall in the REVIEW band; binary runs also the REVIEW share and
    ``errors_in_review``, the share of the threshold's wrong calls that the band sends to REVIEW."""
    from common.metrics import binary_rates, classification_metrics  # scikit-learn: off the scorer's import path

    labels = rule.labels
    m = classification_metrics(y, probs, labels)
    predicted = rule.predicted_labels(probs)
    pred_idx = np.array([labels.index(p) for p in predicted], dtype=np.int64)
    verdicts = rule.verdicts(probs)
    out = {
        "n": len(y),
        "auroc": m["auroc"],
        "ece": m["ece"],
        "accuracy": float((pred_idx == y).mean()) if len(y) else None,
        "balanced_accuracy_argmax": m["balanced_accuracy"],
        "per_class": m["per_class"],
        "threshold": rule.threshold,
        "temperature": rule.temperature,
        "review": int(sum(v == "REVIEW" for v in verdicts)),
    }
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y, pred_idx, strict=True):
        cm[int(t), int(p)] += 1
    out["confusion_matrix"] = cm.tolist()
    if len(labels) == 2:
        rates = binary_rates(y == rule.positive_index, pred_idx == rule.positive_index)
        out.update({"sensitivity": rates["sensitivity"], "specificity": rates["specificity"],
                    "tp": rates["tp"], "fp": rates["fp"], "tn": rates["tn"], "fn": rates["fn"]})
        wrong = pred_idx != y
        in_review = np.array([v == REVIEW for v in verdicts], bool)
        out.update({"review_share": float(in_review.mean()) if len(y) else None,
                    "errors_in_review": float(in_review[wrong].mean()) if wrong.any() else None})
    return out
