"""Stages, the method registry and cache keys: what a key depends on, and what it does not."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from calibtune.config import StudyConfig, method_settings
from calibtune.errors import CalibtuneError
from calibtune.methods import ANSWERER_METHODS, MATRIX_METHODS, METHODS, CellScores, Method, get_method, method_label
from calibtune.records import Question
from calibtune.stages.cells import cell_stage, score_rows

BASE = {"models": ["smollm2-135m", "gemma3-270m"], "train": [{"dataset": "sciq"}], "eval": [{"dataset": "sciq"}],
        "methods": ["probe"]}
INPUTS = {"train": "t" * 64, "eval": "e" * 64, "exemplars": "x" * 64}


def test_reading_a_config_imports_no_model_code():
    code = ("import sys; from calibtune.config import load_config; load_config(None); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'calibtune.estimators') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_method_is_registered_once_with_a_label_and_a_config_section():
    assert list(METHODS) == ["probe", "probe_last", "lora", "lora_prompt", "lora_prompt_readout", "zero_shot",
                             "option_confidence", "likelihood", "perplexity", "verbalized", "sampling"]
    assert MATRIX_METHODS == ("probe", "probe_last", "lora", "lora_prompt", "lora_prompt_readout", "zero_shot")
    assert ANSWERER_METHODS == ("option_confidence", "likelihood", "perplexity", "verbalized", "sampling")
    cfg = StudyConfig.model_validate(BASE | {"task": "open_ended"})
    for name, method in METHODS.items():
        assert method_label(name) == method.label and get_method(name) is method
        section = method_settings(cfg, name)
        assert (section is None) == (method.config is None)
        if section is not None:
            assert section == method.config()  # defaults come from the method's own config model
        assert (method.saved_file is None) == (method.load is None)
    with pytest.raises(CalibtuneError, match="did you mean 'probe'"):
        get_method("prob")


def _other_value(name: str, field, value):
    """A different valid value for a setting (within its bounds)."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in args if a != value)
    if name == "target_modules":
        return ["q_proj"] if value == "auto" else "auto"
    if name == "layer":
        return "last" if value == "auto" else (2 if value == -1 else -1)
    if name == "readout_layer":
        return 5 if value == "auto" else "auto"
    if name == "options":
        return (" nah", " yep")
    if name == "ema_decay":
        return 0.99 if value is None else None
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + " (changed)"
    if value is None:
        return 5
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.1
    raise AssertionError(f"no other value for {name}={value!r}")


def _cell_keys(config: StudyConfig) -> dict[str, str]:
    return {name: cell_stage(config, method, "smollm2-135m", quick=False).key(INPUTS)
            for name, method in METHODS.items()}


def test_changing_any_setting_of_a_method_changes_its_cells_and_no_others():
    base = StudyConfig.model_validate(BASE)
    before = _cell_keys(base)
    assert len(set(before.values())) == len(METHODS)
    checked = 0
    for name, method in METHODS.items():
        if method.config is None:
            continue
        section = method_settings(base, name)
        for field_name, field in type(section).model_fields.items():
            if typing.get_origin(field.annotation) is typing.Literal and len(typing.get_args(field.annotation)) == 1:
                continue  # fixed by the method (the last-layer Probe's layer)
            changed = section.model_copy(update={field_name: _other_value(field_name, field,
                                                                         getattr(section, field_name))})
            type(section).model_validate(changed.model_dump())  # still a valid section
            after = _cell_keys(base.model_copy(update={name: changed}))
            moved = {m for m in METHODS if after[m] != before[m]}
            assert moved == {name}, (name, field_name, moved)
            checked += 1
    # probe 10, its last-layer twin 9 (its layer is fixed), LoRA 25, LoRA + Prompt 27 and its read-out twin 28,
    # zero-shot 2, verbalized 2, sampling 3
    assert checked == 106


@pytest.mark.parametrize("setting, value, expected", [
    ("features", {"layers": [1, 2], "token": "last"}, {"probe", "probe_last", "lora", "lora_prompt_readout"}),
    ("features", {"layers": "auto", "token": "mean"}, {"probe", "probe_last", "lora", "lora_prompt_readout"}),
    ("zero_shot_calibration", 50, {"zero_shot", "verbalized", "sampling"}),
    ("select", "sum", {"option_confidence"}),
    ("open_ended", {"grader": "exact"}, {"sampling"}),
    ("prompt", "Q: {question}\nA:", set(METHODS)),
    ("seed", 1, set(METHODS)),
    ("batch_size", 4, set(METHODS)),
    ("report", {"bootstrap_resamples": 200}, set()),  # results only: no cell is computed again
    ("heatmap", ["probe"], set()),
])
def test_study_level_settings_change_the_cells_that_declare_them(setting, value, expected):
    base = StudyConfig.model_validate(BASE)
    changed = StudyConfig.model_validate({**base.model_dump(), setting: value})
    before, after = _cell_keys(base), _cell_keys(changed)
    assert {m for m in METHODS if after[m] != before[m]} == expected


def test_a_cell_key_depends_on_its_inputs_and_estimator_model():
    cfg = StudyConfig.model_validate(BASE)
    stage = cell_stage(cfg, METHODS["probe"], "smollm2-135m", quick=False)
    key = stage.key(INPUTS)
    assert stage.key({**INPUTS, "eval": "f" * 64}) != key
    assert cell_stage(cfg, METHODS["probe"], "gemma3-270m", quick=False).key(INPUTS) != key
    assert cell_stage(cfg, METHODS["probe"], "smollm2-135m", quick=True).key(INPUTS) != key


def _questions(n: int) -> list[Question]:
    return [Question(f"q{i}", "d", "s", f"question {i}", ("a", "b"), 0) for i in range(n)]


def test_only_a_method_that_may_leave_answers_out_may_return_nan():
    questions, y = _questions(4), np.array([1, 0, 1, 0])
    nan = CellScores(np.array([0.2, np.nan, 0.7, 0.4]), np.array([0.3, 0.6]), np.array([0, 1]))
    with pytest.raises(CalibtuneError, match="Probe e on t: P\\(correct\\) is not a finite number for 1 of 4 "
                                             "evaluation answers, e.g. question q1"):
        score_rows(METHODS["probe"], "e", "t", questions, y, nan, True, print)
    cal_nan = CellScores(np.array([0.2, 0.3, 0.7, 0.4]), np.array([np.inf, 0.6]), np.array([0, 1]))
    with pytest.raises(CalibtuneError, match="1 of 2 calibration answers"):
        score_rows(METHODS["zero_shot"], "e", "t", questions, y, cal_nan, True, print)
    logged: list[str] = []
    rows = score_rows(METHODS["verbalized"], "t", "t", questions, y, nan, True, logged.append)
    assert rows.question_id.tolist() == ["q0", "q2", "q3"] and "1 of 4 evaluation answers" in logged[0]
    np.testing.assert_array_equal(rows.p_correct, [0.2, 0.7, 0.4])


def test_a_new_method_is_one_registry_entry(tmp_path, tiny_models, monkeypatch):
    """A method registered with one entry runs in a study, is labelled in the results and is cached like any."""
    from typer.testing import CliRunner

    from calibtune.cli import app
    from conftest import write_questions

    def make_cell(ctx):
        evaluation = ctx.inputs.eval
        return CellScores(np.array([0.25 + 0.5 * (len(ctx.answers[q.id].text) % 2) for q in evaluation]))

    constant = Method(name="answer_length", label="Answer length parity", make_cell=make_cell, scope="answerer",
                      needs_model=False)
    monkeypatch.setitem(METHODS, "answer_length", constant)
    train = write_questions(tmp_path / "train.jsonl", n=24)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=12)
    config = tmp_path / "s.yaml"
    config.write_text(f"models: ['{tiny_models['llama']}']\ndtype: float32\ntrain: [{{dataset: '{train}'}}]\n"
                      f"eval: [{{dataset: '{heldout}'}}]\nmethods: [answer_length]\n")
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    answers = pd.read_parquet(tmp_path / "run" / "answers" / "llama.parquet").set_index("question_id")
    assert set(scores.method) == {"answer_length"} and len(scores) == 12
    expected = [0.25 + 0.5 * (len(answers.text[q]) % 2) for q in scores.question_id]
    np.testing.assert_array_equal(scores.p_correct, expected)
    assert "Answer length parity" in (tmp_path / "run" / "report.html").read_text()


def test_method_config_models_are_strict_and_validated():
    for method in METHODS.values():
        if method.config is not None:
            assert issubclass(method.config, BaseModel)
            with pytest.raises(ValueError):
                method.config(no_such_setting=1)
    with pytest.raises(ValueError):
        METHODS["lora_prompt"].config(learning_rate=0)
    assert replace(METHODS["probe"], label="x").label == "x"  # a frozen record


def test_quick_adapters_train_on_as_many_answers_as_their_steps_take():
    from calibtune.methods.adapters import adapter_training_set, study_adapter_config
    from calibtune.methods.base import CellContext
    from calibtune.questions import StudyInputs

    cfg = StudyConfig.model_validate({"models": ["m"], "train": [{"dataset": "arc_easy"}],
                                      "eval": [{"dataset": "sciq"}], "quick": {"adapter_steps": 3},
                                      "lora_prompt": {"batch_size": 4, "val_fraction": 0.25}})
    train = [Question(id=f"q{i}", dataset="d", split="train", text=f"q{i}?", choices=("a", "b"), gold=0)
             for i in range(100)]
    ctx = CellContext(cfg, cfg.lora_prompt, "m", "m", StudyInputs(train, []), {}, None, None, None, quick=True)
    settings = study_adapter_config(ctx)
    chosen = adapter_training_set(ctx, settings)
    assert settings.max_steps == 3 and len(chosen) == 16  # 3 steps of 4, and a quarter held out: ceil(12 / 0.75)
    assert len(set(q.id for q in chosen)) == 16
    full = adapter_training_set(replace(ctx, quick=False), cfg.lora_prompt)
    assert len(full) == min(100, cfg.lora_prompt.max_train_examples)
