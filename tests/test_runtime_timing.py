"""Round-robin benchmark timing (runtime.timing): every call is timed between two synchronisations."""

from __future__ import annotations

import time

from latentvla.runtime.timing import interleaved_ms


def test_interleaved_ms_brackets_each_call_with_sync():
    events: list[str] = []
    fns = [lambda: events.append("a"), lambda: events.append("b")]
    ms = interleaved_ms(fns, repeats=2, warmup=1, sync=lambda: events.append("|"))
    assert events == ["a", "b"] + ["|", "a", "|", "|", "b", "|"] * 2  # warm-up unsynchronised, then bracketed
    assert [m.shape for m in ms] == [(2,), (2,)]


def test_interleaved_ms_counts_the_wait_for_queued_work():
    """The closing sync is inside the timed span: work a device finishes after the call returns still counts."""
    ms = interleaved_ms([lambda: None], repeats=3, warmup=0, sync=lambda: time.sleep(0.02))
    assert (ms[0] >= 19.0).all(), ms[0]  # a no-op call: only the closing sync's 20 ms can make it this long
