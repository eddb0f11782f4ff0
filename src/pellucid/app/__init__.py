"""``pellucid app``: an interactive explorer in the browser, built on the library's own APIs.

* :mod:`~pellucid.app.inspector`: the white-box inspector (prediction, reliability, every layer's
  semantic features, a PGD attack);
* :mod:`~pellucid.app.pullback`: the pullback explorer (attribution and counterfactual, any
  registered explainer and target);
* :mod:`~pellucid.app.rejection`: rejection by an epsilon neuron (scores, decision, nearest
  centres, the coverage / accuracy trade-off of a threshold);
* :mod:`~pellucid.app.images`: what a user gives (upload, drawing, bundled photo) to a model input,
  through the CLI's loader, each extra step listed;
* :mod:`~pellucid.app.cache` and :mod:`~pellucid.app.catalog`: models loaded once per process
  (thread-safe) and which tab offers which model;
* :mod:`~pellucid.app.layout`: the Gradio page and its launch (the only module that imports
  Gradio, and only when called).

The handlers are plain functions of their inputs and the shared model cache, tested without a
browser; per-user values travel with each request.
"""

__all__: list[str] = []
