"""Kill a study with SIGKILL mid-answering, rerun it, and get the uninterrupted result without recomputing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd

from calibtune.store import ArtifactStore, list_artifacts
from conftest import write_questions

# Runs the CLI with a pause after every stored shard, so the test can kill it between shards.
SLOW_CLI = """
import sys, time
import calibtune.store as store
original = store.ArtifactStore.put_table
def slow_put(self, *args, **kwargs):
    original(self, *args, **kwargs)
    time.sleep(1.5)
store.ArtifactStore.put_table = slow_put
from calibtune.cli import app
app(sys.argv[1:], prog_name="calibtune")
"""


def _config(tmp_path, tiny_models) -> str:
    train = write_questions(tmp_path / "train.jsonl", n=400, options=2)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=200, options=2)
    path = tmp_path / "study.yaml"
    path.write_text(f"name: resume\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                    f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{heldout}'}}]\n"
                    "probe: {max_epochs: 3}\n")
    return str(path)


def _run(args, cache, script=None):
    env = {**os.environ, "CALIBTUNE_CACHE": str(cache)}
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "calibtune", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_during_answering_then_resume(tmp_path, tiny_models):
    config = _config(tmp_path, tiny_models)
    cache = tmp_path / "cache-killed"
    store = ArtifactStore(cache / "store")
    proc = _run(["run", config, "-o", str(tmp_path / "killed")], cache, SLOW_CLI)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [a for a in list_artifacts(store) if a.stage == "answers" and a.complete]
        if done:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {a.key: a.modified for a in list_artifacts(store) if a.complete}
    assert 1 <= len(finished) < 3, "the kill should land between the first and the last of three shards"

    rerun = _run(["run", config, "-o", str(tmp_path / "killed")], cache)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"resuming, {len(finished)} of 3 shards from the cache" in " ".join(output.split())
    after = {a.key: a.modified for a in list_artifacts(store) if a.complete}
    assert all(after[key] == mtime for key, mtime in finished.items()), "a finished shard was computed again"
    assert not [a for a in list_artifacts(store) if not a.complete], "a temporary folder was left behind"

    clean = _run(["run", config, "-o", str(tmp_path / "clean")], tmp_path / "cache-clean")
    output, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "killed" / "scores.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "scores.parquet"))


SLOW_TRAINING_CLI = """
import sys, time
import calibtune.estimators.adapters as adapters
original = adapters.save_checkpoint
def slow_save(*args, **kwargs):
    original(*args, **kwargs)
    time.sleep(1.5)
adapters.save_checkpoint = slow_save
from calibtune.cli import app
app(sys.argv[1:], prog_name="calibtune")
"""


def test_sigkill_during_training_then_resume(tmp_path, tiny_models):
    train = write_questions(tmp_path / "train.jsonl", n=60, options=2)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=20, options=2)
    config = tmp_path / "study.yaml"
    config.write_text(f"name: resume\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{heldout}'}}]\n"
                      "methods: [lora_prompt]\n"
                      "lora_prompt: {max_steps: 12, eval_every: 2, patience: 20, batch_size: 4}\n")
    cache = tmp_path / "cache-killed"
    checkpoints = cache / "store" / "checkpoints"
    proc = _run(["run", str(config), "-o", str(tmp_path / "killed")], cache, SLOW_TRAINING_CLI)
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("*/state.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("*/state.json")), "no checkpoint was written before the kill"

    rerun = _run(["run", str(config), "-o", str(tmp_path / "killed")], cache)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "resuming from the checkpoint at step" in " ".join(output.split())
    assert "answers of" in output and "from the cache" in output
    assert not list(checkpoints.glob("*")), "the checkpoint should be removed once the cell is done"

    clean = _run(["run", str(config), "-o", str(tmp_path / "clean")], tmp_path / "cache-clean")
    output, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "killed" / "scores.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "scores.parquet"))


def test_listing_the_store_skips_a_folder_a_writer_moves_away_meanwhile(tmp_path, monkeypatch):
    """A run renames its staging folder into place while `calibtune cache` (or a test) lists the store:
    the listing leaves that folder out instead of failing."""
    import calibtune.store as store_module

    store = ArtifactStore(tmp_path / "store")
    store.put_table("answers", "kept", pd.DataFrame({"a": [1, 2]}))
    staging = tmp_path / "store" / "answers" / ".moving-abc123"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "part.parquet").write_bytes(b"x" * 10)
    original = store_module.folder_size

    def moved_while_read(path):
        if path == staging:
            shutil.rmtree(staging)  # the writer's rename lands between listing and reading the folder
        return original(path)

    monkeypatch.setattr(store_module, "folder_size", moved_while_read)
    listed = list_artifacts(store)
    assert [(a.stage, a.key, a.complete) for a in listed] == [("answers", "kept", True)]
    assert listed[0].size == original(tmp_path / "store" / "answers" / "kept")
