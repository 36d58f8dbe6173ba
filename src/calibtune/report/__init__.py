"""Figures and the HTML report of a study run."""

from calibtune.report.labels import METHOD_LABELS, method_label

__all__ = ["METHOD_LABELS", "method_label", "plot_heatmap", "write_report"]


def __getattr__(name: str):
    # Lazy, so that importing the labels does not pull in matplotlib.
    if name == "plot_heatmap":
        from calibtune.report.heatmap import plot_heatmap

        return plot_heatmap
    if name == "write_report":
        from calibtune.report.html import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
