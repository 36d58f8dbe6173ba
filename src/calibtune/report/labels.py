"""Display names of methods and models."""

from __future__ import annotations

import re

METHOD_LABELS: dict[str, str] = {
    "probe": "Probe",
    "lora": "LoRA",
    "lora_prompt": "LoRA + Prompt",
    "zero_shot": "Zero-shot query",
    "option_confidence": "Option confidence",
    "likelihood": "Sequence likelihood",
    "perplexity": "Inverse perplexity",
    "verbalized": "Verbalized",
    "sampling": "Sampling consistency",
}

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
}


def method_label(name: str) -> str:
    """The display name of a method, or ``name`` itself when it has none."""
    return METHOD_LABELS.get(name, name)


def metric_label(name: str) -> str:
    """The display name of a metric column, or ``name`` itself when it has none."""
    return METRIC_LABELS.get(name, name)


def short_model_name(name: str) -> str:
    """The last path component of a model path or hub id: "org/Model" -> "Model"."""
    parts = [p for p in re.split(r"[\\/]", str(name)) if p]
    return parts[-1] if parts else str(name)


def short_model_names(names: list[str]) -> list[str]:
    """:func:`short_model_name` of each name; full names where two would clash."""
    short = [short_model_name(n) for n in names]
    return [
        s if short.count(s) == 1 else str(n) for s, n in zip(short, names, strict=True)
    ]
