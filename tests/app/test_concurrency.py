"""Ten concurrent requests: each gets the result it would get alone, models load once, and no
user's threshold leaks into another's; first on the handlers, then through the running server."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pellucid.app import images, inspector, pullback, rejection

FACTORS = (0.5, 0.8, 1.0, 1.6, 2.0)

# Gradio's queue calls pandas options that pandas 3 deprecates (not this code's)
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting.*"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated.*")]


def _requests(authors_dir, dictionary_dir, digits):
    """Ten different requests over the three tabs: ``(name, call(cache) -> comparable result)``."""
    wb, dic = str(authors_dir), str(dictionary_dir)

    def inspect(path):
        return lambda cache: (lambda r: (r.label, r.probabilities))(
            inspector.inspect(cache, wb, images.from_file(path, (1, 28, 28))))

    def reject(factor):
        return lambda cache: (lambda r: (r.rejected, r.threshold, r.scores))(
            rejection.classify(cache, dic, rejection.noise_input((1, 28, 28), seed=3), factor))

    def explain(target):
        return lambda cache: (lambda r: (r.attribution.tobytes(), r.score_after))(
            pullback.explain(cache, wb, str(digits["5"][0]), pullback.Target("class index", target),
                             pullback.Settings(steps=2)))

    return ([(f"inspect {p.name}", inspect(p)) for p in (digits["3"][0], digits["5"][0], digits["3"][1])]
            + [(f"reject x{f}", reject(f)) for f in FACTORS]
            + [(f"explain {t}", explain(t)) for t in (0, 1)])


def test_ten_concurrent_handler_calls_give_independent_results(authors_dir, dictionary_dir, digits,
                                                                 monkeypatch):
    from pellucid.app import cache as cache_module

    requests = _requests(authors_dir, dictionary_dir, digits)
    assert len(requests) == 10
    # The reference results come from a pool thread too: a worker thread's OpenMP settings can
    # differ from the main thread's, and with them the order of float reductions.
    with ThreadPoolExecutor(1) as pool:
        alone = {name: pool.submit(call, cache_module.ModelCache()).result() for name, call in requests}

    loads = []
    real_load = cache_module._load
    monkeypatch.setattr(cache_module, "_load", lambda *a: loads.append(a[0]) or real_load(*a))
    shared = cache_module.ModelCache()
    barrier = threading.Barrier(len(requests))

    def run(call):
        barrier.wait()  # all ten start together, before any model is loaded
        return call(shared)

    with ThreadPoolExecutor(len(requests)) as pool:
        together = dict(zip([n for n, _ in requests], pool.map(run, [c for _, c in requests])))
    for name in alone:
        assert together[name] == alone[name], f"{name}: concurrent result differs from the result alone"
    assert sorted(loads) == sorted({str(authors_dir), str(dictionary_dir)})  # each model loaded once
    decisions = [together[f"reject x{f}"][0] for f in FACTORS]
    assert decisions[0] and not decisions[-1]  # the thresholds really differed per request
    assert shared.get(str(dictionary_dir)).model.epsilon == pytest.approx(together["reject x1.0"][1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(authors_dir, dictionary_dir, gradio_installed):
    from pellucid.app.cache import ModelCache
    from pellucid.app.catalog import catalog
    from pellucid.app.layout import build, launch

    port = _free_port()
    page = build(ModelCache(), catalog([str(authors_dir), str(dictionary_dir)]))
    launch(page, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def test_ten_concurrent_requests_through_the_server(server, authors_dir, dictionary_dir, digits):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    wb, dic = str(authors_dir), str(dictionary_dir)
    jobs = []
    for i in range(5):
        label = "35"[i % 2]
        jobs.append((f"Prediction: {label}",
                     client.submit(wb, handle_file(str(digits[label][i % 4])), False, api_name="/inspect_upload")))
    for factor in FACTORS:
        jobs.append(("ACCEPTED" if factor >= 1.6 else "REJECTED",
                     client.submit(dic, None, "astronaut", factor, api_name="/reject_noise")))
    for expected, job in jobs:
        status = job.result(timeout=120)[-1]
        assert expected in status, status
    # the server still answers after the burst
    assert "REJECTED" in client.predict(dic, None, "astronaut", 1.0, api_name="/reject_noise")[-1]


def test_many_users_shown_the_same_images_at_once_each_receive_them_whole(server, dictionary_dir):
    """Twelve identical requests at once: every figure of every answer downloads whole and equals the
    first answer's. (Gradio writes an array's PNG in place at a path named by its content, so
    requests that produce the same image would truncate the file under each other's downloads;
    the page hands Gradio finished files instead.)"""
    from gradio_client import Client
    from PIL import Image

    client = Client(server, verbose=False)
    for _ in range(3):
        jobs = [client.submit(str(dictionary_dir), None, "astronaut", 1.0, api_name="/reject_noise")
                for _ in range(12)]
        answers = [job.result(timeout=120) for job in jobs]
        figures = [[np.asarray(Image.open(a[i])) for i in (0, 2, 3, 4)] for a in answers]
        for answer, figs in zip(answers, figures):
            assert "REJECTED" in answer[-1], answer[-1]
            for fig, first in zip(figs, figures[0]):
                assert fig.shape == first.shape and np.array_equal(fig, first)


def test_a_client_gone_in_the_middle_of_an_upload_is_one_line_in_the_log(server):
    """A browser that closes the connection before its upload arrives whole: the server logs one
    warning line, no traceback, and answers the next request."""
    import logging
    import time
    import urllib.parse
    import urllib.request

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("uvicorn.error")
    log.addHandler(handler)
    try:
        url = urllib.parse.urlsplit(server)
        with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
            conn.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                         b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc")
        deadline = time.time() + 20
        while not records and time.time() < deadline:
            time.sleep(0.05)
    finally:
        log.removeHandler(handler)
    assert records, "the server logged nothing about the cut-off upload"
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records), \
        [r.getMessage() for r in records]
    assert any("client disconnected" in r.getMessage() for r in records)
    assert urllib.request.urlopen(server, timeout=10).status == 200
