"""A matplotlib figure on the Agg canvas, shared by the figures of :mod:`minimaskrcnn.viz`."""

from __future__ import annotations


def agg_figure(width: float, height: float):
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches at 100 dpi on its own Agg
    canvas (``fig.savefig`` writes a PNG; pyplot's global state is never touched)."""
    # matplotlib costs about 0.2 s to import: only a process that draws a figure pays it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy (0.2 s): when drawing
    from matplotlib.figure import Figure  # heavy (0.2 s): only when drawing

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig
