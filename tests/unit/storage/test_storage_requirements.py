"""A model's requirements.txt: installed once into a private directory, optional, loud on failure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.wheels import tiny_wheel
from shardserve.errors import ModelLoadError
from shardserve.storage import requirements
from shardserve.storage.requirements import install_requirements


def test_installs_into_a_private_dir_once(tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    wheel = tiny_wheel(model / "code")
    (model / "code" / "requirements.txt").write_text(f"--no-index\n./{wheel}\n")
    site = install_requirements(model, cache_dir=tmp_path / "cache")
    assert site.parent == tmp_path / "cache" / "pydeps"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(site)!r}); import tinydep; print(tinydep.VALUE)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"
    monkeypatch.setattr(
        requirements.subprocess, "run", lambda *a, **k: pytest.fail("pip ran twice")
    )
    assert install_requirements(model, cache_dir=tmp_path / "cache") == site


def test_turned_off_or_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(requirements.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert install_requirements(tmp_path, cache_dir=tmp_path) is None
    (tmp_path / "requirements.txt").write_text("anything\n")
    assert install_requirements(tmp_path, enabled=False, cache_dir=tmp_path) is None


def test_failed_install_stops_the_load_with_pips_message(tmp_path):
    (tmp_path / "requirements.txt").write_text("--no-index\nno-such-package-shardserve==1.0\n")
    with pytest.raises(
        ModelLoadError,
        match=r"pip could not install .*requirements.txt \(exit 1\):\n(.|\n)*no-such-package-shardserve",
    ):
        install_requirements(tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "pydeps").glob("*/tinydep.py"))
