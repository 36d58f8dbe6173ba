"""The heatmap PNG and the self-contained HTML report."""

import base64
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from calibtune.errors import CalibtuneError
from calibtune.report import METHOD_LABELS, method_label
from calibtune.report.heatmap import draw_heatmap, plot_heatmap
from calibtune.report.html import write_report
from calibtune.report.labels import short_model_name

MODELS = ["org/model-a", "/local/path/model-b"]


def _metrics(
    methods=("probe", "lora_prompt"),
    models=MODELS,
    baselines=("option_confidence",),
    drop=None,
):
    rng = np.random.default_rng(0)
    rows = []
    for method in methods:
        for e in models:
            for t in models:
                if drop == (method, e, t):
                    continue
                rows.append(
                    {
                        "method": method,
                        "model": e,
                        "trained_on": t,
                        "evaluated_on": t,
                        "n": 20,
                        "auroc": rng.uniform(0.5, 0.9),
                        "ece": rng.uniform(0, 0.2),
                        "ece_top_label": rng.uniform(0, 0.2),
                        "brier": 0.2,
                        "nll": 0.6,
                        "accuracy": 0.5,
                        "mean_p": 0.5,
                    }
                )
    for method in baselines:
        for t in models:
            rows.append(
                {
                    "method": method,
                    "model": t,
                    "trained_on": t,
                    "evaluated_on": t,
                    "n": 20,
                    "auroc": 0.6,
                    "ece": 0.1,
                    "ece_top_label": 0.1,
                    "brier": 0.25,
                    "nll": 0.7,
                    "accuracy": 0.5,
                    "mean_p": 0.5,
                }
            )
    return pd.DataFrame(rows)


def _check_png(path):
    assert path.is_file()
    assert path.stat().st_size > 5_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 200
    return img


def test_labels():
    assert method_label("lora_prompt") == "LoRA + Prompt"
    assert method_label("unknown_method") == "unknown_method"
    assert METHOD_LABELS["probe"] == "Probe"
    assert short_model_name("/a/b/Model-1B/") == "Model-1B"
    assert short_model_name("org/Model") == "Model"
    assert short_model_name("smollm2-135m") == "smollm2-135m"


def test_heatmap_1x1(tmp_path):
    df = _metrics(methods=("probe",), models=["m"], baselines=())
    out = plot_heatmap(df, tmp_path / "h.png", ["probe"])
    assert out == tmp_path / "h.png"
    _check_png(out)


def test_heatmap_2x2_two_panels_and_baseline(tmp_path):
    df = _metrics()
    out = plot_heatmap(
        df, tmp_path / "sub" / "h.png", ["probe", "lora_prompt"], ["option_confidence"]
    )
    img = _check_png(out)
    single = _check_png(plot_heatmap(df, tmp_path / "one.png", ["probe"]))
    assert img.shape[1] > 1.5 * single.shape[1]  # panels side by side


def test_heatmap_shows_each_cell_value_on_one_shared_colour_scale():
    df = _metrics()
    fig = draw_heatmap(df, ["probe", "lora_prompt"], ["option_confidence"])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["Probe", "LoRA + Prompt", "Baselines (no estimator)"]
    assert panels[0].get_ylabel() == "Model" and panels[0].get_xlabel() == "Trained On"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["model-a", "model-b"]
    for ax, method in zip(panels[:2], ["probe", "lora_prompt"]):
        grid = ax.images[0].get_array()
        for i, e in enumerate(MODELS):  # rows: estimator model; columns: trained-on model
            for j, t in enumerate(MODELS):
                expected = df[(df.method == method) & (df.model == e) & (df.trained_on == t)].auroc.item()
                assert grid[i, j] == expected
        labels = sorted(t.get_text() for t in ax.texts)
        assert labels == sorted(f"{v:.2f}" for v in df[df.method == method].auroc)
    base = panels[2].images[0].get_array()
    np.testing.assert_array_equal(base, [[0.6, 0.6]])
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in panels}
    values = df.auroc.to_numpy()
    assert norms == {(min(values.min(), 0.5), values.max())}  # one scale, from chance (or lower) to the best


def test_heatmap_missing_cell_and_other_metric(tmp_path):
    df = _metrics(drop=("probe", MODELS[1], MODELS[0]))
    _check_png(
        plot_heatmap(
            df,
            tmp_path / "h.png",
            ["probe", "lora_prompt"],
            ["option_confidence"],
            value="ece",
        )
    )


def test_heatmap_rejects_bad_input(tmp_path):
    df = _metrics()
    with pytest.raises(ValueError, match="no column"):
        plot_heatmap(df, tmp_path / "h.png", ["probe"], value="nope")
    with pytest.raises(ValueError, match="no rows"):
        plot_heatmap(df, tmp_path / "h.png", ["zero_shot"])
    with pytest.raises(ValueError, match="more than one"):
        plot_heatmap(pd.concat([df, df]), tmp_path / "h.png", ["probe"])


def _run_dir(tmp_path, heatmap=True):
    df = _metrics(models=["<b>x</b>", "org/model-b"])
    df.loc[0, "auroc"] = float("nan")
    df.to_csv(tmp_path / "metrics.csv", index=False)
    (tmp_path / "config.yaml").write_text("name: study & <test>\nseed: 0\n")
    if heatmap:
        plot_heatmap(
            df,
            tmp_path / "heatmap.png",
            ["probe", "lora_prompt"],
            ["option_confidence"],
        )
    return df


def test_write_report(tmp_path):
    df = _run_dir(tmp_path)
    out = write_report(tmp_path)
    assert out == tmp_path / "report.html"
    html = out.read_text()

    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match
    assert base64.b64decode(match.group(1)) == (tmp_path / "heatmap.png").read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing external

    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "study &amp; &lt;test&gt;" in html
    full = html[html.index("Every method and cell"):]
    full = full[: full.index("</table>")]
    assert full.count("<tr>") == len(df) + 1  # the header row, then one per metrics row
    for row in df.itertuples():
        assert f"{row.ece:.3f}" in html
    assert "LoRA + Prompt" in html and "Option confidence" in html
    assert "n/a" in html  # the NaN AUROC


def test_write_report_without_heatmap(tmp_path):
    _run_dir(tmp_path, heatmap=False)
    html = write_report(tmp_path).read_text()
    assert "No heatmap.png" in html
    assert "data:image/png" not in html


def test_write_report_missing_metrics(tmp_path):
    with pytest.raises(CalibtuneError, match="metrics.csv"):
        write_report(tmp_path)
