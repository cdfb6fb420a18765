"""Checkpoints that must not load as good: shards outside the model directory, a tensor in two
files, rank files that an interrupted `shardserve partition` left; and a partition stopped by
SIGTERM, which must leave no such files behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.checkpoints import copy_checkpoint
from shardserve.assets import default_model_path
from shardserve.cli import main
from shardserve.errors import ModelLoadError
from shardserve.models import load_model
from shardserve.models.config import ModelConfig
from shardserve.weights.manifest import MANIFEST, read_manifest


def _load(model_dir):
    return load_model(ModelConfig.from_hf(model_dir), model_dir, torch.float32, "cpu")


@pytest.fixture
def model_dir(tmp_path):
    return copy_checkpoint(default_model_path(), tmp_path / "model")


def _index(model_dir, weight_map) -> None:
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/etc/hostname", "a/../../x.safetensors"])
def test_an_index_naming_a_shard_outside_the_model_directory_is_refused(model_dir, tmp_path, shard):
    """It loaded whatever file the index named, wherever it was."""
    copy_checkpoint(default_model_path(), tmp_path / "other")
    names = load_file(model_dir / "model.safetensors").keys()
    _index(model_dir, {name: shard for name in names})
    with pytest.raises(ModelLoadError, match="outside the model directory"):
        _load(model_dir)


@pytest.mark.parametrize("weight_map", [5, ["model.safetensors"], {"w": 3}])
def test_an_index_whose_weight_map_is_no_name_to_file_map_is_refused(model_dir, weight_map):
    _index(model_dir, weight_map)
    with pytest.raises(ModelLoadError, match="model.safetensors.index.json: weight_map must map tensor names to file names"):
        _load(model_dir)


def test_a_tensor_in_two_weight_files_is_refused_naming_both(model_dir):
    """Without an index every *.safetensors file is read: a stale file beside the checkpoint
    replaced its tensors with its own, silently, in file-name order."""
    state = load_file(model_dir / "model.safetensors")
    stale = {name: torch.zeros_like(t) for name, t in state.items()}
    save_file(stale, model_dir / "model-old.safetensors")
    with pytest.raises(ModelLoadError, match="is in both model-old.safetensors and model.safetensors"):
        _load(model_dir)


def test_rank_files_without_their_manifest_are_an_unfinished_partition(model_dir, tmp_path):
    """Read as a Hugging Face checkpoint they failed on some tensor's name or shape."""
    out = tmp_path / "tp1"
    assert main(["partition", "--model", str(model_dir), "--tp", "1", "--out", str(out)]) == 0
    from shardserve.weights.loader import checkpoint_files

    # Finished, its rank files are safetensors files like any (load_format="safetensors").
    assert [f.name for f in checkpoint_files(out, "safetensors")] == ["rank-00000-of-00001.safetensors"]
    (out / MANIFEST).unlink()  # what a kill just before the manifest leaves
    with pytest.raises(ModelLoadError, match=f"no {MANIFEST}: the partition did not finish"):
        _load(out)


def test_a_manifest_naming_a_rank_file_elsewhere_is_refused(model_dir, tmp_path):
    out = tmp_path / "tp1"
    assert main(["partition", "--model", str(model_dir), "--tp", "1", "--out", str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][0]["name"] = "../elsewhere/" + manifest["files"][0]["name"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"files\[0\] name .* is not a file of this directory"):
        read_manifest(out)


_SLOW_PARTITION = """
import sys, time
from shardserve.weights import partition as module

def write_then_wait(config, model_dir, out_dir, *args):
    (out_dir / "rank-00000-of-00001.safetensors").write_bytes(b"half")
    print("written", flush=True)
    time.sleep(60)

module._write = write_then_wait
from shardserve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_partition_stopped_by_sigterm_removes_its_output(tmp_path):
    """Killed by SIGTERM (a job's time limit, `docker stop`), it left the rank files it had
    written in the output directory, which no later run would write into (not empty)."""
    out = tmp_path / "new" / "tp1"
    argv = ["partition", "--model", str(default_model_path()), "--tp", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PARTITION, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "written", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "new").exists()
    assert "Traceback" not in proc.stderr.read()


def test_a_partition_that_finishes_restores_the_sigterm_handler(model_dir, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["partition", "--model", str(model_dir), "--tp", "1", "--out", str(tmp_path / "o")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_cannot_cut_the_cleanup_short():
    """The cleanup runs while SystemExit unwinds: by then SIGTERM is ignored, until partition ends."""
    import time

    from shardserve.weights.commands import _sigterm_as_exit

    before, during = signal.getsignal(signal.SIGTERM), None
    with _sigterm_as_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
        except SystemExit as e:
            assert e.code == 128 + signal.SIGTERM
            during = signal.getsignal(signal.SIGTERM)
    assert during == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("model, message", [
    # These were "s3:/bucket-name/model: config.json not found", "not a valid JSON file" and
    # "config.json not found".
    ("s3://bucket-name/model", "partition reads a local model directory"),
    ("FILE", "is a file, not a model directory"),
    ("MISSING", "does not exist"),
])
def test_partition_model_that_is_no_local_directory_is_named(tmp_path, capsys, model, message):
    (tmp_path / "model.tar.gz").write_bytes(b"x")
    model = {"FILE": str(tmp_path / "model.tar.gz"), "MISSING": str(tmp_path / "nope")}.get(model, model)
    assert main(["partition", "--model", model, "--tp", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shardserve partition: error: --model {model}") and message in err, err
    assert not (tmp_path / "out").exists()
