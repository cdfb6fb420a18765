"""A model's own requirements.txt, installed into a private directory (as DJLServing does).

The packages go to `<cache>/pydeps/<hash>/` with `pip install --target`, never into the server's
environment, so two models with conflicting pins can live on one host. The hash covers the
file's text, the model directory (relative entries such as `./pkg.whl` resolve against it) and
the interpreter, so a changed requirements.txt or Python gets a fresh install; an unchanged one
is installed once per host (same lock and DONE marker as downloads).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from functools import partial
from pathlib import Path

from shardserve.errors import ModelLoadError
from shardserve.storage.deadline import Deadline
from shardserve.storage.disk import file_sizes, remove
from shardserve.storage.fetch import default_cache_dir
from shardserve.storage.once import ensure

logger = logging.getLogger("shardserve.storage")

# DJLServing reads the model root; SageMaker's framework containers read code/.
CANDIDATES = ("requirements.txt", "code/requirements.txt")
_PIP_TAIL = 4000  # characters of pip's output shown in the error


def find_requirements(model_dir: Path) -> Path | None:
    return next((Path(model_dir) / c for c in CANDIDATES if (Path(model_dir) / c).is_file()), None)


def install_requirements(
    model_dir: str | Path,
    *,
    enabled: bool = True,
    cache_dir: str | Path | None = None,
    timeout_s: float | None = None,
) -> Path | None:
    """Install `model_dir`'s requirements.txt (or code/requirements.txt); return the directory
    to put at the front of `sys.path` before importing the model's code, or None when there is
    nothing to install or `enabled` is False (`option.install_requirements=false`, or turned off
    server-wide). A failed install raises ModelLoadError carrying pip's own message.
    """
    requirements = find_requirements(Path(model_dir))
    if requirements is None:
        return None
    if not enabled:
        logger.info("%s present but installing requirements is turned off", requirements)
        return None
    text = requirements.read_bytes()
    key = hashlib.sha256(
        b"|".join(
            [
                text,
                str(requirements.resolve()).encode(),
                sys.version.encode(),
                sys.executable.encode(),
            ]
        )
    )
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = root / "pydeps" / key.hexdigest()[:16]
    return ensure(
        dest,
        partial(_pip_install, requirements, timeout_s=timeout_s),
        deadline=Deadline(timeout_s),
        what=f"installing {requirements}",
        owned=True,
        identity={"requirements": str(requirements.resolve())},
    )


def _pip_install(requirements: Path, work: Path, *, timeout_s: float | None) -> tuple[Path, dict]:
    target = work / "site"
    remove(target)  # left by an install that was killed
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "-r",
        requirements.name,
    ]
    logger.info("installing %s into %s", requirements, target)
    try:
        done = subprocess.run(
            command, cwd=requirements.parent, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"pip install -r {requirements} did not finish within {timeout_s:g} s"
        ) from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-_PIP_TAIL:]
        raise ModelLoadError(
            f"pip could not install {requirements} (exit {done.returncode}):\n{output}"
        )
    return target, {"files": file_sizes(target)}
