"""analysis.stats: every function against hand-computed values or an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.stats import (
    binomial_se,
    difference,
    proportion_difference,
    slope,
    slope_difference,
    summarize,
    verdict,
    wilson_interval,
)

Z95 = 1.959963984540054  # standard normal 0.975 quantile
T95_DF2 = 4.302652729749464  # Student t 0.975 quantile, 2 degrees of freedom

# Seeds of two configs, drawn once: a clear win of a over b, and an overlap.
WIN_A = [0.912, 0.918, 0.925, 0.915, 0.921]
WIN_B = [0.880, 0.887, 0.879, 0.884, 0.890]
OVERLAP_A = [0.900, 0.921, 0.908]
OVERLAP_B = [0.905, 0.913, 0.897]


def test_binomial_se() -> None:
    assert binomial_se(0.9, 400) == pytest.approx(0.015)
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(1.0, 50) == 0.0
    with pytest.raises(ValueError, match="n must be at least 1"):
        binomial_se(0.5, 0)


@pytest.mark.parametrize(("k", "n"), [(3, 10), (0, 20), (380, 400), (50, 50)])
def test_wilson_interval_matches_the_formula(k: int, n: int) -> None:
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(centre - half, 0.0), abs=1e-12)
    assert high == pytest.approx(min(centre + half, 1.0), abs=1e-12)


def test_wilson_interval_narrows_with_lower_confidence() -> None:
    wide, narrow = wilson_interval(30, 100, 0.99), wilson_interval(30, 100, 0.8)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


def test_summarize_three_seeds_by_hand() -> None:
    s = summarize([0.90, 0.91, 0.93])
    mean = 2.74 / 3
    std = math.sqrt(((0.90 - mean) ** 2 + (0.91 - mean) ** 2 + (0.93 - mean) ** 2) / 2)
    assert (s.n, s.mean, s.std) == (3, pytest.approx(mean), pytest.approx(std))
    assert s.sem == pytest.approx(std / math.sqrt(3))
    assert s.low == pytest.approx(mean - T95_DF2 * std / math.sqrt(3))
    assert s.high == pytest.approx(mean + T95_DF2 * std / math.sqrt(3))


def test_summarize_edge_cases() -> None:
    one = summarize([0.8])
    assert one.n == 1 and one.mean == 0.8
    assert all(math.isnan(v) for v in (one.std, one.sem, one.low, one.high))
    same = summarize([0.5, 0.5, math.nan])  # NaN left out, no spread: zero-width interval
    assert (same.n, same.low, same.high, same.std) == (2, 0.5, 0.5, 0.0)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_difference_is_welch_with_hedges_g() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.5, 3.1])
    d = difference(a, b)
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d.estimate == pytest.approx(2.5 - 7.6 / 3)
    assert (d.low, d.high) == (
        pytest.approx(d.estimate - half),
        pytest.approx(d.estimate + half),
    )
    pooled = math.sqrt((3 * a.var(ddof=1) + 2 * b.var(ddof=1)) / 5)
    # J(5) = Gamma(2.5) / (sqrt(2.5) Gamma(2)) = 0.75 sqrt(pi) / sqrt(2.5)
    j = 0.75 * math.sqrt(math.pi) / math.sqrt(2.5)
    assert d.effect_size == pytest.approx(j * d.estimate / pooled)
    assert (d.n_a, d.n_b) == (4, 3)


def test_difference_hedges_correction_for_two_groups_of_three() -> None:
    d = difference([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    # Both std 1, d = 2; J(4) = Gamma(2) / (sqrt(2) Gamma(1.5)) = sqrt(2 / pi).
    assert d.effect_size == pytest.approx(2 * math.sqrt(2 / math.pi))


def test_difference_edge_cases() -> None:
    single = difference([0.9], [0.8, 0.82])
    assert single.estimate == pytest.approx(0.09) and math.isnan(single.low)
    flat = difference([0.9, 0.9], [0.8, 0.8])
    assert (flat.low, flat.high) == (pytest.approx(0.1), pytest.approx(0.1))
    assert math.isnan(flat.effect_size)


def test_slope_by_hand() -> None:
    x, y = np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.1, 2.9, 4.2, 4.8])
    sxx = np.sum((x - x.mean()) ** 2)
    b = np.sum((x - x.mean()) * (y - y.mean())) / sxx
    resid = y - (y.mean() - b * x.mean()) - b * x
    se = math.sqrt(np.sum(resid**2) / 3 / sxx)
    half = stats.t.ppf(0.975, 3) * se
    s = slope(x, y)
    assert (s.estimate, s.se, s.n) == (pytest.approx(b), pytest.approx(se), 5)
    assert (s.low, s.high) == (pytest.approx(b - half), pytest.approx(b + half))
    assert math.isnan(slope([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).estimate)
    two = slope([0.0, 1.0], [0.0, 2.0])
    assert two.estimate == pytest.approx(2.0) and math.isnan(two.low)


def test_slope_difference_is_the_interaction_of_a_joint_regression() -> None:
    x_a = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.0, 0.5, 1.0])
    y_a = np.array([0.10, 0.22, 0.41, 0.70, 0.93, 0.14, 0.45, 0.88])
    x_b = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.25, 0.75])
    y_b = np.array([0.12, 0.15, 0.30, 0.38, 0.52, 0.18, 0.41])
    x = np.concatenate([x_a, x_b])
    g = np.concatenate([np.ones(len(x_a)), np.zeros(len(x_b))])
    design = np.column_stack([np.ones_like(x), x, g, x * g])
    y = np.concatenate([y_a, y_b])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    df = len(y) - 4
    cov = np.sum(resid**2) / df * np.linalg.inv(design.T @ design)
    half = stats.t.ppf(0.975, df) * math.sqrt(cov[3, 3])
    d = slope_difference(x_a, y_a, x_b, y_b)
    assert d.estimate == pytest.approx(coef[3])
    assert d.estimate == pytest.approx(slope(x_a, y_a).estimate - slope(x_b, y_b).estimate)
    assert d.se == pytest.approx(math.sqrt(cov[3, 3]))
    assert (d.low, d.high, d.n) == (
        pytest.approx(coef[3] - half),
        pytest.approx(coef[3] + half),
        15,
    )
    assert d.low > 0  # a rises faster than b, beyond noise


def verdict_of(a: list[float], b: list[float], direction: str = "greater"):
    d = difference(a, b)
    return verdict(
        d.estimate, d.low, d.high, threshold=0.0, direction=direction, n=min(d.n_a, d.n_b)
    )


def test_verdict_three_outcomes_on_fixed_seeds() -> None:
    assert verdict_of(WIN_A, WIN_B).outcome == "reproduced"
    assert verdict_of(WIN_B, WIN_A).outcome == "not reproduced"
    overlap = verdict_of(OVERLAP_A, OVERLAP_B)
    assert overlap.outcome == "inconclusive"
    assert overlap.seeds_needed is not None and overlap.seeds_needed > 3
    # The claim "a < b" flips the first two.
    assert verdict_of(WIN_B, WIN_A, "less").outcome == "reproduced"
    assert verdict_of(WIN_A, WIN_B, "less").outcome == "not reproduced"
    assert verdict_of(WIN_A, WIN_B).seeds_needed is None


def test_verdict_seeds_needed() -> None:
    # Half-width 2, gap 1, 4 seeds: 4 * (2 / 1)^2 = 16 seeds.
    v = verdict(1.0, -1.0, 3.0, threshold=0.0, direction="greater", n=4)
    assert (v.outcome, v.seeds_needed) == ("inconclusive", 16)
    # An interval touching the threshold is inconclusive; the formula gives n, at least n + 1.
    touching = verdict(1.0, 0.0, 2.0, threshold=0.0, direction="greater", n=4)
    assert (touching.outcome, touching.seeds_needed) == ("inconclusive", 5)
    assert verdict(0.0, -1.0, 1.0, threshold=0.0, direction="greater", n=4).seeds_needed is None
    # One seed, spread known: the smallest n with t(n-1) sd / sqrt(n) < gap; t(5)/sqrt(6) = 1.05,
    # t(6)/sqrt(7) = 0.925.
    single = verdict(1.0, math.nan, math.nan, threshold=0.0, direction="greater", n=1, sd=1.0)
    assert (single.outcome, single.seeds_needed) == ("inconclusive", 7)
    unknown = verdict(1.0, math.nan, math.nan, threshold=0.0, direction="greater", n=1)
    assert unknown.seeds_needed is None


def test_verdict_sentences() -> None:
    points = {"unit": " points", "scale": 100}
    win = verdict(0.021, 0.008, 0.034, threshold=0.0, direction="greater", n=5, **points)
    assert win.sentence == "reproduced: +2.1 points [0.8, 3.4] > 0 over 5 seeds"
    loss = verdict(-0.021, -0.034, -0.008, threshold=0.0, direction="greater", n=5, **points)
    assert (
        loss.sentence
        == "not reproduced: -2.1 points [-3.4, -0.8] < 0 over 5 seeds, the claim was > 0"
    )
    maybe = verdict(1.0, -1.0, 3.0, threshold=0.0, direction="greater", n=4)
    assert maybe.sentence == (
        "inconclusive: +1 [-1, 3] crosses 0 over 4 seeds; "
        "about 16 seeds would settle it if the spread stays"
    )
    level = verdict(
        0.848, 0.83, 0.866, threshold=0.95, direction="less", n=3, signed=False, **points
    )
    assert level.sentence == "reproduced: 84.8 points [83, 86.6] < 95 over 3 seeds"
    with pytest.raises(ValueError, match="direction"):
        verdict(1.0, 0.0, 2.0, threshold=0.0, direction="up", n=2)  # type: ignore[arg-type]


def test_proportion_difference_newcombe() -> None:
    # Newcombe (1998), Table II example (e): 56/70 vs 48/80 -> 0.2000, interval [0.0524, 0.3339]
    d = proportion_difference(56, 70, 48, 80)
    assert d.estimate == pytest.approx(0.2)
    assert (d.low, d.high) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    # no variation on either side still leaves an interval: 5 seeds cannot exclude a 40% rate
    none = proportion_difference(0, 5, 0, 5)
    assert none.estimate == 0 and none.low < -0.4 and none.high > 0.4
    assert proportion_difference(5, 5, 0, 5).low > 0.3


def test_a_verdict_needing_an_impractical_number_of_seeds_says_so() -> None:
    v = verdict(1e-6, -0.5, 0.5, threshold=0.0, direction="greater", n=3)
    assert v.outcome == "inconclusive" and v.seeds_needed > 1000
    assert "no practical number of seeds (over 1000) would settle it" in v.sentence
