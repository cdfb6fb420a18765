import pytest

from shardserve.config import EngineConfig, canonical_dtype, parse_tp_degree


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tensor_parallel_size", 0, "tensor_parallel_size must be an integer >= 1"),
        ("block_size", -1, "block_size must be an integer >= 1"),
        ("max_num_seqs", 1.5, "max_num_seqs must be an integer >= 1"),
        ("gpu_memory_utilization", 1.5, "gpu_memory_utilization must be in (0, 1]"),
        ("dtype", "fp64", "dtype must be one of"),
        ("quantization", "int4", "quantization must be one of"),
        ("attention_backend", "flash", "attention_backend must be auto, torch or triton"),
        ("load_format", "gguf", "load_format must be"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ValueError) as err:
        EngineConfig(model="m", **{field: value})
    assert message in str(err.value)


def test_devices_must_match_the_degree():
    with pytest.raises(ValueError, match="devices lists 1 devices but tensor_parallel_size is 2"):
        EngineConfig(model="m", tensor_parallel_size=2, devices=["cuda:0"])
    assert EngineConfig(model="m", tensor_parallel_size=2, devices=["cpu", "cpu"]).devices == ("cpu", "cpu")


def test_dtype_aliases():
    assert canonical_dtype("fp16") == canonical_dtype("half") == "float16"
    assert EngineConfig(model="m", dtype="bf16").dtype == "bfloat16"


def test_degree_from_env_int_or_max(monkeypatch):
    monkeypatch.setenv("TENSOR_PARALLEL_DEGREE", "3")
    assert EngineConfig.from_env("m").tensor_parallel_size == 3
    assert EngineConfig.from_env("m", tensor_parallel_size=2).tensor_parallel_size == 2
    assert parse_tp_degree("max") >= 1  # every visible GPU; 1 without GPUs
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="tensor_parallel_degree must be an integer >= 1 or 'max'"):
            parse_tp_degree(bad)


def test_from_dict_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"unknown engine option\(s\) \['max_batch'\]"):
        EngineConfig.from_dict({"model": "m", "max_batch": 4})
