"""The Date field of every answer, formatted once a second (issue 18) and still the current time."""

from __future__ import annotations

import email.utils
import time

from stockyard.server import Handler, http_date


def test_http_date_is_rfc_9110_gmt():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_800_000_000) == email.utils.formatdate(1_800_000_000, usegmt=True)


def test_answers_carry_the_current_second():
    handler = Handler.__new__(Handler)  # no connection needed to format a date
    before = int(time.time())
    value = handler.date_time_string()
    after = int(time.time())
    assert before <= email.utils.parsedate_to_datetime(value).timestamp() <= after
    assert handler.date_time_string(86400) == "Fri, 02 Jan 1970 00:00:00 GMT"
