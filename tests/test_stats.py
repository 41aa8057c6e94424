"""Means, Student-t intervals, paired differences and verdicts over seeds, on hand-computed values."""

import math

import pytest

from src.stats import HOLDS, NOT_RESOLVED, REVERSED, mean_interval, paired_difference, t_quantile, verdict

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
