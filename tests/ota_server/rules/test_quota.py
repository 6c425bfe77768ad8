"""The report quota's token buckets, pure: a burst, then the sustained rate, and the wait."""

from __future__ import annotations

from ota_server.rules.quota import Level, Quota, take

Q = Quota(reports_per_s=2.0, report_burst=10.0, bytes_per_s=100.0, byte_burst=1000.0)


def test_a_new_device_has_its_burst_then_the_rate() -> None:
    level, wait = take(Q, None, 100.0, 10, 500)
    assert wait == 0 and level == Level(0.0, 500.0, 100.0)
    refused, wait = take(Q, level, 100.0, 1, 1)
    assert wait == 1 and refused == level  # a refusal takes nothing
    level, wait = take(Q, level, 101.0, 2, 100)  # one second later: 2 reports and 100 bytes more
    assert wait == 0 and level == Level(0.0, 500.0, 101.0)


def test_the_wait_is_for_the_emptier_bucket_rounded_up() -> None:
    level = Level(10.0, 0.0, 0.0)
    _, wait = take(Q, level, 0.0, 1, 450)  # 450 bytes at 100/s: 4.5 s
    assert wait == 5
    _, wait = take(Q, Level(0.0, 1000.0, 0.0), 0.0, 7, 1)  # 7 reports at 2/s: 3.5 s
    assert wait == 4


def test_buckets_fill_up_to_their_burst_only_and_a_clock_going_back_refills_nothing() -> None:
    level, wait = take(Q, Level(0.0, 0.0, 0.0), 1e6, 0, 0)
    assert wait == 0 and (level.reports, level.bytes) == (10.0, 1000.0)
    level, wait = take(Q, Level(1.0, 1.0, 50.0), 10.0, 0, 0)
    assert (level.reports, level.bytes, level.at) == (1.0, 1.0, 50.0)


def test_a_batch_larger_than_a_burst_waits_for_a_full_bucket_not_forever() -> None:
    level, wait = take(Q, Level(0.0, 0.0, 0.0), 0.0, 50, 5000)
    assert wait == 10  # the byte bucket fills in 10 s, the report bucket in 5 s
    level, wait = take(Q, level, 10.0, 50, 5000)
    assert wait == 0 and (level.reports, level.bytes) == (0.0, 0.0)


def test_over_any_window_a_device_gets_at_most_burst_plus_rate_times_time() -> None:
    level, got, t = None, 0, 0.0
    while t < 60.0:
        level, wait = take(Q, level, t, 1, 10)
        got += wait == 0
        t += 0.01
    assert got <= Q.report_burst + Q.reports_per_s * 60.0 + 1
