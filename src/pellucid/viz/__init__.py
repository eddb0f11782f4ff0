"""Figures (matplotlib, headless). Image grids use a diverging colormap centred at 0."""
