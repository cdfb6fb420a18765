"""A DJLServing-style custom handler, written as users write them for DJLServing."""

import os
import time

from djl_python import Input, Output

_state = {}


def _wait_for(path: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _initialize(properties: dict) -> None:
    # A slow load, released by the test creating a file: lets it watch /ping's phases.
    if properties.get("init_gate"):
        _wait_for(properties["init_gate"])
    _state["greeting"] = properties.get("greeting", "none")
    _state["model_dir"] = properties["model_dir"]


def handle(inputs: Input):
    if not _state:
        _initialize(inputs.get_properties())
    if inputs.is_empty():
        return None  # the initialisation call
    data = inputs.get_as_json()
    action = data.get("action", "echo")
    if action == "echo":
        return Output().add_as_json({
            "greeting": _state["greeting"],
            "echo": data,
            "content_type": inputs.get_property("Content-Type"),
        })
    if action == "fail":
        return Output().error("the input was not understood")
    if action == "raise":
        raise RuntimeError("boom")
    if action == "wait":
        return Output().add_as_json({"released": _wait_for(data["gate"])})
    if action == "stream":
        out = Output()
        out.add_property("Content-Type", "application/jsonlines")
        out.add_stream_content({"i": i} for i in range(data["n"]))
        return out
    return Output().error(f"unknown action {action}", code=400, message="bad request")
