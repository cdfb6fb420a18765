"""Load phases, failures and health of registered models (custom handlers: no engine to load)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shardserve.serving import model_loader
from shardserve.serving.http_errors import APIError
from shardserve.serving.model_store import ModelStore, model_name

HANDLER = "from djl_python import Output\n\ndef handle(inputs):\n    return None if inputs.is_empty() else Output().add('ok')\n"


def artifact(tmp_path: Path, properties: str = "", model_py: str | None = HANDLER) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "serving.properties").write_text(properties)
    if model_py is not None:
        (tmp_path / "model.py").write_text(model_py)
    return tmp_path


def test_phases_from_download_to_ready(tmp_path, monkeypatch):
    fetched, release = threading.Event(), threading.Event()
    local = artifact(tmp_path / "a")

    def slow_fetch(location, timeout):
        assert location == "s3://bucket/model.tar.gz"
        fetched.set()
        release.wait(10)
        return local

    monkeypatch.setattr(model_loader, "fetch_location", slow_fetch)
    phases = []
    store = ModelStore(on_phase=lambda m, p, s: phases.append(p), environ={})
    model = store.add("m", "s3://bucket/model.tar.gz")
    assert fetched.wait(10)
    assert model.phase == "downloading"
    assert store.health() == (503, {"status": "Loading", "models": {"m": {"status": "downloading"}}})
    with pytest.raises(APIError) as e:
        model.require_ready()
    assert e.value.status == 503 and "downloading" in e.value.message
    release.set()
    for thread in threading.enumerate():
        if thread.name == "load-m":
            thread.join(10)
    assert model.ready and store.health()[0] == 200
    assert phases[:2] == ["downloading", "loading"] and set(model.phase_seconds) == {"downloading", "loading"}


@pytest.mark.parametrize(("properties", "model_py", "message"), [
    ("engine=Python\nbatch_size=zero\n", HANDLER, "batch_size"),
    ("engine=Python\nnot_a_key=1\n", None, "not_a_key"),
    ("", "def handle(inputs):\n    raise RuntimeError('no weights')\n", "no weights"),
    ("", "import not_a_module_anywhere\n", "not_a_module_anywhere"),
    ("", "x = 1\n", "handle"),
    ("option.entryPoint=missing.py\n", HANDLER, "option.entryPoint"),
])
def test_a_failed_load_turns_health_to_500_with_the_reason(tmp_path, properties, model_py, message):
    store = ModelStore(environ={})
    model = store.add("m", str(artifact(tmp_path, properties, model_py)), wait=True)
    code, body = store.health()
    assert code == 500 and body["status"] == "Unhealthy"
    assert message in body["models"]["m"]["error"]
    with pytest.raises(APIError) as e:
        model.require_ready()
    assert e.value.status == 503


def test_missing_location_fails_cleanly(tmp_path):
    store = ModelStore(environ={})
    store.add("m", str(tmp_path / "nowhere" / "model.tar.gz"), wait=True)
    assert store.health()[0] == 500


def test_model_loading_timeout(tmp_path):
    slow = "import time\n\ndef handle(inputs):\n    time.sleep(0.5)\n"
    store = ModelStore(environ={})
    model = store.add("m", str(artifact(tmp_path, "option.model_loading_timeout=0.1\n", slow)), wait=True)
    assert model.errored and "option.model_loading_timeout" in model.error


def test_environment_overrides_reach_the_handler(tmp_path):
    echo = ("from djl_python import Output\nprops = {}\n\ndef handle(inputs):\n"
            "    if inputs.is_empty():\n        props.update(inputs.get_properties())\n")
    store = ModelStore(environ={"OPTION_GREETING": "from env", "OPTION_MODEL_ID": "weights"})
    (tmp_path / "weights").mkdir(parents=True)
    model = store.add("m", str(artifact(tmp_path, "option.greeting=from file\n", echo)), wait=True)
    assert model.ready
    import sys

    props = sys.modules["shardserve_handler_m"].props
    assert props["greeting"] == "from env"
    assert props["model_dir"] == str(tmp_path.resolve()) and props["model_id"] == str((tmp_path / "weights").resolve())


def test_names_and_registry(tmp_path):
    assert model_name("s3://bucket/path/llama-7b/") == "llama-7b"
    assert model_name("/opt/ml/model.tar.gz") == "model"
    store = ModelStore(environ={})
    store.add("m", str(artifact(tmp_path)), wait=True)
    with pytest.raises(APIError) as e:
        store.add("m", str(tmp_path))
    assert e.value.status == 409
    assert store.default().name == "m"
    store.remove("m")
    with pytest.raises(APIError) as e:
        store.get("m")
    assert e.value.status == 404
    assert store.health()[0] == 200


def test_a_generation_model_knows_every_eos_id_the_engine_stops_on(tmp_path, monkeypatch):
    """generation_config.json may list several EOS ids (Llama 3); finish_reason needs them all."""
    from types import SimpleNamespace

    from shardserve.engine.request import RequestOutput
    from shardserve.serving.engines import ReplicaSet

    class Engine:
        errored = False
        tokenizer = SimpleNamespace(eos_token_id=2)
        model_config = SimpleNamespace(eos_token_id=2)

        async def generate(self, prompt, params, request_id, output_kind=None):
            yield RequestOutput(request_id, prompt, [1], "x", [5], "x", [5], True)

        def shutdown(self):
            pass

    local = artifact(tmp_path, model_py=None)
    (local / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    monkeypatch.setattr(model_loader, "_load_engine", lambda config, weights: (ReplicaSet([Engine()]), 1))
    model = ModelStore(environ={}).add("m", str(local), wait=True)
    assert model.ready, model.error
    assert model.eos_ids == {2, 7}


def test_requirements_install_gets_only_the_time_left_of_the_loading_timeout(tmp_path, monkeypatch):
    """pip against an index that never answers retries for many minutes: the load's budget, not
    pip's own timeouts, must end it, and the error must say so. Here "pip" just sleeps."""
    import subprocess
    import sys
    import time

    from shardserve.storage import requirements

    real_run = subprocess.run

    def pip_that_hangs(command, **kwargs):
        return real_run([sys.executable, "-c", "import time; time.sleep(20)"], **kwargs)

    monkeypatch.setattr(requirements.subprocess, "run", pip_that_hangs)
    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "cache"))
    local = artifact(tmp_path / "a", "option.model_loading_timeout=1\n")
    (local / "requirements.txt").write_text("some-package==1.0\n")
    started = time.monotonic()
    model = ModelStore(environ={}).add("m", str(local), wait=True)
    assert time.monotonic() - started < 10
    assert model.errored
    assert "requirements.txt ran out of time" in model.error
    assert "option.model_loading_timeout is 1 s" in model.error


@pytest.mark.parametrize(("model_py", "raised"), [
    ("import sys\nsys.exit(3)\n", "SystemExit(3)"),
    ("import sys\n\ndef handle(inputs):\n    sys.exit(3)\n", "SystemExit(3)"),
    ("def handle(inputs):\n    raise ValueError('bad handle')\n", "ValueError: bad handle"),
    ("def handle(inputs):\n    raise OSError('no disk')\n", "OSError: no disk"),
], ids=["exit-at-import", "exit-in-init", "init-ValueError", "init-OSError"])
def test_a_handler_that_exits_or_raises_fails_the_load_naming_model_py(tmp_path, model_py, raised):
    """sys.exit() raises SystemExit, no Exception: it used to end the loader thread silently and
    leave the model "loading" for ever."""
    store = ModelStore(environ={})
    model = store.add("m", str(artifact(tmp_path, "", model_py)), wait=True)
    assert model.errored and store.health()[0] == 500
    assert model.error.startswith("loading: ") and "model.py" in model.error
    assert raised in model.error


def test_an_invalid_loading_timeout_in_the_environment_names_the_key_and_the_variable(tmp_path):
    store = ModelStore(environ={"OPTION_MODEL_LOADING_TIMEOUT": "abc"})
    model = store.add("m", str(artifact(tmp_path)), wait=True)
    assert model.errored
    assert "option.model_loading_timeout (environment variable OPTION_MODEL_LOADING_TIMEOUT)" in model.error
    assert "'abc'" in model.error


def _tar_with(path: Path, marker: str) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("marker.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


ECHO = ("from djl_python import Output\nprops = {}\n\ndef handle(inputs):\n"
        "    if inputs.is_empty():\n        props.update(inputs.get_properties())\n")


def test_a_relative_model_id_archive_is_inside_the_artifact_not_the_cwd(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "cache"))
    local = artifact(tmp_path / "a", "option.model_id=weights.tar.gz\n", ECHO)
    _tar_with(local / "weights.tar.gz", "artifact")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    _tar_with(elsewhere / "weights.tar.gz", "cwd")  # the archive a cwd-relative lookup would find
    monkeypatch.chdir(elsewhere)
    model = ModelStore(environ={}).add("relarchive", str(local), wait=True)
    assert model.ready, model.error
    weights = Path(sys.modules["shardserve_handler_relarchive"].props["model_id"])
    assert [p.read_text() for p in weights.rglob("marker.txt")] == ["artifact"]


def test_a_relative_model_id_missing_from_the_artifact_is_not_looked_up_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    local = artifact(tmp_path / "a", "option.model_id=weights\n", ECHO)
    elsewhere = tmp_path / "cwd"
    (elsewhere / "weights").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    model = ModelStore(environ={}).add("m", str(local), wait=True)
    assert model.errored
    assert "option.model_id: 'weights'" in model.error and str(local) in model.error


def test_an_unknown_key_is_refused_before_requirements_or_weights_are_fetched(tmp_path, monkeypatch):
    """A typo must not hide behind (or wait for) a pip run or an S3 failure."""
    from shardserve.errors import StorageError

    local = artifact(tmp_path, "option.model_id=s3://no-such-bucket/llama\n"
                               "option.tensor_paralel_degree=2\n", model_py=None)
    (local / "requirements.txt").write_text("some-package==1.0\n")
    fetched = []

    def fetch(location, timeout):
        fetched.append(location)
        if location != str(local):
            raise StorageError(f"{location}: no credentials")
        return local

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran")

    monkeypatch.setattr(model_loader, "fetch_location", fetch)
    monkeypatch.setattr(model_loader, "_install_requirements", no_pip)
    model = ModelStore(environ={}).add("m", str(local), wait=True)
    assert model.errored
    assert "option.tensor_paralel_degree: unknown key" in model.error
    assert fetched == [str(local)]
