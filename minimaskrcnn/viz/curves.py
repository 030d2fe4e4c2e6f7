"""Training curves: the loss terms of a run's log against the iteration, and its validations.

``training.loop`` draws ``loss_curve.png`` of every run folder with :func:`plot_loss_curve`
(matplotlib's object API on the Agg canvas: no pyplot state, no display).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.viz.figure import agg_figure

__all__ = ["plot_loss_curve"]


def plot_loss_curve(records: list[dict], path: str, *, val_records=None, window: int = 20) -> None:
    """Loss terms against the iteration (trailing mean over the last ``window`` iterations),
    log scale; val mask AP on a second axis when ``val_records`` are given.

    Args:
        records: the training log (``log.jsonl`` records: iteration, loss, loss_* terms).
        path: output PNG.
        val_records: optional ``val.jsonl`` records (iteration, segm AP).
    """
    fig = agg_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if records:
        it = np.array([r["iteration"] for r in records])
        keys = ["loss"] + sorted(k for k in records[0] if k.startswith("loss_"))
        for k in keys:
            y = np.array([r[k] for r in records], dtype=np.float64)
            # trailing mean over the last `window` iterations (fewer at the start)
            c = np.concatenate([[0.0], np.cumsum(y)])
            lo = np.maximum(np.arange(len(y)) + 1 - window, 0)
            smooth = (c[1:] - c[lo]) / (np.arange(len(y)) + 1 - lo)
            ax.plot(it, np.maximum(smooth, 1e-6), label=k, linewidth=2.0 if k == "loss" else 1.0)
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving average over {window})")
    ax.grid(True, alpha=0.3)
    # the validation's headline AP: masks, else keypoints (a keypoint-only data set), else boxes
    kind = next((k for k in ("segm", "keypoints", "bbox")
                 if val_records and all(k in v for v in val_records)), None)
    if kind is not None:
        name = {"segm": "mask", "keypoints": "keypoint", "bbox": "box"}[kind]
        ax2 = ax.twinx()
        ax2.plot([v["iteration"] for v in val_records], [v[kind]["AP"] for v in val_records],
                 "ko-", label=f"val {name} AP")
        ax2.set_ylabel(f"val {name} AP")
        ax2.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
