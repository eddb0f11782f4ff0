"""seeded_global_rng: seeded draws, states restored, and one seeded block at a time across threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pellucid._rng import seeded_global_rng


def _states():
    return torch.get_rng_state(), np.random.get_state()[1].copy()


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_draws_are_the_seeds_and_the_states_come_back_also_on_errors():
    torch.manual_seed(123)
    np.random.seed(456)
    before = _states()
    with seeded_global_rng(7, numpy=True):
        got = torch.rand(5), np.random.rand(3)
    want = torch.Generator().manual_seed(7), np.random.RandomState(7)
    assert torch.equal(got[0], torch.rand(5, generator=want[0]))
    assert np.array_equal(got[1], want[1].rand(3))
    assert _same(_states(), before)

    with pytest.raises(ValueError), seeded_global_rng(7, numpy=True):
        torch.rand(3)
        raise ValueError("inside")
    assert _same(_states(), before)

    with seeded_global_rng(7):  # numpy=False: NumPy's generator is not touched at all
        np.random.rand(2)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert not np.array_equal(np.random.get_state()[1], before[1])


def test_no_seed_touches_nothing_and_blocks_nest_in_one_thread():
    torch.manual_seed(5)
    with seeded_global_rng(None):
        a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))  # unseeded: the caller's stream, advanced
    with seeded_global_rng(1), seeded_global_rng(2):  # re-entrant, no deadlock
        inner = torch.rand(2)
    assert torch.equal(inner, torch.rand(2, generator=torch.Generator().manual_seed(2)))


def test_two_threads_seeding_at_once_neither_draws_from_the_others_stream():
    # B tries to seed while A's block is open. Without the lock B would re-seed under A (A draws
    # B's stream) and their restores would run out of order (a seeded state left behind).
    a_in, b_in, a_drew = threading.Event(), threading.Event(), threading.Event()
    torch.manual_seed(99)
    before = torch.get_rng_state()
    draws = {}

    def a():
        with seeded_global_rng(1):
            a_in.set()
            b_in.wait(0.5)  # with the lock B cannot enter: this times out
            draws["a"] = torch.rand(4)
            a_drew.set()

    def b():
        a_in.wait(10)
        with seeded_global_rng(2):
            b_in.set()
            a_drew.wait(0.5)  # keeps B's block open while A draws, were A's still open
            draws["b"] = torch.rand(4)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for name, seed in (("a", 1), ("b", 2)):
        assert torch.equal(draws[name], torch.rand(4, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(torch.get_rng_state(), before)
