"""The command line refuses at once, naming the flag or the variable, what used to fail late or
silently: serve's empty NAME or LOCATION, a bad $SAGEMAKER_BIND_TO_PORT (which crashed every
subcommand), an empty --api-key (which served without a key); generate's s3:// or file --model
and a --tp beyond the GPUs (two ranks on one GPU); an unknown key set by the environment."""

from __future__ import annotations

import pytest

from shardserve.cli import main


@pytest.mark.parametrize("item", ["=/opt/ml/model", "m="])
def test_serve_refuses_an_empty_name_or_location_at_once(item):
    from shardserve.serving.commands import parse_locations

    with pytest.raises(ValueError, match="NAME=LOCATION"):
        parse_locations([item])


def test_generate_with_an_s3_model_names_the_location_as_given(capsys):
    assert main(["generate", "--model", "s3://bucket-name/model", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "--model s3://bucket-name/model: generate reads a local model directory" in err, err


def test_generate_with_a_file_as_model_says_it_is_not_a_directory(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 8)
    assert main(["generate", "--model", str(tmp_path / "weights.bin"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'weights.bin'} is a file, not a model directory" in err, err


def test_generate_refuses_a_tp_degree_beyond_the_gpus(monkeypatch, capsys):
    import torch

    import shardserve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine started with --tp 4 on 2 GPUs")

    monkeypatch.setattr(shardserve, "LLM", no_engine)
    assert main(["generate", "--tp", "4", "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "--tp 4 needs 4 GPUs, this host has 2" in err, err


def test_an_unknown_key_from_the_environment_names_the_variable(tmp_path):
    from shardserve.serving.model_store import ModelStore

    (tmp_path / "config.json").write_text("{}")
    store = ModelStore(environ={"OPTION_MAX_ROLLING_BATCH_SZE": "8"})
    model = store.add("m", str(tmp_path), wait=True)
    assert model.errored and "OPTION_MAX_ROLLING_BATCH_SZE" in model.error, model.error


@pytest.mark.parametrize("value", ["abc", "99999"])
def test_a_bad_sagemaker_port_fails_serve_only_as_a_bad_port(monkeypatch, capsys, value):
    from shardserve.serving import app

    def no_server(settings):
        raise AssertionError("the server started on a port that was never checked")

    monkeypatch.setattr(app, "create_app", no_server)
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", value)
    assert main(["download", "/no/such/model.tar.gz"]) == 2  # unaffected: its own error, no traceback
    assert "/no/such/model.tar.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve"])
    why = "must be an integer, got 'abc'" if value == "abc" else "must be in 0..65535, got 99999"
    assert exc.value.code == 2 and f"argument --port: {why}" in capsys.readouterr().err


def test_serve_refuses_an_empty_api_key(monkeypatch, capsys):
    from shardserve.serving import app

    def no_server(settings):
        raise AssertionError(f"the server started with api_key={settings.api_key!r}")

    monkeypatch.setattr(app, "create_app", no_server)
    monkeypatch.delenv("SHARDSERVE_API_KEY", raising=False)
    assert main(["serve", "--api-key", "", "--port", "0"]) == 2
    assert "--api-key" in capsys.readouterr().err
