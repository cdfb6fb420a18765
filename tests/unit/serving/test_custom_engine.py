"""Requests to a custom handler (model.py): what a handler's return value or failure becomes."""

from __future__ import annotations

import asyncio
import json

import pytest

from shardserve.serving.handler import Input
from shardserve.serving.model_store import ModelStore


def _serve(tmp_path, model_py: str):
    (tmp_path / "serving.properties").write_text("")
    (tmp_path / "model.py").write_text(model_py)
    model = ModelStore(environ={}).add("m", str(tmp_path), wait=True)
    assert model.ready, model.error
    return model


def _request(model):
    async def go():
        done = asyncio.Event()
        inputs = Input.from_request(b'{"inputs": "x"}', {"content-type": "application/json"})
        call = model.handler.start(inputs, done.set)
        output = await asyncio.wait_for(call.output(), 10)
        await asyncio.wait_for(done.wait(), 10)
        return output

    return asyncio.run(go())


INIT_THEN = "from djl_python import Output\nimport sys\n\ndef handle(inputs):\n" \
            "    if inputs.is_empty():\n        return None\n"


@pytest.mark.parametrize(("returned", "type_name"), [("{'a': 1}", "dict"), ("'text'", "str"), ("42", "int")])
def test_a_handler_returning_something_else_than_an_output_is_a_424_naming_the_type(
        tmp_path, returned, type_name):
    """It was dropped silently: 200 with an empty body."""
    output = _request(_serve(tmp_path, INIT_THEN + f"    return {returned}\n"))
    assert output.code == 424
    error = json.loads(output.body())["error"]
    assert error == f"model.py: handle() returned {type_name}, expected an Output or None"


def test_a_handler_returning_none_is_an_empty_answer(tmp_path):
    output = _request(_serve(tmp_path, INIT_THEN + "    return None\n"))
    assert (output.code, output.body()) == (200, b"")


def test_a_handler_that_exits_in_a_request_is_a_424_not_a_request_that_never_ends(tmp_path):
    output = _request(_serve(tmp_path, INIT_THEN + "    sys.exit(5)\n"))
    assert output.code == 424
    assert json.loads(output.body())["error"] == "SystemExit(5)"
