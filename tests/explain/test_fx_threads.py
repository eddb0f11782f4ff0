"""torch.fx traces beside other threads: their forwards stay untraced, and traces do not interleave.

torch.fx patches ``nn.Module.__call__`` process-wide while it traces; these tests hold a trace open
(its forward waits on an event) while another thread runs models, so the overlap is certain.
"""

from __future__ import annotations

import threading

import torch
import torch.fx as fx
from torch import nn

from pellucid.explain import rewrite_for_pullback
from pellucid.explain._guard import ThreadSafeTracer


class _HeldOpen(nn.Module):
    """A ReLU MLP whose forward, while traced, waits for ``release`` (and says it started)."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)
        self.started, self.release = started, release

    def forward(self, x):
        if isinstance(x, fx.Proxy):
            self.started.set()
            self.release.wait(10)
        return self.fc2(torch.relu(self.fc1(x)))


def test_forwards_in_other_threads_during_a_trace_are_plain_and_the_trace_is_whole():
    torch.manual_seed(0)
    started, release = threading.Event(), threading.Event()
    model = _HeldOpen(started, release).eval()
    other = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        want_model, want_other = model(x), other(x)
    original_call = nn.Module.__call__

    result = {}

    def rewrite():
        result["rewritten"] = rewrite_for_pullback(model)

    tracer = threading.Thread(target=rewrite)
    tracer.start()
    try:
        assert started.wait(10)  # the trace is open now, nn.Module.__call__ is patched
        assert nn.Module.__call__ is not original_call
        with torch.no_grad():
            got_other, got_model = other(x), model(x)  # a stranger, and the very model being traced
    finally:
        release.set()
        tracer.join(20)
    assert type(got_other) is torch.Tensor and type(got_model) is torch.Tensor
    assert torch.equal(got_other, want_other) and torch.equal(got_model, want_model)
    assert nn.Module.__call__ is original_call

    gm, report = result["rewritten"]
    modules = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert modules.count("fc1") == 1 and modules.count("fc2") == 1  # nothing of the other forwards
    assert len(report.sites) == 1
    with torch.no_grad():
        assert torch.equal(gm(x), want_model)


def test_traces_in_two_threads_do_not_interleave():
    # Without the lock, B's trace starts inside A's and A finishes first: A restores the real
    # nn.Module.__call__ under B, and B's exit then re-installs A's dead wrapper for good.
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    original_call = nn.Module.__call__

    class _Waiting(nn.Module):
        """Says it is in its traced forward, then waits (at most 1 s) for the other thread."""

        def __init__(self, inside: threading.Event, other: threading.Event):
            super().__init__()
            self.fc, self.inside, self.other = nn.Linear(4, 4), inside, other

        def forward(self, x):
            self.inside.set()
            self.other.wait(1)
            return self.fc(x)

    graphs = {}

    def trace_a():
        graphs["a"] = ThreadSafeTracer().trace(_Waiting(a_in, b_in))  # with the lock B cannot
        # start meanwhile: A's wait times out
        a_done.set()

    def trace_b():
        a_in.wait(10)
        graphs["b"] = ThreadSafeTracer().trace(_Waiting(b_in, a_done))

    threads = [threading.Thread(target=trace_a), threading.Thread(target=trace_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert nn.Module.__call__ is original_call
    for name in "ab":
        assert [n.target for n in graphs[name].nodes if n.op == "call_module"] == ["fc"], name
    assert nn.Sequential(nn.Linear(2, 2))(torch.ones(1, 2)).shape == (1, 2)
