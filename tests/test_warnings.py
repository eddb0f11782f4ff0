"""pellucid's warnings: recorded per thread without touching process-wide state; Captum's notices
silenced by narrow filters that survive a caller's ``simplefilter("always")``."""

from __future__ import annotations

import inspect
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


def _train_mode_model():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 6 * 6, 4)).train()


@pytest.mark.parametrize("call", ["gradient", "smoothgrad", "unit-gradients", "representation-check",
                                  "deletion", "hook-coverage", "nothing-rewritten"])
def test_each_warning_points_at_the_callers_line_however_deep_it_was_raised(call):
    from pellucid.explain import gradient_representation_check, unit_gradients_on_noise
    from pellucid.explain.metrics import deletion

    model, x = _train_mode_model(), torch.rand(2, 1, 6, 6)
    calls = {
        "gradient": lambda: create_explainer("gradient", model).attribute(x, target=0),
        "smoothgrad": lambda: create_explainer("smoothgrad", model, nt_samples=2).attribute(x, target=0),
        "unit-gradients": lambda: unit_gradients_on_noise(model, "4:1", n=2, input_shape=(1, 6, 6)),
        "representation-check": lambda: gradient_representation_check(model, x),
        "deletion": lambda: deletion(model, x, torch.rand_like(x), target=0),
        "hook-coverage": lambda: create_explainer("guided-backprop", _FunctionalReLU()),
        "nothing-rewritten": lambda: create_explainer("pullback", nn.Linear(3, 2)),
    }
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        calls[call]()
    mine = [w for w in shown if w.category.__module__.startswith("pellucid") or "training mode" in str(w.message)]
    assert mine, [str(w.message) for w in shown]
    assert {w.filename for w in mine} == {__file__}
    lines = inspect.getsource(test_each_warning_points_at_the_callers_line_however_deep_it_was_raised)
    first = test_each_warning_points_at_the_callers_line_however_deep_it_was_raised.__code__.co_firstlineno
    assert {lines.splitlines()[w.lineno - first].split(":")[0].strip() for w in mine} == {f'"{call}"'}
