"""Means, Student-t intervals, paired differences and verdicts over seeds, on hand-computed values."""

import math

import pytest

from src.stats import HOLDS, NOT_RESOLVED, REVERSED, mean_interval, paired_difference, t_quantile, verdict, welch_difference

T_975_2 = 4.302652729749464  # Student t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)


def test_the_t_interval_of_three_values():
    iv = mean_interval([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.sd == 1.0 and iv.n == 3
    assert iv.half_width == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-12)  # 2.484
    assert (iv.low, iv.high) == pytest.approx((2.0 - 2.48414, 2.0 + 2.48414), abs=1e-5)
    assert t_quantile(0.95, 2) == pytest.approx(T_975_2, rel=1e-12)
    assert t_quantile(0.95, 10_000) == pytest.approx(1.96, abs=1e-3)


def test_paired_differences_and_each_verdict():
    sr4ir, s2t = [90.0, 85.0, 80.0], [80.0, 79.0, 73.0]  # differences 10, 6, 7: mean 7.667, sd 2.082
    diff = paired_difference(sr4ir, s2t)
    assert diff.mean == pytest.approx(23 / 3) and diff.sd == pytest.approx(math.sqrt(13 / 3))
    assert diff.low == pytest.approx(23 / 3 - T_975_2 * math.sqrt(13 / 3) / math.sqrt(3))  # 2.496 > 0
    assert verdict(diff) == HOLDS
    assert verdict(paired_difference(s2t, sr4ir)) == REVERSED
    assert verdict(paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])) == NOT_RESOLVED  # [-0.48, 4.48] holds 0
    one = paired_difference([90.0], [80.0])
    assert one.mean == 10.0 and math.isnan(one.half_width) and verdict(one) == NOT_RESOLVED  # one seed: no interval
    with pytest.raises(ValueError, match="one each per seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])


def test_welch_interval_of_two_machines_means():
    # means 6 and 2, variances 4 and 1 over 3 seeds each: se^2 = 4/3 + 1/3, df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17
    d = welch_difference([4.0, 6.0, 8.0], [1.0, 2.0, 3.0])
    assert d.mean == 4.0 and d.n == 6 and d.sd == pytest.approx(math.sqrt(5 / 3))
    assert d.half_width == pytest.approx(3.2187586 * math.sqrt(5 / 3), rel=1e-6)  # t(0.975, 2.94) = 3.219: [-0.16, 8.16]
    assert verdict(d) == NOT_RESOLVED
    assert verdict(welch_difference([14.0, 16.0, 18.0], [1.0, 2.0, 3.0])) == HOLDS
    assert verdict(welch_difference([1.0, 2.0, 3.0], [14.0, 16.0, 18.0])) == REVERSED
    flat = welch_difference([100.0, 100.0], [100.0, 100.0, 100.0])  # both without spread: exact, zero width
    assert (flat.mean, flat.half_width) == (0.0, 0.0) and verdict(flat) == NOT_RESOLVED
    assert math.isnan(welch_difference([1.0], [1.0, 2.0]).half_width)  # one seed: no interval
