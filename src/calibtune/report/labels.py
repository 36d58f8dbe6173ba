"""Display names of methods and models."""

from __future__ import annotations

import re

from calibtune.methods import METHODS, method_label

__all__ = ["METHOD_LABELS", "METRIC_LABELS", "method_label", "metric_label", "short_model_name", "short_model_names"]

# Display names of methods, from the method registry.
METHOD_LABELS: dict[str, str] = {name: m.label for name, m in METHODS.items()}

METRIC_LABELS: dict[str, str] = {
    "n": "n",
    "auroc": "AUROC",
    "ece": "ECE",
    "ece_top_label": "ECE top-label",
    "brier": "Brier",
    "nll": "NLL",
    "accuracy": "Accuracy",
    "mean_p": "Mean P(correct)",
    "auprc": "AUPRC (correct)",
    "auprc_incorrect": "AUPRC (incorrect)",
    "ece_equal_mass": "ECE equal-mass",
    "mce": "MCE",
    "aurc": "AURC",
    "acc_at_50": "Acc@50% cov.",
    "acc_at_80": "Acc@80% cov.",
    "ece_ts": "ECE after TS",
    "ece_xfit": "ECE after Platt (cross-fitted)",
    "brier_xfit": "Brier after Platt (cross-fitted)",
}


def metric_label(name: str) -> str:
    """The display name of a metric column, or ``name`` itself when it has none."""
    return METRIC_LABELS.get(name, name)


def short_model_name(name: str) -> str:
    """The last path component of a model path or hub id: "org/Model" -> "Model"."""
    parts = [p for p in re.split(r"[\\/]", str(name)) if p]
    return parts[-1] if parts else str(name)


def short_model_names(names: list[str]) -> list[str]:
    """:func:`short_model_name` of each name, with parent folders added where two would clash."""
    from calibtune.naming import distinct_short_names

    short = distinct_short_names(list(names))
    return [short[n] for n in names]
