"""Figures (matplotlib, headless). Image grids use a diverging colormap centred at 0.

One module per subject, imported on use (matplotlib loads with them, not with ``pellucid.viz``):
``curves`` (reliability, learning, accuracy vs eps), ``whitebox`` (the white-box layers),
``explain`` (attribution grids), ``robust`` (minimal perturbations), ``units`` (unit gradients on
noise), ``toy`` (the metric neurons' 2-D figures) and ``style`` (the shared colormap and grids).
"""

__all__ = ["curves", "explain", "robust", "style", "toy", "units", "whitebox"]
