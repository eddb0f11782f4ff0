"""The Gradio page: three tabs wired to the handlers of :mod:`pellucid.app.inspector`,
:mod:`pellucid.app.pullback` and :mod:`pellucid.app.rejection`.

Only layout and plumbing live here. Each event calls a small adapter that turns widget values into
handler arguments and a handler's result (or its error) into widget values:

* errors a user can cause (:class:`~pellucid.errors.PellucidError`, unreadable files) become a
  message in the tab's status box, and the outputs are cleared; anything else is logged with its
  traceback and reported as an internal error, and the server keeps serving;
* long work (the attack, the counterfactual, loading a model) reports progress, and a Stop button
  cancels the event; the adapters also stop the computation itself at its next step, through a
  per-session flag;
* per-user values (the inspected image, the threshold) live in ``gr.State`` (one per browser
  session), models in the shared :class:`~pellucid.app.cache.ModelCache`.

Offline by construction: no analytics, no share link, system fonts only (Gradio's default theme
loads web fonts), no run history kept in the browser.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import numpy as np
import torch

from pellucid.app import images, inspector, pullback, rejection
from pellucid.app.cache import ModelCache
from pellucid.app.files import ImageFiles
from pellucid.app.catalog import Catalog
from pellucid.errors import InvalidInputError, PellucidError

__all__ = ["Cancelled", "build", "launch"]

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LOG = logging.getLogger("pellucid.app")
SYSTEM_SANS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif")
SYSTEM_MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")
TRAIN_WHITEBOX = ("No white-box model was given. Train one and start the app with it:\n\n"
                  "```\npellucid demo --out runs/demo\npellucid app --model runs/demo\n```\n\n"
                  "(or `pellucid train whitebox-mnist35 --out runs/wb`; any run directory of an image "
                  "classifier works, the layer view needs a white-box network).")
TRAIN_REJECTING = ("No model that can reject was given. Train an epsilon-softmax dictionary and start "
                   "the app with it:\n\n```\npellucid train dictionary-mlp --data-init --out runs/dict\n"
                   "pellucid app --model runs/dict\n```")


class Cancelled(PellucidError):
    """The user pressed Stop."""


class CancelFlag:
    """A per-session stop flag kept in ``gr.State``: Stop sets it, the running computation checks
    it at each step. Copying (Gradio copies a state's initial value for each session) gives a new,
    unset flag."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __deepcopy__(self, memo) -> "CancelFlag":
        return CancelFlag()


def _reporter(flag: CancelFlag | None, progress) -> Callable[[float, str], None]:
    """``report(fraction, text)`` for the handlers: shows progress, raises :class:`Cancelled` after
    Stop."""
    if flag is not None:
        flag.event.clear()

    def report(fraction: float, text: str) -> None:
        if flag is not None and flag.event.is_set():
            raise Cancelled("stopped")
        if progress is not None:
            progress(fraction, desc=text)

    return report


def _message(error: BaseException) -> str:
    if isinstance(error, Cancelled):
        return "Stopped."
    if isinstance(error, (PellucidError, OSError)):
        text = " ".join(str(error).split()) or type(error).__name__
        return f"**Error:** {text}"
    LOG.exception("internal error in the app", exc_info=error)
    return f"**Internal error** ({type(error).__name__}: {error}); the server log has the details."


def _guarded(outputs: int, work: Callable[[], tuple]) -> tuple:
    """``work()``'s outputs, or ``outputs - 1`` cleared values and the status message."""
    try:
        return work()
    except Exception as error:  # every error becomes a status line; the server keeps serving
        return (None,) * (outputs - 1) + (_message(error),)


def _number(value, name: str) -> float:
    """A number box's value (``None`` when the user emptied it) as a float, or a readable error."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}: enter a number") from None


def _choices(items: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return list(items)


# --------------------------------------------------------------------------- adapters (tab 1)


def _inspection_outputs(result: inspector.Inspection) -> tuple:
    layers = [img for img, _ in result.layers] + [None] * (4 - len(result.layers))
    x = result.input.x.numpy()
    return (images.preview(result.input.x), result.input.describe(), result.reliability_figure, *layers,
            x, result.summary())


def inspect_canvas(cache: ModelCache, source, canvas) -> tuple:
    """Tab 1 for a drawing: (input, conversion, reliability figure, 4 layer figures, stored input,
    status); the same for :func:`inspect_upload`."""
    def work():
        shape = inspector.load_classifier(cache, source).spec.input_shape
        return _inspection_outputs(inspector.inspect(cache, source, images.from_canvas(canvas, shape)))
    return _guarded(9, work)


def inspect_upload(cache: ModelCache, source, path, invert) -> tuple:
    def work():
        loaded = inspector.load_classifier(cache, source)
        model_input = images.from_file(path, loaded.spec.input_shape, invert=bool(invert))
        return _inspection_outputs(inspector.inspect(cache, source, model_input))
    return _guarded(9, work)


def run_attack(cache: ModelCache, source, x, eps, steps, flag=None, progress=None) -> tuple:
    """Tab 1's attack: (attacked input, perturbation, evidence figure, status)."""
    def work():
        report = _reporter(flag, progress)
        result = inspector.attack(cache, source, x, _number(eps, "eps"), int(_number(steps, "steps")), report)
        return result.adversarial, result.difference, result.evidence_figure, result.summary()
    return _guarded(4, work)


# --------------------------------------------------------------------------- adapters (tab 2)


def run_pullback(cache: ModelCache, source, upload, photo, kind, class_index, unit, ref_upload, ref_photo,
                 method, temperature, gate, steps, alpha, eps, flag=None, progress=None) -> tuple:
    """Tab 2: (2 sliders, input, attribution, counterfactual, difference, top predictions, head
    note, coverage, conversion, status)."""
    def work():
        image = upload or (f"skimage:{photo}" if photo else None)
        value = {"class index": class_index, "hidden unit": unit,
                 "looks like another image": ref_upload or (f"skimage:{ref_photo}" if ref_photo else None)
                 }.get(kind)
        settings = pullback.Settings(method, _number(temperature, "temperature"), gate,
                                     int(_number(steps, "steps")), _number(alpha, "alpha"),
                                     _number(eps, "eps") if eps else None)
        r = pullback.explain(cache, source, image, pullback.Target(kind, value), settings,
                             _reporter(flag, progress))
        sliders = ((r.input, r.counterfactual) if r.counterfactual is not None else None,
                   (r.difference, r.counterfactual) if r.counterfactual is not None else None)
        return (*sliders, r.input, r.attribution, r.counterfactual, r.difference, r.top,
                r.head_note or "", r.coverage, r.conversion, r.summary())
    return _guarded(11, work)


# --------------------------------------------------------------------------- adapters (tab 3)


def _rejection_outputs(result: rejection.RejectionResult) -> tuple:
    state = (result.input.x.numpy(), result.input.steps, result.input.name)
    return (images.preview(result.input.x), result.input.describe(), result.scores_figure, result.figure,
            result.tradeoff_figure, state, result.summary())


def _stored(state) -> images.ModelInput:
    if state is None:
        raise InvalidInputError("no input yet: upload an image or press one of the example buttons")
    x, steps, name = state
    return images.ModelInput(torch.as_tensor(np.asarray(x)), tuple(steps), name)


def reject_input(cache: ModelCache, source, how, path, photo, factor, state=None) -> tuple:
    """Tab 3: (input, conversion, scores figure, why figure, trade-off figure, stored input, status);
    ``how``: "upload", "photo", "noise", "blank" or "again" (the stored input, new threshold)."""
    def work():
        loaded = rejection.load_rejecting(cache, source)
        shape = loaded.spec.input_shape
        model_input = {"upload": lambda: images.from_file(path, shape),
                       "photo": lambda: pullback.load_input(f"skimage:{photo}" if photo else None, shape),
                       "noise": lambda: rejection.noise_input(shape),
                       "blank": lambda: rejection.blank_input(shape),
                       "again": lambda: _stored(state)}[how]()
        return _rejection_outputs(rejection.classify(cache, source, model_input, _number(factor, "threshold")))
    return _guarded(7, work)


# --------------------------------------------------------------------------- page


def theme():
    import gradio as gr

    return gr.themes.Base(font=SYSTEM_SANS, font_mono=SYSTEM_MONO)


def build(cache: ModelCache, models: Catalog):
    """The ``gr.Blocks`` page (not launched)."""
    import gradio as gr

    files = ImageFiles()  # every image reaches Gradio as a finished file (see pellucid.app.files)
    # delete_cache: the figures Gradio stores for the browser are removed after an hour, hourly
    with gr.Blocks(title="pellucid", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# pellucid\nWhite-box networks, excitation pullbacks and rejection, interactively. "
                    "See `docs/app.md` for what each number means.")
        with gr.Tabs():
            with gr.Tab("White-box inspector", id="inspector"):
                _inspector_tab(gr, cache, models, files)
            with gr.Tab("Pullback explorer", id="pullback"):
                _pullback_tab(gr, cache, models, files)
            with gr.Tab("Rejection", id="rejection"):
                _rejection_tab(gr, cache, models, files)
    return page


def _kinds(gr, components) -> list[str | None]:
    """What :meth:`ImageFiles.convert` writes for each output component."""
    return ["image" if isinstance(c, gr.Image) else "pair" if isinstance(c, gr.ImageSlider) else None
            for c in components]


def _status(gr, elem_id: str):
    return gr.Markdown("", elem_id=elem_id)


def _inspector_tab(gr, cache: ModelCache, models: Catalog, files: ImageFiles) -> None:
    if not models.inspector:
        gr.Markdown(TRAIN_WHITEBOX, elem_id="inspector-missing")
        return
    flag = gr.State(CancelFlag())
    stored = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(_choices(models.inspector), value=models.inspector[0][1], label="model",
                                elem_id="inspector-model")
            canvas = gr.Sketchpad(label="draw a digit (large, centred)", type="numpy", image_mode="L",
                                  canvas_size=(280, 280), layers=False, format="png",
                                  brush=gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed"),
                                  elem_id="inspector-canvas")
            draw_button = gr.Button("Inspect drawing", variant="primary", elem_id="inspector-draw")
            upload = gr.File(label="or upload an image (any size or colour)", type="filepath",
                             elem_id="inspector-upload")
            invert = gr.Checkbox(label="invert (dark ink on light paper)", value=False)
            upload_button = gr.Button("Inspect upload", elem_id="inspector-upload-button")
        with gr.Column(scale=2):
            status = _status(gr, "inspector-status")
            with gr.Row():
                converted = gr.Image(label="model input (after conversion)", format="png",
                                     elem_id="inspector-input", interactive=False)
                reliability = gr.Image(label="where the prediction sits on the reliability curve",
                                       format="png", elem_id="inspector-reliability", interactive=False)
            conversion = gr.Markdown(elem_id="inspector-conversion")
    with gr.Accordion("Layers: what each semantic feature matched", open=True):
        layers = [gr.Image(label=label, format="png", interactive=False, elem_id=f"inspector-layer-{i}")
                  for i, label in enumerate(("TwoStep pixel levels", "conv features and rotation poses",
                                             "affine features: prototypes and matched poses",
                                             "logical layer: OR and AND-NOT"))]
    with gr.Accordion("Attack it: PGD (L-inf) against the prediction", open=True):
        with gr.Row():
            eps = gr.Slider(0.01, 0.5, value=0.3, step=0.01, label="eps (L-inf, pixel units)")
            steps = gr.Slider(1, 100, value=40, step=1, label="PGD steps")
            attack_button = gr.Button("Attack it", variant="primary", elem_id="inspector-attack")
            stop = gr.Button("Stop", variant="stop")
        attack_status = _status(gr, "inspector-attack-status")
        with gr.Row():
            adversarial = gr.Image(label="attacked input", format="png", interactive=False, scale=1,
                                   elem_id="inspector-adversarial")
            difference = gr.Image(label="perturbation (red +, blue -)", format="png", interactive=False,
                                  scale=1)
            evidence = gr.Image(label="evidence before and after", format="png", interactive=False, scale=2,
                                elem_id="inspector-evidence")

    outputs = [converted, conversion, reliability, *layers, stored, status]
    kinds = _kinds(gr, outputs)
    draw_button.click(lambda m, c: files.convert(kinds, inspect_canvas(cache, m, c)), [model, canvas],
                      outputs, api_name="inspect_drawing")
    upload_button.click(lambda m, p, i: files.convert(kinds, inspect_upload(cache, m, p, i)),
                        [model, upload, invert], outputs, api_name="inspect_upload")
    upload.upload(lambda m, p, i: files.convert(kinds, inspect_upload(cache, m, p, i)),
                  [model, upload, invert], outputs, api_name=False)
    attack_outputs = [adversarial, difference, evidence, attack_status]

    def attack(m, x, e, s, f, progress=gr.Progress(track_tqdm=True)):
        return files.convert(_kinds(gr, attack_outputs), run_attack(cache, m, x, e, s, f, progress))

    event = attack_button.click(attack, [model, stored, eps, steps, flag], attack_outputs, api_name="attack")
    stop.click(lambda f: f.event.set(), [flag], None, cancels=[event], queue=False, api_name=False)


def _pullback_tab(gr, cache: ModelCache, models: Catalog, files: ImageFiles) -> None:
    from pellucid.data.images import SKIMAGE_PHOTOS
    from pellucid.explain.methods import EXPLAINERS

    flag = gr.State(CancelFlag())
    photos = [p for p in SKIMAGE_PHOTOS if p not in ("page", "text", "logo")]
    with gr.Row():
        with gr.Column(scale=1):
            first = models.pullback[0][1] if models.pullback else None
            model = gr.Dropdown(_choices(models.pullback), value=first, label="model", elem_id="pullback-model")
            upload = gr.File(label="image (an upload is used when given)", type="filepath",
                             elem_id="pullback-upload")
            photo = gr.Dropdown(photos, value="chelsea", label="or a bundled photo (scikit-image)")
            kind = gr.Radio(list(pullback.TARGET_KINDS), value="top class", label="target",
                            elem_id="pullback-kind")
            class_index = gr.Number(value=0, precision=0, label="class index", elem_id="pullback-class")
            unit = gr.Textbox(label="hidden unit PATH:CHANNEL[@H,W]", placeholder="e.g. Mixed_7c:5 or affine:3",
                              elem_id="pullback-unit")
            with gr.Row():
                ref_upload = gr.File(label="other image", type="filepath")
                ref_photo = gr.Dropdown(photos, value="coffee", label="or other bundled photo")
        with gr.Column(scale=1):
            method = gr.Dropdown(list(EXPLAINERS), value="pullback", label="method", elem_id="pullback-method")
            temperature = gr.Slider(0.01, 3.0, value=0.3, step=0.01, label="temperature tau (soft gates)")
            gate = gr.Radio(["sigmoid", "normal_cdf"], value="sigmoid", label="gate")
            steps = gr.Slider(0, pullback.MAX_STEPS, value=5, step=1, label="counterfactual steps")
            alpha = gr.Number(value=20.0, label="alpha: L2 length of each step ([0, 1] pixels)")
            eps = gr.Number(value=0, label="eps: L2 radius around the input (0 = none)")
            with gr.Row():
                run = gr.Button("Explain!", variant="primary", elem_id="pullback-run")
                stop = gr.Button("Stop", variant="stop")
    status = _status(gr, "pullback-status")
    with gr.Row():
        slider_input = gr.ImageSlider(label="input | counterfactual", type="numpy", elem_id="pullback-slider")
        slider_diff = gr.ImageSlider(label="difference | counterfactual", type="numpy")
    with gr.Row():
        shown = [gr.Image(label=label, format="png", interactive=False, elem_id=f"pullback-{key}")
                 for key, label in (("input", "input"), ("attribution", "attribution (red +, blue -)"),
                                    ("counterfactual", "counterfactual"), ("difference", "difference (min-max)"))]
    with gr.Row():
        top = gr.Label(label="top predictions", num_top_classes=5, elem_id="pullback-top")
        with gr.Column():
            head_note = gr.Markdown()
            coverage = gr.Textbox(label="coverage report of the rewrite", lines=8, elem_id="pullback-coverage")
            conversion = gr.Markdown()

    outputs = [slider_input, slider_diff, *shown, top, head_note, coverage, conversion, status]

    def explain(m, up, ph, k, ci, u, ru, rp, me, t, g, s, a, e, f, progress=gr.Progress()):
        return files.convert(_kinds(gr, outputs),
                             run_pullback(cache, m, up, ph, k, ci, u, ru, rp, me, t, g, s, a, e, f, progress))

    event = run.click(explain, [model, upload, photo, kind, class_index, unit, ref_upload, ref_photo, method,
                                temperature, gate, steps, alpha, eps, flag], outputs, api_name="explain")
    stop.click(lambda f: f.event.set(), [flag], None, cancels=[event], queue=False, api_name=False)


def _rejection_tab(gr, cache: ModelCache, models: Catalog, files: ImageFiles) -> None:
    from pellucid.data.images import SKIMAGE_PHOTOS

    if not models.rejection:
        gr.Markdown(TRAIN_REJECTING, elem_id="rejection-missing")
        return
    stored = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(_choices(models.rejection), value=models.rejection[0][1], label="model",
                                elem_id="rejection-model")
            upload = gr.File(label="upload anything: a digit, a photo, ...", type="filepath",
                             elem_id="rejection-upload")
            with gr.Row():
                noise = gr.Button("uniform noise", elem_id="rejection-noise")
                blank = gr.Button("blank image", elem_id="rejection-blank")
            with gr.Row():
                photo = gr.Dropdown(list(SKIMAGE_PHOTOS), value="astronaut", label="bundled photo")
                photo_button = gr.Button("use photo")
            factor = gr.Slider(rejection.FACTOR_RANGE[0], rejection.FACTOR_RANGE[1], value=1.0, step=0.01,
                               label="threshold = this x the trained epsilon", elem_id="rejection-threshold")
            converted = gr.Image(label="model input", format="png", interactive=False, elem_id="rejection-input")
            conversion = gr.Markdown()
        with gr.Column(scale=2):
            status = _status(gr, "rejection-status")
            scores = gr.Image(label="class scores and the epsilon neuron", format="png", interactive=False,
                              elem_id="rejection-scores")
            why = gr.Image(label="why: the nearest centres", format="png", interactive=False,
                           elem_id="rejection-why")
            curve = gr.Image(label="coverage / accuracy trade-off", format="png", interactive=False,
                             elem_id="rejection-curve")

    outputs = [converted, conversion, scores, why, curve, stored, status]
    kinds = _kinds(gr, outputs)

    def handler(how):
        return lambda m, p, ph, fa, st: files.convert(kinds, reject_input(cache, m, how, p, ph, fa, st))

    inputs = [model, upload, photo, factor, stored]
    upload.upload(handler("upload"), inputs, outputs, api_name="reject_upload")
    noise.click(handler("noise"), inputs, outputs, api_name="reject_noise")
    blank.click(handler("blank"), inputs, outputs, api_name="reject_blank")
    photo_button.click(handler("photo"), inputs, outputs, api_name="reject_photo")
    # while the slider is dragged only the last value runs (a request per position would queue up)
    factor.change(handler("again"), inputs, outputs, api_name=False, trigger_mode="always_last")


class ClientGoneFilter(logging.Filter):
    """The server's log: a browser that went away in the middle of a request (a closed tab, an
    upload cut off) is one warning line instead of the ASGI stack's traceback. Nothing of
    pellucid's ran for that request, and a traceback in the log reads as a server fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ClientDisconnect":  # starlette.requests.ClientDisconnect
            record.msg, record.args = "a client disconnected before its request was read", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def launch(page, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True):
    """Serve ``page`` on ``host:port`` (no share link, no analytics); ``block=False`` returns once
    the server answers (tests)."""
    server_log = logging.getLogger("uvicorn.error")  # the logger uvicorn reports request failures to
    if not any(isinstance(f, ClientGoneFilter) for f in server_log.filters):
        server_log.addFilter(ClientGoneFilter())
    page.queue(default_concurrency_limit=4)
    return page.launch(server_name=host, server_port=port, share=False, theme=theme(), quiet=True,
                       show_error=False, max_file_size="50mb", footer_links=["api", "settings"],
                       run_history=False, ssr_mode=False, prevent_thread_lock=not block, inbrowser=False)
