"""Statistics for reporting introspection rates, means, bootstrap intervals and permutation p-values.

Why these: the paper reports rates over tens of trials, often near 0 (false positives on
control trials) where the normal ("Wald") interval collapses to a point. The Wilson score
interval stays informative there, and Newcombe's hybrid score interval (1998, method 10)
carries that behaviour over to the difference of two rates, which is what "net detection"
(success rate on injected trials minus false-positive rate on control trials) is.
Cohen's kappa measures grader agreement beyond chance, which matters because most labels
in the calibration data are heavily imbalanced (raw agreement flatters a grader that always
says NO).

Means over a few tens of pairs get Student-t intervals (a normal quantile is 5-7 % too narrow
at n = 20-25); statistics without a closed-form interval (a ratio of two maxima over layers)
get a seeded percentile bootstrap over the independent units. Permutation p-values are
centred on the null distribution and always come with the smallest p the null can give.
This module owns every interval and p-value in the toolkit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


def kappa_interval(tp: int, fp: int, fn: int, tn: int, level: float = 0.95, n_boot: int = 4000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of Cohen's kappa, resampling the rated items (as 2x2 counts).

    Why: a calibration set with 11 positives gives a kappa whose sampling error is as large as the
    differences between graders; a kappa without its interval invites reading noise as progress.
    Resamples whose kappa is undefined (one rater constant) are dropped; (nan, nan) when nothing is left."""
    import numpy as np

    n = tp + fp + fn + tn
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.array([tp, fp, fn, tn], dtype=float) / n, size=n_boot)
    a, b, c, d = (draws[:, i].astype(float) for i in range(4))
    po = (a + d) / n
    pe = ((a + b) * (a + c) + (c + d) * (b + d)) / (n * n)
    ok = pe < 1.0
    if not ok.any():
        return math.nan, math.nan
    k = (po[ok] - pe[ok]) / (1.0 - pe[ok])
    lo, hi = np.quantile(k, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa for two binary raters over the same items (NaN when undefined)."""
    c = Confusion.of(list(a), list(b))
    return c.kappa


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student-t quantile: ``t`` with P(|T_df| <= t) = ``level``."""
    from scipy import stats as _st

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(_st.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class MeanCI:
    """A mean with its (Student-t) interval, the counterpart of ``Rate`` for continuous values.

    ``mean``/``lo``/``hi`` are None with no values; ``lo``/``hi`` are NaN with one value (no spread)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int

    def __str__(self) -> str:
        if not self.n or self.mean is None:
            return "n/a (n=0)"
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] (n={self.n})"


def mean_interval(xs: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean with a Student-t interval (t_{n-1} · sd / √n) over independent values, e.g. paired
    differences across sentence/word pairs; the interval is NaN with fewer than two values.

    Why t and not z: the units here are 12-50 pairs, where z = 1.96 understates the half-width
    by 5-7 % (t_{19, 0.975} = 2.093)."""
    n = len(xs)
    if n == 0:
        return MeanCI(None, None, None, 0)
    m = sum(xs) / n
    if n < 2:
        return MeanCI(m, math.nan, math.nan, 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return MeanCI(m, m - half, m + half, n)


def mean_intervals(values: Any, level: float = 0.95) -> dict[str, Any]:
    """``mean_interval`` over the first axis of an array ``[n, ...]``, element by element (numpy arrays out):
    ``mean``, ``lo``, ``hi``, ``sd`` and the t statistic ``t`` = mean / (sd / √n) (0 where sd is 0).
    For many means at once, e.g. a paired change per (layer, head); NaN intervals with n < 2."""
    import numpy as np

    d = np.asarray(values, dtype=np.float64)
    n = d.shape[0]
    mean = d.mean(0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return {"mean": mean, "lo": nan, "hi": nan.copy(), "sd": nan.copy(), "t": nan.copy(), "n": n}
    sd = d.std(0, ddof=1)
    se = sd / math.sqrt(n)
    half = t_quantile(level, n - 1) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), 0.0)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "t": t, "n": n}


def bootstrap_interval(units: Sequence, statistic: Callable[[Sequence], float | None], *, n_boot: int = 2000,
                       seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over independent ``units`` (e.g. sentence/word pairs) of ``statistic``.

    ``statistic(resampled_units)`` may return None (undefined on that resample, e.g. a ratio whose
    denominator is not positive); such resamples are counted in ``n_undefined`` and left out of the
    quantiles. Seeded, so a report is reproducible."""
    import random as _random

    est = statistic(list(units))
    n = len(units)
    if n == 0:
        return {"estimate": est, "lo": math.nan, "hi": math.nan, "n_boot": 0, "n_undefined": 0, "level": level}
    rng = _random.Random(seed)
    vals, undefined = [], 0
    for _ in range(n_boot):
        v = statistic([units[rng.randrange(n)] for _ in range(n)])
        if v is None or v != v:
            undefined += 1
        else:
            vals.append(float(v))
    if not vals:
        return {"estimate": est, "lo": math.nan, "hi": math.nan, "n_boot": n_boot, "n_undefined": undefined,
                "level": level}
    vals.sort()
    a = (1 - level) / 2
    return {"estimate": est, "lo": _quantile(vals, a), "hi": _quantile(vals, 1 - a), "n_boot": n_boot,
            "n_undefined": undefined, "level": level}


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default 'linear' rule)."""
    if not sorted_vals:
        return math.nan
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> float:
    return _quantile(sorted(xs), 0.5)


Alternative = Literal["two-sided", "greater", "less"]


def min_attainable_p(n_null: int) -> float:
    """The smallest Monte-Carlo permutation p that ``n_null`` null draws can give: 1 / (1 + n_null)."""
    return 1.0 / (1 + n_null) if n_null >= 0 else math.nan


@dataclass(frozen=True)
class PermutationTest:
    """A Monte-Carlo permutation (or random-null) test of ``effect`` against ``null`` draws.

    Two-sided tests are centred on the null median ``m``: p = (1 + #{|x − m| ≥ |e − m|}) / (1 + n),
    so an effect is judged against what random components do, not against 0 (nulls can be
    shifted: random heads also move a metric). One-sided tests are pre-declared: "greater"
    counts x ≥ e, "less" counts x ≤ e. ``min_p`` is the smallest p this null can give."""

    effect: float
    p_value: float
    n_null: int
    null_median: float
    alternative: str
    min_p: float

    def to_dict(self) -> dict:
        return {"p_value": self.p_value, "min_p": self.min_p, "n_null": self.n_null, "null_median": self.null_median,
                "p_alternative": self.alternative,
                "p_method": ("(1 + #{|null - median| >= |effect - median|}) / (1 + n_null)"
                             if self.alternative == "two-sided" else
                             f"(1 + #{{null {'>=' if self.alternative == 'greater' else '<='} effect}}) / (1 + n_null)")}


def permutation_test(effect: float, null: Sequence[float], alternative: Alternative = "two-sided") -> PermutationTest:
    """See ``PermutationTest``; an empty null gives p = 1 (nothing can be claimed)."""
    null = [float(x) for x in null]
    n = len(null)
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    m = median(null) if n else math.nan
    if n == 0:
        return PermutationTest(effect, 1.0, 0, m, alternative, 1.0)
    if alternative == "two-sided":
        k = sum(abs(x - m) >= abs(effect - m) for x in null)
    elif alternative == "greater":
        k = sum(x >= effect for x in null)
    else:
        k = sum(x <= effect for x in null)
    return PermutationTest(effect, (1 + k) / (1 + n), n, m, alternative, min_attainable_p(n))


def format_p(p: float, min_p: float, n_null: int) -> str:
    """How every summary prints a permutation p: never without the smallest p the null allows."""
    return f"p = {p:.3f} (min attainable {min_p:.3f}, {n_null} nulls)"


def format_rate(r: Rate | None) -> str:
    """How every table prints a rate: ``0.25 [0.09, 0.53] (3/12)``, or ``–`` without trials."""
    if r is None or r.n == 0:
        return "–"
    return f"{r.rate:.2f} [{r.lo:.2f}, {r.hi:.2f}] ({r.k}/{r.n})"


def format_difference(d: Difference | None) -> str:
    """A difference of rates with its interval, signed: ``+0.12 [-0.05, +0.30]``."""
    if d is None:
        return "–"
    return f"{d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]"


def format_mean(m: MeanCI | None, spec: str = "+.2f") -> str:
    """A mean with its interval: ``+0.24 [-0.14, +0.62]``, or ``–`` without values."""
    if m is None or not m.n:
        return "–"
    return f"{m.mean:{spec}} [{m.lo:{spec}}, {m.hi:{spec}}]"
