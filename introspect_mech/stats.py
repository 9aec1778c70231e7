"""Small, dependency-free statistics for reporting introspection rates.

Why these: the paper reports rates over tens of trials, often near 0 (false positives on
control trials) where the normal ("Wald") interval collapses to a point. The Wilson score
interval stays informative there, and Newcombe's hybrid score interval (1998, method 10)
carries that behaviour over to the difference of two rates, which is what "net detection"
(success rate on injected trials minus false-positive rate on control trials) is.
Cohen's kappa measures grader agreement beyond chance, which matters because most labels
in the calibration data are heavily imbalanced (raw agreement flatters a grader that always
says NO).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Z95 = 1.96  # two-sided 95% normal quantile, as in Newcombe (1998) and the paper's CIs


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (no continuity correction).

    n == 0 carries no information, so the whole unit interval is returned.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # Clamp tiny floating-point overshoot (e.g. k == 0 gives centre - half ~ -1e-17).
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson interval; `rate` is NaN when n == 0."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    @classmethod
    def of(cls, k: int, n: int, z: float = Z95) -> Rate:
        lo, hi = wilson_interval(k, n, z)
        return cls(k=k, n=n, rate=(k / n if n else math.nan), lo=lo, hi=hi)

    @classmethod
    def from_bools(cls, values: Iterable[bool | None], z: float = Z95) -> Rate:
        """Rate of True among the values; None (ungraded) is left out of k and n."""
        vals = [bool(v) for v in values if v is not None]
        return cls.of(sum(vals), len(vals), z)

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (0/0)"
        return f"{self.rate:.3f} [{self.lo:.3f}, {self.hi:.3f}] ({self.k}/{self.n})"


@dataclass(frozen=True)
class Difference:
    """Difference of two proportions p1 - p2 with a confidence interval."""

    estimate: float
    lo: float
    hi: float
    first: Rate
    second: Rate

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> Difference:
    """Newcombe's hybrid score interval (1998, method 10) for p1 - p2, independent samples.

    For net detection pass (successes, injected trials, false positives, control trials).
    With an empty group the estimate is NaN and the interval is the whole [-1, 1].
    """
    r1, r2 = Rate.of(k1, n1, z), Rate.of(k2, n2, z)
    if n1 == 0 or n2 == 0:
        return Difference(math.nan, -1.0, 1.0, r1, r2)
    d = r1.rate - r2.rate
    lo = d - math.sqrt((r1.rate - r1.lo) ** 2 + (r2.hi - r2.rate) ** 2)
    hi = d + math.sqrt((r1.hi - r1.rate) ** 2 + (r2.rate - r2.lo) ** 2)
    return Difference(d, max(-1.0, lo), min(1.0, hi), r1, r2)


def net_detection(successes: Rate, false_positives: Rate, z: float = Z95) -> Difference:
    """Success rate on injected trials minus false-positive rate on controls (Newcombe CI)."""
    return difference_interval(successes.k, successes.n, false_positives.k, false_positives.n, z)


@dataclass(frozen=True)
class Confusion:
    """2x2 counts of predictions against reference labels (reference = the 'gold' rater)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, pred: Sequence[bool], gold: Sequence[bool]) -> Confusion:
        if len(pred) != len(gold):
            raise ValueError(f"length mismatch: {len(pred)} predictions vs {len(gold)} labels")
        tp = sum(1 for p, g in zip(pred, gold, strict=True) if p and g)
        fp = sum(1 for p, g in zip(pred, gold, strict=True) if p and not g)
        fn = sum(1 for p, g in zip(pred, gold, strict=True) if not p and g)
        return cls(tp=tp, fp=fp, fn=fn, tn=len(pred) - tp - fp - fn)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def agreement(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else math.nan

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if (self.tp + self.fp) else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if (self.tp + self.fn) else math.nan

    @property
    def kappa(self) -> float:
        return _kappa_from_counts(self.tp, self.fp, self.fn, self.tn)


def _kappa_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    n = tp + fp + fn + tn
    if n == 0:
        return math.nan
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if pe == 1.0:
        # Both raters constant and identical: agreement is perfect but chance explains all
        # of it, so kappa is undefined (0/0). NaN rather than a misleading 1 or 0.
        return math.nan
    return (po - pe) / (1.0 - pe)


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa for two binary raters over the same items (NaN when undefined)."""
    c = Confusion.of(list(a), list(b))
    return c.kappa


def mean_interval(xs: Sequence[float], z: float = Z95) -> dict:
    """Mean with a normal-approximation interval (z · sd / √n) over independent values, e.g. paired
    differences across sentence/word pairs; the interval is NaN with fewer than two values."""
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = sum(xs) / n
    if n < 2:
        return {"mean": m, "lo": math.nan, "hi": math.nan, "n": 1}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}
