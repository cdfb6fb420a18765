"""DJLServing's Input/Output contract, and `from djl_python import Input, Output`."""

from __future__ import annotations

import importlib
import sys

from shardserve.serving import handler
from shardserve.serving.djl_compat import install_djl_alias
from shardserve.serving.handler import Input, Output, format_stream_item


def test_input_reads_like_djl():
    inputs = Input.from_request(b'{"a": 1}', {"Content-Type": "application/json"})
    assert inputs.get_property("content-type") == "application/json"
    assert inputs.get_as_json() == {"a": 1} == inputs.get_data()
    assert inputs.get_as_string() == '{"a": 1}'
    assert inputs.contains_key("data") and not inputs.is_empty()
    assert inputs.get_batches() == [inputs] and inputs.get_batch_size() == 1
    init = Input(properties={"model_dir": "/m"})
    assert init.is_empty() and init.get_as_bytes() is None


def test_output_builders_and_error():
    out = Output().add_as_json({"x": 1}).add_property("X-Custom", "1")
    assert out.body() == b'{"x": 1}' and out.code == 200
    assert Output().add("text").body() == b"text"
    err = Output().error("bad")
    assert (err.code, err.message, err.content_type()) == (424, "prediction failure", "application/json")
    assert err.body() == b'{"code": 424, "message": "prediction failure", "error": "bad"}'


def test_stream_items_are_encoded():
    assert format_stream_item({"a": 1}) == b'{"a": 1}\n'
    assert format_stream_item("raw") == b"raw"
    assert format_stream_item(1, formatter=lambda x: f"<{x}>") == b"<1>"


def test_djl_python_alias_serves_our_classes():
    if "djl_python" in sys.modules and not getattr(sys.modules["djl_python"], "__shardserve_alias__", False):
        return  # a real djl_python is installed: ours must stay out of its way
    assert install_djl_alias()
    from djl_python import Input as DjlInput
    from djl_python import Output as DjlOutput

    assert DjlInput is handler.Input and DjlOutput is handler.Output
    assert importlib.import_module("djl_python.inputs").Input is handler.Input
    assert importlib.import_module("djl_python.outputs").Output is handler.Output
    assert install_djl_alias()  # idempotent
