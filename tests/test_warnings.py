"""pellucid's warnings: recorded per thread without touching process-wide state; Captum's notices
silenced by narrow filters that survive a caller's ``simplefilter("always")``."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from pellucid._warnings import recorded_warnings, warn
from pellucid.explain import create_explainer
from pellucid.explain.baselines import HookCoverageWarning


def test_a_recorded_block_keeps_this_threads_warnings_and_shows_none():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with recorded_warnings() as outer:
            warn("first", HookCoverageWarning)
            with recorded_warnings() as inner:  # nested blocks: the innermost records
                warn("second")
            warn("third", RuntimeWarning)
        warn("after", UserWarning)  # outside any block: the warnings module shows it
    assert [(type(w), str(w)) for w in outer] == [(HookCoverageWarning, "first"),
                                                  (RuntimeWarning, "third")]
    assert [(type(w), str(w)) for w in inner] == [(UserWarning, "second")]
    assert [str(w.message) for w in shown] == ["after"]
    assert shown[0].filename == __file__  # stacklevel as warnings.warn's: the caller's line


def test_other_threads_warnings_do_not_land_in_a_block_and_process_state_is_untouched():
    filters, show = list(warnings.filters), warnings.showwarning
    entered, other_done = threading.Event(), threading.Event()
    caught_by_other = []

    def recorder(out):
        with recorded_warnings() as caught:
            entered.set()
            other_done.wait(10)
            warn("mine")
        out.extend(caught)

    def other():
        entered.wait(10)
        with pytest.warns(UserWarning, match="theirs") as record:
            warn("theirs")
        caught_by_other.extend(record)
        other_done.set()

    mine = []
    threads = [threading.Thread(target=recorder, args=(mine,)), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [str(w) for w in mine] == ["mine"]
    assert [str(w.message) for w in caught_by_other] == ["theirs"]
    assert warnings.filters == filters and warnings.showwarning is show


class _FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_construction_notes_are_recorded_and_captum_notices_stay_silent_under_always():
    model = _FunctionalReLU().eval()
    with recorded_warnings() as notes:
        explainer = create_explainer("guided-backprop", model)
    assert len(notes) == 1 and isinstance(notes[0], HookCoverageWarning)
    assert "1 torch.relu" in str(notes[0])
    x = torch.randn(2, 4)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # a caller's catch-all in front of every filter
        explainer.attribute(x, target=0)
        explainer.attribute(x, target=1)
    captum = [str(w.message) for w in shown if "captum" in w.filename]
    assert captum == [], captum
