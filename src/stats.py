"""Statistics over seeds: means, Student-t confidence intervals, paired differences and their verdicts.

A run of one seed is one draw of the training noise (float-level differences between CPUs, or another seed,
move the embedded study by up to 24 points), so an ordering of two methods means something only when the
interval of their paired difference over seeds excludes zero:

* ``holds``: the 95 % interval of ``a - b`` lies above 0;
* ``reversed``: it lies below 0;
* ``not resolved``: it contains 0, or there are fewer than two seeds (no interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved"


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the half-width of its two-sided ``level`` Student-t interval (nan for n < 2)."""

    mean: float
    half_width: float
    n: int
    sd: float  # sample standard deviation (n - 1); nan for n < 2

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_quantile(level: float, df: float) -> float:
    """The two-sided Student-t critical value: P(|T_df| <= q) = level."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, df))


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of ``values`` (e.g. one metric over seeds)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.nan, n, math.nan)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile(level, n - 1) * sd / math.sqrt(n), n, sd)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """The interval of the mean of ``a[i] - b[i]`` (the same seeds, in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one each per seed: {len(a)} vs {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)], level)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """The interval of ``mean(a) - mean(b)`` for two independent samples (Welch: unequal variances, the
    Welch-Satterthwaite degrees of freedom), e.g. one method's seeds trained on two machines. ``n`` is
    ``len(a) + len(b)``; ``sd`` is the standard error of the difference. Either sample under two values: no
    interval (nan); both without spread: a zero-width interval."""
    ia, ib = mean_interval(a, level), mean_interval(b, level)
    if ia.n < 2 or ib.n < 2:
        return Interval(ia.mean - ib.mean, math.nan, ia.n + ib.n, math.nan)
    va, vb = ia.sd ** 2 / ia.n, ib.sd ** 2 / ib.n
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Interval(ia.mean - ib.mean, 0.0, ia.n + ib.n, 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (ia.n - 1) + vb ** 2 / (ib.n - 1))
    return Interval(ia.mean - ib.mean, t_quantile(level, df) * se, ia.n + ib.n, se)


def verdict(diff: Interval) -> str:
    """``holds`` / ``reversed`` / ``not resolved`` for a paired difference (see the module doc)."""
    if diff.n < 2 or math.isnan(diff.half_width):
        return NOT_RESOLVED
    if diff.low > 0:
        return HOLDS
    if diff.high < 0:
        return REVERSED
    return NOT_RESOLVED
