"""serving.properties + environment -> ServingConfig."""

from __future__ import annotations

import pytest

from shardserve.serving.properties import (
    build_config,
    env_overrides,
    env_variables,
    loading_timeout,
    parse_properties,
    read_properties,
)


def config(file_values=None, env=None, **kw):
    return build_config("m", "/artifact", file_values or {}, env_overrides(env or {}), **kw)


def test_java_properties_syntax():
    text = "# comment\n! also a comment\nengine=DeepSpeed\noption.model_id : s3://b/p\n" \
           "option.dtype fp16\nlong=a\\\n  b\nempty=\n\n"
    assert parse_properties(text) == {
        "engine": "DeepSpeed", "option.model_id": "s3://b/p", "option.dtype": "fp16", "long": "ab", "empty": "",
    }


def test_read_properties_from_root_or_code_dir(tmp_path):
    assert read_properties(tmp_path) == {}
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "serving.properties").write_text("engine=MPI\n")
    assert read_properties(tmp_path) == {"engine": "MPI"}
    (tmp_path / "serving.properties").write_text("engine=Python\n")
    assert read_properties(tmp_path) == {"engine": "Python"}


def test_every_documented_key():
    c = config({
        "engine": "DeepSpeed", "job_queue_size": "7", "batch_size": "4", "max_batch_delay": "50",
        "minWorkers": "1", "maxWorkers": "2", "option.model_id": "s3://bucket/llama",
        "option.tensor_parallel_degree": "2", "option.dtype": "bf16", "option.entryPoint": "model.py",
        "option.rolling_batch": "auto", "option.max_rolling_batch_size": "16", "option.max_model_len": "4096",
        "option.model_loading_timeout": "600", "option.predict_timeout": "30",
    })
    assert (c.engine, c.job_queue_size, c.batch_size, c.max_batch_delay_ms) == ("DeepSpeed", 7, 4, 50.0)
    assert (c.min_workers, c.max_workers, c.model_id) == (1, 2, "s3://bucket/llama")
    assert (c.tensor_parallel_degree, c.dtype, c.entry_point, c.rolling_batch) == (2, "bf16", "model.py", "auto")
    assert (c.max_rolling_batch_size, c.max_model_len) == (16, 4096)
    assert (c.model_loading_timeout_s, c.predict_timeout_s) == (600.0, 30.0)
    assert c.unknown_keys == ()


def test_old_names_and_8bit_dtypes():
    c = config({"option.s3url": "s3://b/old", "option.max_tokens": "2048", "option.dtype": "int8"})
    assert (c.model_id, c.max_model_len, c.quantization, c.dtype) == ("s3://b/old", 2048, "int8", "auto")


def test_tensor_parallel_degree_max_is_every_gpu():
    assert config({"option.tensor_parallel_degree": "max"}).tensor_parallel_degree >= 1


def test_env_overrides_file_and_short_forms():
    file_values = {"option.model_id": "/from/file", "job_queue_size": "5", "option.tensor_parallel_degree": "1"}
    env = {"HF_MODEL_ID": "/from/short", "TENSOR_PARALLEL_DEGREE": "2", "MAX_BATCH_SIZE": "12",
           "MAX_CONCURRENT_REQUESTS": "9", "SERVING_BATCH_SIZE": "3", "SERVING_MAX_BATCH_DELAY": "5",
           "SERVING_DOWNLOAD_DIR": "/not/a/model/key", "OPTION_ENTRYPOINT": "handler.py"}
    c = config(file_values, env)
    assert (c.model_id, c.tensor_parallel_degree, c.max_rolling_batch_size) == ("/from/short", 2, 12)
    assert (c.job_queue_size, c.batch_size, c.max_batch_delay_ms, c.entry_point) == (9, 3, 5.0, "handler.py")
    # the long form wins over the short one
    assert config({}, {"HF_MODEL_ID": "/short", "OPTION_MODEL_ID": "/long"}).model_id == "/long"
    assert config({}, {"SERVING_MIN_WORKERS": "2"}).min_workers == 2


@pytest.mark.parametrize(("values", "key"), [
    ({"engine": "TensorRT"}, "engine"),
    ({"option.tensor_parallel_degree": "0"}, "option.tensor_parallel_degree"),
    ({"option.tensor_parallel_degree": "two"}, "option.tensor_parallel_degree"),
    ({"option.dtype": "fp64"}, "option.dtype"),
    ({"job_queue_size": "-1"}, "job_queue_size"),
    ({"batch_size": "0"}, "batch_size"),
    ({"max_batch_delay": "soon"}, "max_batch_delay"),
    ({"option.predict_timeout": "0"}, "option.predict_timeout"),
    ({"option.model_loading_timeout": "inf"}, "option.model_loading_timeout"),
    ({"option.rolling_batch": "magic"}, "option.rolling_batch"),
    ({"option.max_rolling_batch_size": "1.5"}, "option.max_rolling_batch_size"),
    ({"option.install_requirements": "maybe"}, "option.install_requirements"),
    ({"minWorkers": "2", "maxWorkers": "1"}, "maxWorkers"),
])
def test_invalid_values_name_the_key(values, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config(values)


def test_unknown_keys_are_kept_for_custom_handlers_and_ignored_keys_accepted():
    c = config({"option.my_handler_setting": "x", "typo_key": "1", "option.trust_remote_code": "true",
                "max_idle_time": "60"})
    assert c.unknown_keys == ("option.my_handler_setting", "typo_key")
    assert c.options["my_handler_setting"] == "x"


def test_engine_options_reach_the_engine_config():
    c = config({"option.enable_prefix_caching": "false", "option.gpu_memory_utilization": "0.8",
                "option.max_rolling_batch_prefill_tokens": "1024", "option.block_size": "32",
                "option.async_scheduling": "false"})
    assert c.engine_options == {"enable_prefix_caching": False, "gpu_memory_utilization": 0.8,
                                "block_size": 32, "max_num_batched_tokens": 1024, "async_scheduling": False}


def test_a_value_set_by_the_environment_names_the_variable_in_its_error():
    env = {"SERVING_BATCH_SIZE": "x"}
    with pytest.raises(ValueError, match=r"^batch_size \(environment variable SERVING_BATCH_SIZE\): "):
        config({"option.model_loading_timeout": "5"}, env, env_names=env_variables(env))
    env = {"OPTION_MODEL_LOADING_TIMEOUT": "abc"}
    with pytest.raises(ValueError, match=r"^option\.model_loading_timeout \(environment variable "
                                         r"OPTION_MODEL_LOADING_TIMEOUT\): must be a number"):
        loading_timeout(env_overrides(env), env_variables(env))
    assert loading_timeout({}) == 1800.0 and loading_timeout({"option.model_loading_timeout": "9"}) == 9.0
    with pytest.raises(ValueError, match=r"^batch_size: "):  # from the file: no variable to name
        config({"batch_size": "x"}, {"SERVING_MAX_BATCH_DELAY": "5"})


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "iso-8859-1"])
def test_serving_properties_in_utf8_or_latin1(tmp_path, encoding):
    """Java reads .properties as ISO-8859-1, so DJLServing accepts latin-1 files; most are UTF-8."""
    (tmp_path / "serving.properties").write_bytes("engine=Python\noption.greeting=café\n".encode(encoding))
    assert read_properties(tmp_path) == {"engine": "Python", "option.greeting": "café"}
