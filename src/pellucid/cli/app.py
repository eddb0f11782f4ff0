"""``pellucid app``: the interactive explorer in a browser (Gradio), served over HTTP.

    pellucid app --model runs/demo runs/dict
    pellucid app --model runs/demo --port 8080 --host 0.0.0.0

Three tabs: the white-box inspector (draw or upload a digit; the prediction, its place on the
reliability curve, every layer's features, a PGD attack), the pullback explorer (attribution and
counterfactual of any image, with any registered method and target) and rejection (a metric-neuron
model with an epsilon neuron says "I don't know"). ``--model`` takes run directories and registered
names; each tab offers the models it can use. Models load on first use and are cached.

Every option is checked before the server starts: an unknown model name, a missing or broken run
directory, a port outside 1..65535 or already in use, a host that cannot be bound: exit 2 with one
line. The page needs no network: no analytics, no share link, no web fonts.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
import threading
from collections.abc import Sequence

from pellucid._signals import signals_recorded
from pellucid.cli._common import DefaultsHelpFormatter, add_device_option, checked

# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "interactive explorer in the browser: white-box inspector, pullbacks, rejection"


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    p = sub.add_parser("app", help=SUMMARY, formatter_class=DefaultsHelpFormatter,
                       description="Serve the interactive explorer (Gradio) on HOST:PORT and print its "
                                   "address; Ctrl-C stops it. Needs the app extra: pip install "
                                   "'pellucid[app]'.")
    p.add_argument("--model", nargs="+", default=None, metavar="NAME|DIR",
                   help="run directories (written by `pellucid train` / `pellucid demo`) or registered "
                        "model names: white-box runs go to the inspector, dictionary-mlp runs to the "
                        "rejection tab, every image model to the pullback explorer (which also offers "
                        "fid-inception and the ImageNet classifiers); none: the inspector and rejection "
                        "tabs show how to train a model")
    p.add_argument("--port", type=checked(int, min=1, max=65535), default=7860, help="TCP port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves every network interface (the app has no "
                        "login: anyone who can reach the port can use it)")
    add_device_option(p)
    p.set_defaults(func=run)


def check_address(host: str, port: int) -> None:
    """``host:port`` can be bound now (the server binds it a moment later)."""
    from pellucid.errors import InvalidInputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInputError(f"--host {host!r} is not a valid address ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as e:
            raise InvalidInputError(f"cannot listen on {host}:{port} ({e.strerror or e}); the port is in "
                                    "use or not allowed: choose another with --port") from None


def run(args: argparse.Namespace) -> int:
    from pellucid.app.catalog import catalog
    from pellucid.errors import PellucidError

    models = catalog(args.model or [])  # a bad --model fails here, before anything is loaded
    check_address(args.host, args.port)
    from pellucid._device import resolve_device
    device = resolve_device(args.device)
    if importlib.util.find_spec("gradio") is None:
        raise PellucidError("the app needs Gradio: pip install 'pellucid[app]'")
    from pellucid.app.cache import ModelCache
    from pellucid.app.layout import build, launch

    page = build(ModelCache(device), models)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    # From the moment the address is shown, a Ctrl-C (or a kill's SIGTERM) is recorded, never
    # raised: it stops the app cleanly whenever it comes. Raised, it would end the process with 130
    # before the loop below, or inside httpcore's connection pool while Gradio checks the server,
    # whose lock it then leaves held: the pool's clean-up waits on it for ever and the process
    # ignores every later Ctrl-C.
    with signals_recorded(signal.SIGINT, signal.SIGTERM) as pressed:
        print(f"pellucid app: serving on http://{shown}:{args.port} (Ctrl-C stops it)", flush=True)
        try:
            launch(page, args.host, args.port, block=False)  # returns once the server answers
            while not pressed:
                threading.Event().wait(0.2)
        finally:
            page.close()
    print("pellucid app: stopped", flush=True)
    return 0
