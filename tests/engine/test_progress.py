"""engine.progress: the bars a tracker sees, cancellation at a step and at a forward, and nothing
changed outside a tracker."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_tiny

from lmscope.engine.hooks import hook_count
from lmscope.engine.progress import (
    Cancelled,
    Tracker,
    bar,
    checkpoint,
    current,
    steps,
    tracking,
)


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


def test_steps_report_nested_bars_and_close_them():
    t = Tracker()
    seen = []
    with tracking(t):
        assert current() is t
        for i in steps(range(2), desc="outer"):
            for _ in steps(["a", "b", "c"], desc="inner", unit="tok"):
                seen.append(t.snapshot())
            assert t.snapshot() == [{"desc": "outer", "done": i, "total": 2, "unit": "it"}]
    assert current() is None and t.snapshot() == []
    assert seen[0] == [{"desc": "outer", "done": 0, "total": 2, "unit": "it"},
                       {"desc": "inner", "done": 0, "total": 3, "unit": "tok"}]
    assert seen[-1][1]["done"] == 2 and seen[-1][0]["done"] == 1


def test_a_generator_without_length_has_no_total_and_a_bar_counts_by_hand():
    t = Tracker()
    with tracking(t):
        it = steps((x for x in range(3)), desc="gen")
        next(it)
        assert t.snapshot() == [{"desc": "gen", "done": 0, "total": None, "unit": "it"}]
        with bar(total=100, desc="tokens", unit="tok") as b:
            b.update(40)
            assert t.snapshot()[-1] == {"desc": "tokens", "done": 40, "total": 100, "unit": "tok"}
        it.close()
    assert t.snapshot() == []


def test_cancel_stops_at_the_next_step():
    t = Tracker()
    done = []
    with tracking(t), pytest.raises(Cancelled):
        for i in steps(range(10), desc="x"):
            done.append(i)
            if i == 3:
                t.cancel()
    assert done == [0, 1, 2, 3] and t.snapshot() == []


def test_cancel_from_another_thread_stops_a_forward_and_leaves_no_hook(lm):
    t = Tracker()
    t.cancel()
    errors = []

    def work():
        with tracking(t):
            try:
                lm.run("hello world")
            except Cancelled as e:
                errors.append(e)

    th = threading.Thread(target=work)
    th.start()
    th.join()
    assert len(errors) == 1 and hook_count(lm.hf) == 0
    with tracking(t), pytest.raises(Cancelled):
        lm.generate("hello", max_new_tokens=3)
    assert hook_count(lm.hf) == 0


def test_outside_a_tracker_nothing_changes(lm):
    checkpoint()  # no tracker: a no-op
    before = lm.run("hello world").logits
    with tracking(Tracker()):
        during = lm.run("hello world").logits
    assert torch.equal(before, during)  # tracking is bit-identical
    assert list(steps(range(3), desc="plain")) == [0, 1, 2]


def test_a_tracker_is_per_thread():
    t = Tracker()
    seen = []
    with tracking(t):
        th = threading.Thread(target=lambda: seen.append(current()))
        th.start()
        th.join()
    assert seen == [None]
