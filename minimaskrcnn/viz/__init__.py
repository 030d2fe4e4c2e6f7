"""Pictures: detections drawn on images, training curves, and the RoI ops' sampling grids.

    detections.py   instance_colours, overlay (masks, boxes, keypoints blended into an image),
                    save_overlay (PNG), plot_predictions_vs_gt (image | ground truth |
                    predictions) and plot_dataset_predictions (the same for a dataset's first
                    images), shown_detections (a prediction's kept detections, masks decoded)
    curves.py       plot_loss_curve (a run's loss terms and validation AP against the iteration)
    roi_ops.py      plot_roi_sampling (where RoIPool, RoIWarp and RoIAlign sample one box: the
                    paper's Figure 3)
    figure.py       agg_figure (a matplotlib Figure on the Agg canvas)

matplotlib is imported by the functions that draw a figure, never by importing this package (it
costs about 0.2 s; training and evaluation without pictures do not pay it). The package sits
above ``evaluation`` and below ``training`` (which writes each run's loss curve).
"""

from minimaskrcnn.viz.curves import plot_loss_curve
from minimaskrcnn.viz.detections import (
    instance_colours,
    overlay,
    plot_dataset_predictions,
    plot_predictions_vs_gt,
    save_overlay,
    shown_detections,
)
from minimaskrcnn.viz.roi_ops import plot_roi_sampling

__all__ = ["instance_colours", "overlay", "plot_dataset_predictions", "plot_loss_curve",
           "plot_predictions_vs_gt", "plot_roi_sampling", "save_overlay", "shown_detections"]
