"""Small statistics for reports: how sure is a number, and does a claim hold.

Every interval here is two-sided at ``confidence`` and comes from ``scipy.stats``; no distribution
is written by hand. Over seeds: Student-t intervals of the mean (``summarize``), Welch intervals of a
difference of means (``difference``) and OLS slopes (``slope``, ``slope_difference``). For one
evaluation: the binomial standard error and Wilson interval of an accuracy measured on ``n``
examples. ``verdict`` turns an estimate and its interval into ``reproduced``, ``not reproduced`` or
``inconclusive`` for a claim "estimate > threshold" (or "<").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special, stats

__all__ = [
    "Difference",
    "Slope",
    "Summary",
    "Verdict",
    "binomial_se",
    "difference",
    "proportion_difference",
    "slope",
    "slope_difference",
    "summarize",
    "verdict",
    "wilson_interval",
]

NAN = math.nan
PRACTICAL_SEEDS = 1000  # beyond this, "n seeds would settle it" stops being advice
Direction = Literal["greater", "less"]


def binomial_se(p: float, n: int) -> float:
    """Standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` examples."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.sqrt(p * (1.0 - p) / n)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: ``k`` successes out of ``n`` (scipy's binomtest)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Summary:
    """Mean over ``n`` seeds with its Student-t interval; ``low``/``high`` are NaN when ``n`` < 2."""

    n: int
    mean: float
    std: float  # sample std (ddof 1)
    sem: float
    low: float
    high: float


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, std and the Student-t interval of the mean of ``values`` (non-finite ones left out).

    With one value there is no spread to measure: std, sem, low and high are NaN. Identical
    values give a zero-width interval at the mean.
    """
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN, NAN)
    mean = float(v.mean())
    if n == 1:
        return Summary(1, mean, NAN, NAN, NAN, NAN)
    std = float(v.std(ddof=1))
    sem = std / math.sqrt(n)
    if sem == 0.0:
        return Summary(n, mean, std, sem, mean, mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return Summary(n, mean, std, sem, float(low), float(high))


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its Welch interval and Hedges' g (NaN where undefined)."""

    estimate: float
    low: float
    high: float
    effect_size: float
    n_a: int
    n_b: int


def difference(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> Difference:
    """Welch's interval of ``mean(a) - mean(b)`` (unequal variances) and Hedges' g.

    Both sides need two values for an interval (NaN otherwise). Hedges' g is Cohen's d on the
    pooled sample std times the exact small-sample correction ``J(df)``, ``df = n_a + n_b - 2``.
    When neither side varies, the interval has zero width and g is NaN.
    """
    x, y = _finite(a), _finite(b)
    n_a, n_b = len(x), len(y)
    if n_a == 0 or n_b == 0:
        return Difference(NAN, NAN, NAN, NAN, n_a, n_b)
    estimate = float(x.mean() - y.mean())
    if n_a < 2 or n_b < 2:
        return Difference(estimate, NAN, NAN, NAN, n_a, n_b)
    var_a, var_b = float(x.var(ddof=1)), float(y.var(ddof=1))
    if var_a == 0.0 and var_b == 0.0:
        return Difference(estimate, estimate, estimate, NAN, n_a, n_b)
    with warnings.catch_warnings():
        # scipy warns when one side's seeds are (nearly) identical; Welch is still defined then.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    df = n_a + n_b - 2
    pooled = math.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / df)
    # J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), in logs to stay finite for large df.
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    return Difference(estimate, float(ci.low), float(ci.high), j * estimate / pooled, n_a, n_b)


def proportion_difference(
    k_a: int, n_a: int, k_b: int, n_b: int, confidence: float = 0.95
) -> Difference:
    """``k_a/n_a - k_b/n_b`` (e.g. the share of seeds that crashed) with Newcombe's hybrid score
    interval (1998, method 10: from the two Wilson intervals), which keeps a width when neither
    side varies (0 of 5 against 0 of 5 does not exclude a 40% rate); Cohen's h as effect size."""
    if n_a == 0 or n_b == 0:
        return Difference(NAN, NAN, NAN, NAN, n_a, n_b)
    p_a, p_b = k_a / n_a, k_b / n_b
    (l_a, u_a), (l_b, u_b) = (
        wilson_interval(k_a, n_a, confidence),
        wilson_interval(k_b, n_b, confidence),
    )
    estimate = p_a - p_b
    low = estimate - math.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2)
    high = estimate + math.sqrt((u_a - p_a) ** 2 + (p_b - l_b) ** 2)
    h = 2 * math.asin(math.sqrt(p_a)) - 2 * math.asin(math.sqrt(p_b))
    return Difference(estimate, low, high, h, n_a, n_b)


@dataclass(frozen=True)
class Slope:
    """An OLS slope (or a difference of two) with its t interval over ``n`` points."""

    estimate: float
    low: float
    high: float
    se: float
    n: int


def slope(x: Iterable[float], y: Iterable[float], confidence: float = 0.95) -> Slope:
    """OLS slope of ``y`` on ``x`` with its t interval (``n - 2`` degrees of freedom).

    Pairs with a NaN are left out. Fewer than 3 points (or a constant ``x``) give NaN bounds.
    """
    xs, ys = _pairs(x, y)
    n = len(xs)
    if n < 2 or np.ptp(xs) == 0:
        return Slope(NAN, NAN, NAN, NAN, n)
    fit = stats.linregress(xs, ys)
    if n < 3:
        return Slope(float(fit.slope), NAN, NAN, NAN, n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 2) * fit.stderr
    return Slope(
        float(fit.slope), float(fit.slope - half), float(fit.slope + half), float(fit.stderr), n
    )


def slope_difference(
    x_a: Iterable[float],
    y_a: Iterable[float],
    x_b: Iterable[float],
    y_b: Iterable[float],
    confidence: float = 0.95,
) -> Slope:
    """Slope of (x_a, y_a) minus slope of (x_b, y_b), with its t interval.

    This is the interaction coefficient of the joint regression
    ``y = b0 + b1 x + b2 g + b3 x g`` (``g`` = 1 for set a), whose estimate equals the difference
    of the two separate slopes and whose variance uses one residual variance pooled over both
    sets: ``s^2 (1/Sxx_a + 1/Sxx_b)``, ``s^2 = (SSE_a + SSE_b) / (n_a + n_b - 4)``. It assumes
    independent sets with equal noise; ``n`` is the number of points in both.
    """
    sets = [_pairs(x_a, y_a), _pairs(x_b, y_b)]
    n = sum(len(xs) for xs, _ in sets)
    if any(len(xs) < 2 or np.ptp(xs) == 0 for xs, _ in sets):
        return Slope(NAN, NAN, NAN, NAN, n)
    slopes, sse, inv_sxx = [], 0.0, 0.0
    for xs, ys in sets:
        fit = stats.linregress(xs, ys)
        slopes.append(fit.slope)
        sse += float(np.sum((ys - fit.intercept - fit.slope * xs) ** 2))
        inv_sxx += 1.0 / float(np.sum((xs - xs.mean()) ** 2))
    estimate = float(slopes[0] - slopes[1])
    df = n - 4
    if df < 1:
        return Slope(estimate, NAN, NAN, NAN, n)
    se = math.sqrt(sse / df * inv_sxx)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Slope(estimate, estimate - half, estimate + half, se, n)


@dataclass(frozen=True)
class Verdict:
    """Whether an interval settles the claim "estimate > threshold" (``greater``) or "<" (``less``).

    ``seeds_needed``: for an inconclusive result, how many seeds would shrink the interval below
    the gap to the threshold if the spread stays; None otherwise. ``scale``, ``unit`` and ``noun``
    (what ``n`` counts) only change how ``sentence`` reads (e.g. 100 and " points" for accuracies);
    ``signed``: the estimate is a difference or a slope (shown with its sign), not a level.
    """

    outcome: str
    estimate: float
    low: float
    high: float
    threshold: float
    direction: Direction
    n: int
    seeds_needed: int | None
    sd: float | None = None
    unit: str = ""
    scale: float = 1.0
    noun: str = "seed"
    signed: bool = True

    @property
    def sentence(self) -> str:
        """E.g. ``reproduced: +2.1 points [0.8, 3.4] > 0 over 5 seeds``."""
        claim = ">" if self.direction == "greater" else "<"
        other = "<" if self.direction == "greater" else ">"
        threshold = number(self.threshold * self.scale)
        seeds = f"over {self.n} {self.noun}{'s' if self.n != 1 else ''}"
        spread = f" (sd {number(self.sd * self.scale)}{self.unit})" if self.sd is not None else ""
        value = f"{number(self.estimate * self.scale, signed=self.signed)}{self.unit}"
        if math.isnan(self.low) or math.isnan(self.high):
            text = f"{self.outcome}: {value} {seeds}, no interval{spread}"
        else:
            interval = f"[{number(self.low * self.scale)}, {number(self.high * self.scale)}]"
            if self.outcome == "reproduced":
                text = f"reproduced: {value} {interval} {claim} {threshold} {seeds}{spread}"
            elif self.outcome == "not reproduced":
                text = (
                    f"not reproduced: {value} {interval} {other} {threshold} {seeds}{spread}, "
                    f"the claim was {claim} {threshold}"
                )
            else:
                text = f"inconclusive: {value} {interval} crosses {threshold} {seeds}{spread}"
        if self.seeds_needed is not None and self.seeds_needed > PRACTICAL_SEEDS:
            text += (
                f"; the estimate sits so close to {threshold} that no practical number of "
                f"{self.noun}s (over {PRACTICAL_SEEDS}) would settle it"
            )
        elif self.seeds_needed is not None:
            text += f"; about {self.seeds_needed} {self.noun}s would settle it if the spread stays"
        return text


def verdict(
    estimate: float,
    low: float,
    high: float,
    *,
    threshold: float,
    direction: Direction,
    n: int,
    sd: float | None = None,
    confidence: float = 0.95,
    unit: str = "",
    scale: float = 1.0,
    noun: str = "seed",
    signed: bool = True,
) -> Verdict:
    """Judge the claim "estimate > threshold" (``direction="greater"``) or "<" (``"less"``).

    ``reproduced`` when the whole interval ``[low, high]`` lies strictly on the claim's side,
    ``not reproduced`` when it lies strictly on the other side, ``inconclusive`` when it touches
    or crosses the threshold, or is missing (NaN bounds, e.g. one seed). For an inconclusive
    result, ``seeds_needed = ceil(n * (half_width / gap)^2)`` (at least ``n + 1``), where ``gap =
    |estimate - threshold|``: the t half-width shrinks as ``1/sqrt(n)`` if the spread stays.
    Without an interval but with ``sd`` (the spread of one seed), it is the smallest ``n' > n``
    whose t half-width ``t(n'-1) sd / sqrt(n')`` at ``confidence`` is below the gap. None when the
    gap is 0 or nothing measures the spread. ``unit``, ``scale``, ``noun`` and ``signed`` shape the
    sentence.
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    lo, hi = min(low, high), max(low, high)
    beyond, short = (lo > threshold, hi < threshold)
    if direction == "less":
        beyond, short = short, beyond
    gap = abs(estimate - threshold)
    needed: int | None = None
    if math.isnan(low) or math.isnan(high):
        outcome = "inconclusive"
        if sd is not None and sd > 0 and gap > 0:
            needed = _seeds_for(sd, gap, n, confidence)
    elif beyond:
        outcome = "reproduced"
    elif short:
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
        if gap > 0:
            needed = max(n + 1, math.ceil(n * ((hi - lo) / 2 / gap) ** 2))
    return Verdict(
        outcome, estimate, low, high, threshold, direction, n, needed, sd, unit, scale, noun, signed
    )


def _seeds_for(sd: float, gap: float, n: int, confidence: float) -> int:
    """Smallest n' > n (and >= 2) with a t half-width ``t(n'-1) sd / sqrt(n')`` below ``gap``."""
    quantile = 0.5 + confidence / 2
    # t >= z, so no n' below (z sd / gap)^2 can do: start there (t nears z within a few steps).
    k = max(n + 1, 2, math.floor((stats.norm.ppf(quantile) * sd / gap) ** 2))
    while stats.t.ppf(quantile, k - 1) * sd / math.sqrt(k) >= gap:
        k += 1
    return k


def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def _pairs(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have one length, got {len(xs)} and {len(ys)}")
    keep = ~(np.isnan(xs) | np.isnan(ys))
    return xs[keep], ys[keep]


def number(value: float | None, signed: bool = False) -> str:
    """Three significant digits; ``-`` for a missing value; rounding noise (a difference of the
    same numbers summed in another order) and ``-0`` shown as ``0``."""
    if value is None or not math.isfinite(value):
        return "-"
    value = round(value, 9) or 0.0
    return f"{value:+.3g}" if signed else f"{value:.3g}"
