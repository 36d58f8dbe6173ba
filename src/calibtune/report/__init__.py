"""Figures and the HTML report of a study run: ``heatmap``, ``figures``, ``html``; display names in ``labels``."""

from calibtune.report.labels import METHOD_LABELS, method_label

__all__ = ["METHOD_LABELS", "method_label"]
