"""pipeline.track's time summary: how durations read."""

import pytest

from pipeline.track import _minutes


@pytest.mark.parametrize("seconds, text", [(0.4, "0.4 s"), (59.94, "59.9 s"), (59.96, "1 min 0 s"),
                                           (119.7, "2 min 0 s"), (905.6, "15 min 6 s")])
def test_durations_round_to_whole_seconds_from_a_minute_on_and_never_show_60_s(seconds, text):
    assert _minutes(seconds) == text
