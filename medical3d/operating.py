"""Operating points a validation set can support: the threshold's evidence, how sure it is, and the trade-off.

A run chooses its threshold and REVIEW band (``medical3d.verdict``) on *evidence*: the calibrated p(positive) of
studies the model did not train on, either the validation split (``verdict.threshold_from: val``) or out-of-fold
predictions over train+val (``kfold``, ``medical3d.kfold``). Both are calibrated probabilities, so a threshold
chosen on the out-of-fold evidence transfers to the final model, which is calibrated on validation.

How sure: with n evidence positives of which k are caught at the threshold, the one-sided Clopper-Pearson lower
bound of the sensitivity at ``confidence`` is the ``1 - confidence`` quantile of Beta(k, n - k + 1) (0 when k = 0).
The target is *supported* when that bound reaches it. Even with no miss the bound is (1 - confidence)^(1/n), so a
target s needs n >= log(1 - confidence) / log(s) positives (59 for 0.95 at 95 %): 7 validation lesions cannot
support it however good the model is. Specificity gets the same bound, reported only.

The trade-off (``tradeoff``): per threshold, sensitivity, specificity, the share of studies in the REVIEW band
(``verdict.band_edges`` at that threshold) and the share of the threshold's wrong calls that the band sends to
REVIEW (``errors_in_review``): how much reading buys how many caught errors. The calibrated band
(``review_error`` e) is [e, 1 - e] for any threshold between e and 1 - e, so the REVIEW share moves with e, not
with the threshold: ``review_options`` shows it for a few values of e at the chosen threshold. The band is not
widened further to hold the evidence's confident errors: it already holds, by construction, every call whose
calibrated chance of being wrong exceeds e, and a wrong call at p = 0.97 looks like the right calls at 0.97, so
holding it would send all of those to REVIEW too. Where the evidence is small, ``threshold_from: kfold`` makes
the calibration itself (pooled out-of-fold logits) and the reports rest on every train+val study.

Numpy only at import (the review app reads the reports as plain JSON); scipy and scikit-learn load when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medical3d.verdict import DecisionRule, band_edges, choose_threshold

SOURCE_WORDS = {"val": "val", "kfold": "out-of-fold"}
GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # the trade-off's fixed thresholds, besides the evidence scores
REVIEW_ERRORS = (0.02, 0.05, 0.1, 0.2, 0.3)  # review_error values the operating point report compares


@dataclass
class Evidence:
    """Calibrated scores of studies the model that scored them did not train on. y_pos, p_pos: (N,)."""

    y_pos: np.ndarray  # bool, the study is positive
    p_pos: np.ndarray  # float, calibrated p(positive)
    source: str  # val | kfold


def lower_bound(successes: int, n: int, confidence: float) -> float | None:
    """One-sided Clopper-Pearson lower bound at ``confidence`` of a rate seen as ``successes`` of ``n``; None
    without trials. E.g. 7 of 7 at 0.95: 0.05 ** (1 / 7) = 0.652."""
    if n <= 0:
        return None
    if successes <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, successes, n - successes + 1))


def needed_for_zero_miss(target: float, confidence: float) -> int | None:
    """The fewest positives whose lower bound reaches ``target`` when none is missed; None for target 1 (none do)."""
    if target >= 1.0:
        return None
    return math.ceil(math.log(1.0 - confidence) / math.log(target) - 1e-9)


def support_report(ev: Evidence, threshold: float, target: float, confidence: float,
                   positive_label: str = "positive", negative_label: str = "negative") -> dict:
    """Whether the evidence supports ``target`` sensitivity at ``threshold``: counts, point rates, lower bounds at
    ``confidence`` for sensitivity and specificity, ``supported`` (sensitivity bound >= target) and a message."""
    y, p = np.asarray(ev.y_pos, bool), np.asarray(ev.p_pos, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    caught, cleared = int((p[y] >= threshold).sum()), int((p[~y] < threshold).sum())
    bound = lower_bound(caught, n_pos, confidence)
    supported = bound is not None and bound >= target
    needed = needed_for_zero_miss(target, confidence)
    where, conf = SOURCE_WORDS.get(ev.source, ev.source), f"{confidence * 100:g} %"
    counts = f"{n_pos} {where} {positive_label} studies, {caught} caught"
    if bound is None:
        message = f"cannot support target sensitivity {target:g}: no {where} {positive_label} studies"
    elif supported:
        message = f"supports target sensitivity {target:g}: {counts}; the {conf} lower bound is {bound:.3f}"
    else:
        need = (f"a zero-miss bound of {target:g} needs >= {needed} {positive_label} studies" if needed is not None
                else "no finite sample shows a bound of 1")
        advice = "more data" if ev.source == "kfold" else "verdict.threshold_from=kfold or more data"
        message = (f"cannot support target sensitivity {target:g}: {counts}; the {conf} lower bound is "
                   f"{bound:.2f}; {need} (use {advice})")
    return {"source": ev.source, "threshold": float(threshold), "target_sensitivity": target,
            "confidence": confidence, "n_pos": n_pos, "caught": caught,
            "sensitivity": caught / n_pos if n_pos else None, "sensitivity_bound": bound, "supported": supported,
            "needed_zero_miss": needed, "n_neg": n_neg, "cleared": cleared,
            "specificity": cleared / n_neg if n_neg else None,
            "specificity_bound": lower_bound(cleared, n_neg, confidence), "negative_label": negative_label,
            "message": message}


def tradeoff_thresholds(threshold: float, scores: np.ndarray | None = None) -> np.ndarray:
    """The chosen threshold, the 0.05..0.95 grid and the evidence scores (where the rates change), sorted, unique."""
    extra = np.asarray(scores if scores is not None else [], np.float64)
    return np.unique(np.concatenate([[float(threshold)], GRID, extra[np.isfinite(extra)]]))


def tradeoff(y_pos: np.ndarray, p_pos: np.ndarray, band_at: Callable[[float], tuple[float, float]],
             thresholds: np.ndarray, chosen: float | None = None) -> list[dict]:
    """One row per threshold t: sensitivity and specificity of the threshold alone, ``review`` (share of studies
    with low <= p < high, the band ``band_at(t)`` gives), ``errors`` (wrong calls at t) and ``errors_in_review``
    (their share inside the band; None without errors), the band edges, ``grid`` (t is on the 0.05 grid) and
    ``chosen`` (t is the run's threshold). Sensitivity never rises with t, nor specificity falls."""
    y, p = np.asarray(y_pos, bool), np.asarray(p_pos, np.float64)
    rows = []
    for t in np.asarray(thresholds, np.float64):
        low, high = band_at(float(t))
        call = p >= t
        wrong = call != y
        in_band = (p >= low) & (p < high)
        rows.append({
            "threshold": float(t),
            "sensitivity": float(call[y].mean()) if y.any() else None,
            "specificity": float((~call[~y]).mean()) if (~y).any() else None,
            "review": float(in_band.mean()) if len(p) else None,
            "errors": int(wrong.sum()),
            "errors_in_review": float(in_band[wrong].mean()) if wrong.any() else None,
            "review_low": float(low), "review_high": float(high),
            "grid": bool(np.isclose(GRID, t, rtol=0, atol=1e-12).any()),
            "chosen": chosen is not None and float(t) == float(chosen),
        })
    return rows


@dataclass
class OperatingPoint:
    threshold: float
    review_low: float
    review_high: float
    report: dict  # support_report plus the band and how many errors it holds on the evidence
    tradeoff: list[dict]


def choose_operating_point(ev: Evidence, *, target: float, confidence: float, review_band: float,
                           review_error: float | None, positive_label: str = "positive",
                           negative_label: str = "negative") -> OperatingPoint:
    """Threshold for ``target`` sensitivity and the REVIEW band, both from the evidence; the support report with
    the band's REVIEW share and ``errors_in_review`` on the evidence; the trade-off rows over the evidence."""
    y, p = np.asarray(ev.y_pos, bool), np.asarray(ev.p_pos, np.float64)
    t = choose_threshold(y, p, target)

    def band_at(th: float) -> tuple[float, float]:
        return band_edges(th, review_band, review_error, y, p)

    low, high = band_at(t)
    rows = tradeoff(y, p, band_at, tradeoff_thresholds(t, p), chosen=t)
    at = next(r for r in rows if r["chosen"])
    report = {**support_report(ev, t, target, confidence, positive_label, negative_label), "n": len(y),
              "review_low": low, "review_high": high, "review_error": review_error, "review": at["review"],
              "errors": at["errors"], "errors_in_review": at["errors_in_review"],
              "review_options": review_options(y, p, t)}
    return OperatingPoint(t, low, high, report, rows)


def review_options(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float,
                   errors: tuple[float, ...] = REVIEW_ERRORS) -> list[dict]:
    """At the chosen threshold, what other ``review_error`` values would do on the evidence: one row per value
    with its band, REVIEW share and share of the threshold's errors inside it. The calibrated band does not move
    with the threshold between e and 1 - e, so this, not the threshold, is the REVIEW share's own trade-off."""
    out = []
    for e in errors:
        low, high = band_edges(threshold, 0.0, e)
        row = tradeoff(y_pos, p_pos, lambda _t, b=(low, high): b, [threshold])[0]
        out.append({"review_error": e, "review_low": low, "review_high": high, "review": row["review"],
                    "errors_in_review": row["errors_in_review"]})
    return out


def rule_tradeoff(y: np.ndarray, probs: np.ndarray, rule: DecisionRule) -> list[dict]:
    """``tradeoff`` of a binary run's rule on labelled studies (y: (N,) class indices, probs: (N, 2) calibrated;
    rows that are not finite are left out). At the run's threshold the band is the stored one; at any other
    threshold the one the rule's keys give there (``band_edges`` without evidence: the calibrated-uncertainty band,
    or for runs without ``review_error`` threshold -/+ review_band)."""
    probs = np.atleast_2d(np.asarray(probs, np.float64))
    ok = np.isfinite(probs).all(axis=1)
    y_pos, p = np.asarray(y)[ok] == rule.positive_index, probs[ok, rule.positive_index]

    def band_at(t: float) -> tuple[float, float]:
        return rule.band if t == rule.threshold else band_edges(t, rule.review_band, rule.review_error)

    return tradeoff(y_pos, p, band_at, tradeoff_thresholds(rule.threshold, p), chosen=rule.threshold)
