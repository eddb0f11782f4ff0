"""pellucid._signals: a signal recorded instead of acting, a second one escalating, handlers
restored, ignored signals left ignored, nothing installed outside the main thread."""

from __future__ import annotations

import signal
import threading

import pytest

from pellucid._signals import signal_name, signals_recorded, terminate_raises
from pellucid.errors import Stopped

pytestmark = pytest.mark.usefixtures("ctrl_c_heard")  # Ctrl-C acts here even if the suite ignores it


def test_a_signal_is_recorded_instead_of_raising_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    notices = []
    with signals_recorded(signal.SIGINT, signal.SIGTERM, notice=notices.append) as received:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # without escalate, a second one is recorded too
        assert received == [signal.SIGTERM, signal.SIGINT]
        assert notices == [signal.SIGTERM]  # said once, for the first
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # Python's own Ctrl-C again
        signal.raise_signal(signal.SIGINT)


def test_the_handlers_come_back_when_the_block_raises():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError):
        with signals_recorded(signal.SIGTERM):
            raise ValueError("boom")
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_escalates_to_stopped_at_once():
    with signals_recorded(signal.SIGINT, signal.SIGTERM, escalate=True) as received:
        signal.raise_signal(signal.SIGINT)
        assert received == [signal.SIGINT]
        with pytest.raises(Stopped) as stopped:
            signal.raise_signal(signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM and str(stopped.value) == ""
    assert isinstance(stopped.value, KeyboardInterrupt)  # what a caller that catches Ctrl-C expects


def test_an_ignored_signal_stays_ignored():
    """A background job of a non-interactive shell ignores SIGINT: recording it would un-ignore it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_recorded(signal.SIGINT, signal.SIGTERM) as received:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert received == []
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_is_installed():
    seen, before = [], signal.getsignal(signal.SIGINT)

    def body():
        with signals_recorded(signal.SIGINT) as received:
            seen.append((received, signal.getsignal(signal.SIGINT)))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [([], before)]


def test_signal_names_say_what_a_person_pressed():
    assert signal_name(signal.SIGINT) == "SIGINT (Ctrl-C)"
    assert signal_name(signal.SIGTERM) == "SIGTERM"


def test_continued_by_adds_how_to_continue_only_when_something_was_kept():
    kept = Stopped(signal.SIGTERM, "epoch 2 of 5 stopped after batch 3 of 9; the run so far is saved in d")
    assert str(kept.continued_by("the same command continues it")) == (
        "epoch 2 of 5 stopped after batch 3 of 9; the run so far is saved in d; the same command continues it")
    assert kept.continued_by("x").signum == signal.SIGTERM
    assert str(Stopped(signal.SIGINT).continued_by("x")) == ""  # nothing kept: nothing to continue
    assert Stopped(signal.SIGINT, "done", finished=True).continued_by("x").finished


def test_demo_stopped_by_ctrl_c_says_that_running_it_again_continues(tmp_path, monkeypatch, capsys):
    """`pellucid demo` has no --resume: running it again continues its run."""
    from pellucid.cli.main import main
    from pellucid.train import trainer
    from pellucid.train.checkpointing import PARTIAL_FILE

    real, calls = trainer.check_loss, []

    def ctrl_c_in_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "check_loss", ctrl_c_in_step_2)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 130
    err = capsys.readouterr().err.splitlines()
    # 11,552 MNIST 3/5 training images less the 1,000 held out for validation, in batches of 200: 53
    assert err[-1] == (f"pellucid demo: stopped: epoch 1 of 1 stopped after batch 2 of 53; the run so far is "
                       f"saved in {out}; the same command continues it")
    assert (out / PARTIAL_FILE).is_file()


def test_sigterm_raises_stopped_inside_terminate_raises_and_acts_as_before_outside():
    before, unwound = signal.getsignal(signal.SIGTERM), []
    with pytest.raises(Stopped) as stopped:
        with terminate_raises():
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                unwound.append(True)  # a finally runs, which Python's default SIGTERM skips
    assert stopped.value.signum == signal.SIGTERM and unwound == [True]
    assert signal.getsignal(signal.SIGTERM) is before
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with terminate_raises():  # ignored at the start: stays ignored
            signal.raise_signal(signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
