"""Bad flags of `download` refused up front with the flag's name, and a custom handler
(model.py) that never finishes loading failing the load within its timeout."""

from __future__ import annotations

import time

import pytest

from shardserve.cli import main
from shardserve.serving.model_store import ModelStore


def _error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "-1"], "argument --timeout: must be a finite number of seconds > 0, got '-1'"),
    (["--timeout", "nan"], "argument --timeout: must be a finite number of seconds > 0"),
    (["--timeout", "0"], "argument --timeout: must be a finite number of seconds > 0"),
    (["--concurrency", "abc"], "argument --concurrency: must be an integer >= 1, got 'abc'"),
    (["--part-size-mb", "1.5"], "argument --part-size-mb: must be an integer >= 1, got '1.5'"),
])
def test_download_flags_name_themselves(tmp_path, capsys, flags, message):
    """--timeout -1 was refused by the download, naming its parameter (timeout_s); --concurrency
    abc named argparse's type function (_positive_int)."""
    with pytest.raises(SystemExit) as exc:
        main(["download", str(tmp_path / "m.tar.gz"), *flags])
    assert exc.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "soon"])
def test_a_bad_sagemaker_download_timeout_names_the_variable(tmp_path, capsys, monkeypatch, value):
    import tarfile

    with tarfile.open(tmp_path / "m.tar.gz", "w:gz"):
        pass
    monkeypatch.setenv("ModelDataDownloadTimeoutInSeconds", value)
    line = _error_line(capsys, ["download", str(tmp_path / "m.tar.gz"), "--to", str(tmp_path / "o")])
    assert f"ModelDataDownloadTimeoutInSeconds must be a finite number of seconds > 0, got '{value}'" in line, line


@pytest.mark.parametrize("model_py, stage", [
    ("import time\n\ndef handle(inputs):\n    time.sleep(5)\n", "the initialisation call to handle()"),
    ("import time\ntime.sleep(5)\n\ndef handle(inputs):\n    return None\n", "importing"),
])
def test_a_handler_that_never_finishes_loading_fails_within_the_timeout(tmp_path, model_py, stage):
    """The loader checks option.model_loading_timeout only once a phase is over: a handler whose
    import or first call never returned kept the model loading forever."""
    (tmp_path / "serving.properties").write_text("option.model_loading_timeout=0.5\n")
    (tmp_path / "model.py").write_text(model_py)
    started = time.monotonic()
    model = ModelStore(environ={}).add("slow", str(tmp_path), wait=True)
    assert time.monotonic() - started < 4  # the handler sleeps 5 s: it was waited for in full
    assert model.errored and stage in model.error
    assert "did not finish within option.model_loading_timeout (0." in model.error  # its time left
