"""From logits to calibrated probabilities and a verdict: positive, negative or REVIEW. Numpy only.

Binary runs: ``positive`` when p(positive) >= the band's upper edge, ``negative`` when p < its lower edge,
``REVIEW`` in between. The threshold is chosen on validation for a target sensitivity; the band is the config's
``review_band`` either side of it, narrowed to the validation evidence (``review_low``/``review_high``): a score
at or below a validation negative that sits under the threshold is not uncertain, nor one at or above a validation
positive over it. With more than two classes the verdict is the top label, or REVIEW when the top probability is
below ``1 - review_band``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.metrics import softmax

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
    def from_metadata(cls, meta: dict) -> DecisionRule:
        """Read the rule back from model.onnx metadata (or run.json ``decision``)."""
        labels = list(meta["labels"])
        return cls(labels=labels, positive_label=meta.get("positive_label", labels[-1]),
                   threshold=float(meta.get("threshold", 0.5)), review_band=float(meta.get("review_band", 0.0)),
                   temperature=float(meta.get("temperature", 1.0)),
                   bias=[float(b) for b in meta["bias"]] if meta.get("bias") is not None else None,
                   review_low=_opt_float(meta.get("review_low")), review_high=_opt_float(meta.get("review_high")))

    def to_dict(self) -> dict:
        return {"labels": self.labels, "positive_label": self.positive_label, "threshold": self.threshold,
                "review_band": self.review_band, "temperature": self.temperature, "bias": self.bias,
                "review_low": self.review_low, "review_high": self.review_high}

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> (N, C) calibrated probabilities, ``softmax(logits / T + bias)``."""
        z = np.asarray(logits, dtype=np.float64)
        if self.bias is not None:
            z = z + np.asarray(self.bias, dtype=np.float64) * self.temperature
        return softmax(z, self.temperature)

    def verdicts(self, probs: np.ndarray) -> list[str]:
        """One verdict per row of calibrated probabilities (N, C)."""
        probs = np.atleast_2d(probs)
        if len(self.labels) == 2:
            p = probs[:, self.positive_index]
            low, high = self.band
            out = []
            for v in p:
                if v >= high:
                    out.append(POSITIVE)
                elif v < low:
                    out.append(NEGATIVE)
                else:
                    out.append(REVIEW)
            return out
        top = probs.max(axis=1)
        return [self.labels[int(i)] if t >= 1.0 - self.review_band else REVIEW
                for i, t in zip(probs.argmax(axis=1), top, strict=True)]

    def predicted_labels(self, probs: np.ndarray) -> list[str]:
        """The label a study is called by the threshold alone (no REVIEW band)."""
        probs = np.atleast_2d(probs)
        if len(self.labels) == 2:
            neg = self.labels[1 - self.positive_index]
            return [self.positive_label if v >= self.threshold else neg for v in probs[:, self.positive_index]]
        return [self.labels[int(i)] for i in probs.argmax(axis=1)]


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)
