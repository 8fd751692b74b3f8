"""The part verdict rule and how its two thresholds are chosen (torch-free).

Rule, on the defect score ``s`` of every candidate of a part (``candidate_scores``):
FAIL if ``max s >= fail_threshold``; REVIEW if ``review_threshold <= max s < fail_threshold``; else PASS.
A part with no detection has ``max s = 0`` and passes.

The score is ``sqrt(p * conf)``, the geometric mean of the classifier's calibrated defect probability
``p = 1 - P(background)`` and the detector's confidence (``score: both``), or ``p`` alone (``score: classifier``,
the rule of runs made before the score was recorded). A candidate has to convince both stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np

from common.errors import InputError

Verdict = Literal["PASS", "FAIL", "REVIEW"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
ScoreKind = Literal["both", "classifier"]  # the config's ``verdict.score``
SCORE_KINDS: tuple[ScoreKind, ...] = get_args(ScoreKind)


def _classifier_alone(p: np.ndarray, det_conf: np.ndarray) -> np.ndarray:
    return p


def _both_stages(p: np.ndarray, det_conf: np.ndarray) -> np.ndarray:
    return np.sqrt(p * np.clip(np.asarray(det_conf, np.float64), 0.0, 1.0))


# score kind -> (clipped classifier defect probability (K,), detector confidence (K,)) -> defect score (K,)
SCORE_RULES: dict[ScoreKind, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "both": _both_stages,
    "classifier": _classifier_alone,
}


def candidate_scores(cls_defect_p: np.ndarray, det_conf: np.ndarray, kind: ScoreKind) -> np.ndarray:
    """(K,) what the verdict compares with its thresholds, from each candidate's classifier defect probability
    and detector confidence: their geometric mean (``both``) or the classifier's probability (``classifier``)."""
    p = np.clip(np.asarray(cls_defect_p, np.float64), 0.0, 1.0)
    rule = SCORE_RULES.get(kind)
    if rule is None:
        raise ValueError(f"unknown verdict score {kind!r} (expected one of {', '.join(SCORE_KINDS)})")
    return rule(p, det_conf)


def score_kind(value: object) -> ScoreKind:
    """``value`` as a ``ScoreKind``; else an InputError naming the known kinds."""
    if value not in SCORE_KINDS:
        raise InputError(f"unknown verdict score {value!r} (expected one of {', '.join(SCORE_KINDS)})")
    return value  # type: ignore[return-value]


def check_thresholds(fail, review, where: str) -> tuple[float, float]:
    """(fail, review) as floats when both are numbers in [0, 1] with fail >= review; else an InputError naming
    ``where``: a run whose thresholds cannot judge (a NaN passes every part) refuses to load."""
    for key, v in (("fail", fail), ("review", review)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:  # NaN fails too
            raise InputError(f"{where}: {key}={v!r} is not a number in [0, 1]; a run that cannot judge refuses "
                             "to load")
    if fail < review:
        raise InputError(f"{where}: fail {fail} is below review {review}")
    return float(fail), float(review)


def part_verdict(defect_scores: Sequence[float] | np.ndarray, fail_threshold: float,
                 review_threshold: float) -> Verdict:
    """PASS / FAIL / REVIEW for one part from its candidates' defect scores (``candidate_scores``; empty = no
    detection = PASS).

    Fail safe: a candidate whose score is not a finite number (a NaN from the model) cannot be judged, so the part
    is never PASSed on it (REVIEW, or FAIL if another candidate fails it); non-finite thresholds give REVIEW."""
    if review_threshold > fail_threshold:
        raise ValueError(f"review_threshold {review_threshold} > fail_threshold {fail_threshold}")
    s = np.asarray(defect_scores, np.float64).reshape(-1)
    ok = np.isfinite(s)
    top = float(s[ok].max()) if ok.any() else 0.0
    if not (np.isfinite(fail_threshold) and np.isfinite(review_threshold)):
        return "REVIEW"
    if top >= fail_threshold:
        return "FAIL"
    if top >= review_threshold or not ok.all():
        return "REVIEW"
    return "PASS"


@dataclass
class Thresholds:
    fail: float
    review: float
    target_recall: float
    val_recall: float  # share of defective val parts not passed (FAIL or REVIEW)
    val_false_reject: float  # share of good val parts failed
    val_review_rate: float
    val_parts: int
    # the fail threshold's sample: good parts plus, when given, the defect-free regions of the defective ones
    fail_reference_parts: int = 0
    fail_reference_false_alarm: float = float("nan")  # share of that sample at or above ``fail``
    score: ScoreKind = "classifier"  # what the thresholds apply to (``candidate_scores``)
    reference: Literal["train+val", "val"] = "val"  # the parts both thresholds were read from
    review_reference_parts: int = 0  # defective parts in the review threshold's sample
    reference_note: str | None = None  # why the train split was not used, when it was offered
    recall_confidence: float = 0.0  # confidence of the review threshold's recall bound (0: the point estimate)
    review_misses_allowed: int = 0  # defective reference parts the review threshold may pass (-1: none can)
    review_note: str | None = None  # why the review threshold sits at its floor, when the sample decided it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PartSample:
    """Parts to read thresholds from: each part's score (max over its candidates, 0 without any), whether it is
    defective, and optionally, for each defective part, its highest score away from every labelled defect."""

    scores: np.ndarray
    defective: np.ndarray
    defect_free: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.defective = np.asarray(self.defective, bool).reshape(-1)
        if self.defect_free is not None:
            self.defect_free = np.asarray(self.defect_free, np.float64).reshape(-1)

    def clean_surface(self) -> np.ndarray:
        """Scores of what a good part looks like: the good parts and the defect-free regions."""
        good = self.scores[~self.defective]
        return good if self.defect_free is None else np.concatenate([good, self.defect_free])

    def __add__(self, other: PartSample) -> PartSample:
        free = [f for f in (self.defect_free, other.defect_free) if f is not None]
        return PartSample(np.concatenate([self.scores, other.scores]),
                          np.concatenate([self.defective, other.defective]),
                          np.concatenate(free) if free else None)


def _binomial_cdf(n: int, rate: float) -> np.ndarray:
    """(n + 1,) P(X <= k) for X ~ Binomial(n, rate), k = 0..n."""
    if rate >= 1.0:
        return np.r_[np.zeros(n), 1.0]
    pmf = np.empty(n + 1)
    pmf[0] = (1.0 - rate) ** n
    for k in range(n):
        pmf[k + 1] = pmf[k] * (n - k) / (k + 1) * rate / (1.0 - rate)
    return np.cumsum(pmf)


def binomial_upper(n: int, rate: float, confidence: float = 0.95) -> int:
    """The smallest k with P(X <= k) >= confidence for X ~ Binomial(n, rate): how many misses n parts may show
    when the true miss rate is ``rate``."""
    return min(int(np.searchsorted(_binomial_cdf(n, rate), confidence, side="left")), n)


def allowed_misses(n: int, rate: float, confidence: float) -> int:
    """The most misses ``n`` defective parts may show while the one-sided (Clopper-Pearson) upper ``confidence``
    bound of the true miss rate stays <= ``rate``: the largest k with P(X <= k) <= 1 - confidence for
    X ~ Binomial(n, rate). -1 when even no miss is not enough (n < log(1 - confidence) / log(1 - rate), e.g.
    299 parts for a 1 % rate at 95 %). ``confidence`` 0 is the point estimate floor(rate * n)."""
    if confidence <= 0.0:
        return int(np.floor(rate * n + 1e-9))
    return int(np.searchsorted(_binomial_cdf(n, rate), 1.0 - confidence, side="right")) - 1


def review_threshold(ref: PartSample, *, target_recall: float, confidence: float, min_review: float,
                     max_review: float) -> tuple[float, int, str | None]:
    """The highest review threshold that passes no more of the reference's defective parts than
    ``allowed_misses`` lets through at ``target_recall``, clamped to [min_review, max_review]; with the number
    allowed and, when no threshold above the floor is backed by the sample, a note saying so."""
    s = np.sort(ref.scores[ref.defective])
    if not len(s):
        return max_review, 0, None
    k = allowed_misses(len(s), 1.0 - target_recall, confidence)
    if k < 0:
        return min_review, k, (f"{len(s)} defective reference parts cannot show {target_recall:.1%} recall at "
                               f"{confidence:.0%} confidence even with no part passed; review threshold held at its "
                               f"floor {min_review:g}")
    return float(np.clip(s[k], min_review, max_review)) if k < len(s) else max_review, k, None


def _read_thresholds(ref: PartSample, *, target_recall: float, max_false_reject: float, min_review: float,
                     max_review: float, min_fail: float, recall_confidence: float = 0.0
                     ) -> tuple[float, float, int, str | None]:
    """fail and review thresholds from ``ref``, with ``review_threshold``'s allowed misses and note."""
    review, misses_allowed, review_note = review_threshold(ref, target_recall=target_recall,
                                                           confidence=recall_confidence, min_review=min_review,
                                                           max_review=max_review)
    fail = max(review, min_fail)
    good = ref.clean_surface()
    if len(good):
        allowed = int(np.floor(max_false_reject * len(good)))
        ranked = np.sort(good)[::-1]
        if allowed < len(ranked):
            # strictly above the (allowed+1)-th highest good score fails at most `allowed` good parts
            fail = max(fail, float(np.nextafter(ranked[allowed], np.inf)))
    fail = float(min(fail, 1.0))
    return max(fail, review), review, misses_allowed, review_note


def choose_thresholds(part_scores: np.ndarray, defective: np.ndarray, *, target_recall: float,
                      max_false_reject: float, min_review: float, max_review: float, min_fail: float,
                      defect_free_scores: np.ndarray | None = None, train: PartSample | None = None,
                      score: ScoreKind = "classifier", recall_confidence: float = 0.0) -> Thresholds:
    """Thresholds from validation parts: ``part_scores`` (N,) = max defect score, ``defective`` (N,) bool.

    review: the highest threshold that keeps ``target_recall`` of the defective parts out of PASS, clamped to
    [min_review, max_review] (a crop more likely defective than not is never passed). With ``recall_confidence``
    c > 0 it is read with a margin: it may pass only as many defective parts as keep the one-sided c upper bound
    of the miss rate within 1 - target_recall (``allowed_misses``); a sample too small to show that holds the
    threshold at its floor. The point estimate (c = 0) is an extreme order statistic of the defective parts.
    fail: the lowest threshold >= max(review, min_fail) that fails at most ``max_false_reject`` of the good parts;
    parts between the two go to a person.

    ``defect_free_scores``: for each defective part, the max defect score of its crops away from every
    labelled defect (0 when there are none). A good part fails on exactly such a crop, so these join the good
    parts' scores in the sample the fail threshold is read from: a split with few good parts cannot place a 1 %
    false-reject point on them alone.

    ``train``: the training split's parts, scored by the trained models, pooled with val only if the val parts
    agree with what the pool says (``_agreeing_reference``). A model that has memorised its training parts scores
    them too high, and then the val split alone decides (``reference_note`` says why). The check cannot see the
    small optimism that matters at 1 %, so it is not the default (``verdict.reference: val``).
    """
    val = PartSample(part_scores, defective, defect_free_scores)
    kw = dict(target_recall=target_recall, max_false_reject=max_false_reject, min_review=min_review,
              max_review=max_review, min_fail=min_fail, recall_confidence=recall_confidence)
    ref, note = _agreeing_reference(val, train, kw)
    fail, review, misses_allowed, review_note = _read_thresholds(ref, **kw)
    return Thresholds(
        fail=fail,
        review=review,
        target_recall=target_recall,
        **_val_rates(val, fail, review),
        **_fail_reference(ref, fail),
        score=score,
        reference="train+val" if ref is not val else "val",
        review_reference_parts=int(ref.defective.sum()),
        reference_note=note,
        recall_confidence=recall_confidence,
        review_misses_allowed=misses_allowed,
        review_note=review_note,
    )


def _agreeing_reference(val: PartSample, train: PartSample | None, kw: dict) -> tuple[PartSample, str | None]:
    """val + train when val agrees with the pooled thresholds (no more defective val parts below its review
    threshold, and no more val clean-surface samples at or above its fail threshold, than the 95 % binomial bound
    at the target rates allows), else val with a note saying why the train split was not used."""
    if train is None or not len(train.scores):
        return val, None
    pooled = val + train
    fail, review, _, _ = _read_thresholds(pooled, **kw)
    n_def, clean = int(val.defective.sum()), val.clean_surface()
    misses = int((val.scores[val.defective] < review).sum())
    miss_limit = binomial_upper(n_def, 1.0 - kw["target_recall"])
    alarms = int((clean >= fail).sum())
    alarm_limit = binomial_upper(len(clean), kw["max_false_reject"])
    if misses <= miss_limit and alarms <= alarm_limit:
        return pooled, None
    return val, (f"train split not used: at its thresholds (review {review:.3f}, fail {fail:.3f}) {misses} of "
                 f"{n_def} defective val parts pass (bound {miss_limit}) and {alarms} of {len(clean)} clean val "
                 f"samples fail (bound {alarm_limit})")


def _val_rates(val: PartSample, fail: float, review: float) -> dict:
    """The val parts' recall, false-reject and review rates at the chosen thresholds (``Thresholds`` fields)."""
    s, y = val.scores, val.defective
    v = np.array([part_verdict([x], fail, review) for x in s])
    return {
        "val_recall": float((v[y] != "PASS").mean()) if y.any() else float("nan"),
        "val_false_reject": float((v[~y] == "FAIL").mean()) if (~y).any() else float("nan"),
        "val_review_rate": float((v == "REVIEW").mean()) if len(v) else float("nan"),
        "val_parts": len(s),
    }


def _fail_reference(ref: PartSample, fail: float) -> dict:
    """The fail threshold's sample size and its share at or above ``fail`` (``Thresholds`` fields)."""
    good = ref.clean_surface()
    return {
        "fail_reference_parts": len(good),
        "fail_reference_false_alarm": float((good >= fail).mean()) if len(good) else float("nan"),
    }


def part_rates(verdicts: Sequence[str], defective: Sequence[bool]) -> dict:
    """Escape rate (defective part passed), false-reject rate (good part failed) and review rates."""
    v = np.asarray(verdicts)
    y = np.asarray(defective, bool)
    n_def, n_good = int(y.sum()), int((~y).sum())
    return {
        "parts": len(v),
        "defective_parts": n_def,
        "good_parts": n_good,
        "escape_rate": float((v[y] == "PASS").mean()) if n_def else None,
        "false_reject_rate": float((v[~y] == "FAIL").mean()) if n_good else None,
        "review_rate_defective": float((v[y] == "REVIEW").mean()) if n_def else None,
        "review_rate_good": float((v[~y] == "REVIEW").mean()) if n_good else None,
        "verdicts": {k: int((v == k).sum()) for k in VERDICTS},
    }
