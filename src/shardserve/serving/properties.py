"""serving.properties + environment -> ServingConfig, validated once when a model is registered.

DJLServing artifacts carry a Java-style `serving.properties` (in the artifact root or `code/`).
Server keys (`engine`, `job_queue_size`, `batch_size`, ...) sit at top level; model options are
`option.*`. The environment overrides the file, as in the SageMaker LMI containers:
`OPTION_<KEY>` / `SERVING_<KEY>` (matched to the canonical key ignoring case and underscores),
and the short forms below. Every problem raises ValueError naming the key.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shardserve.serving.property_reader import PropertyReader
from shardserve.serving.tool_parsers import PARSERS

logger = logging.getLogger(__name__)

PROPERTIES_FILE = "serving.properties"
LOADING_TIMEOUT_S = 1800.0  # option.model_loading_timeout when neither the file nor the env sets it

# The short environment forms of the LMI containers -> the key they set.
SHORT_ENV = {
    "HF_MODEL_ID": "option.model_id",
    "TENSOR_PARALLEL_DEGREE": "option.tensor_parallel_degree",
    "MAX_BATCH_SIZE": "option.max_rolling_batch_size",
    "MAX_CONCURRENT_REQUESTS": "job_queue_size",
}

SERVER_KEYS = ("engine", "job_queue_size", "batch_size", "max_batch_delay", "minWorkers", "maxWorkers")
OPTION_KEYS = (
    "model_id", "s3url", "tensor_parallel_degree", "dtype", "entryPoint", "rolling_batch",
    "max_rolling_batch_size", "max_model_len", "max_tokens", "model_loading_timeout",
    "predict_timeout", "install_requirements", "quantize", "output_formatter", "device_map",
    "max_rolling_batch_prefill_tokens", "enable_auto_tool_choice", "tool_call_parser",
)
# Our engine's own tuning knobs, passed to EngineConfig under the same name.
ENGINE_OPTION_KEYS = (
    "gpu_memory_utilization", "enable_prefix_caching", "enable_chunked_prefill", "block_size",
    "num_kv_blocks", "cpu_kv_cache_gib", "attention_backend", "enforce_eager", "load_format",
    "max_num_batched_tokens", "async_scheduling",
)
# DJLServing keys that artifacts commonly carry and that mean nothing here: accepted, logged.
IGNORED_KEYS = (
    "max_idle_time", "load_on_devices", "required_memory_mb", "reserved_memory_mb",
    "log_model_metric", "metrics_aggregation", "gpu.minWorkers", "gpu.maxWorkers",
    "cpu.minWorkers", "cpu.maxWorkers", "option.trust_remote_code", "option.revision",
    "option.enable_streaming", "option.task", "option.paged_attention",
    "option.low_cpu_mem_usage", "option.parallel_loading", "option.mpi_mode", "option.device_id",
)

TP_ENGINES = {"deepspeed", "mpi", "python", "tp", "shardserve"}
ENGINES = TP_ENGINES | {"accelerate"}
ROLLING_BATCH = {"auto", "disable", "scheduler", "lmi-dist", "vllm", "deepspeed", "trtllm", "tnx"}
DTYPES = {"auto", "fp16", "float16", "bf16", "bfloat16", "fp32", "float32", "int8", "fp8"}
OUTPUT_FORMATTERS = {"json", "jsonlines", "sse"}


@dataclass(frozen=True)
class ServingConfig:
    """One model's serving settings. `engine` is the key as written (for the
    choice between our engine, Accelerate and a custom handler: engines.py, model_loader.py)."""

    name: str
    artifact_dir: str
    model_id: str | None = None  # option.model_id / option.s3url; None = the artifact itself
    engine: str | None = None
    entry_point: str | None = None
    tensor_parallel_degree: int = 1
    dtype: str = "auto"
    quantization: str | None = None
    rolling_batch: str = "auto"
    max_rolling_batch_size: int = 64
    max_model_len: int | None = None
    model_loading_timeout_s: float = LOADING_TIMEOUT_S
    predict_timeout_s: float = 120.0
    job_queue_size: int = 1000
    batch_size: int = 1
    max_batch_delay_ms: float = 100.0
    min_workers: int | None = None
    max_workers: int | None = None
    install_requirements: bool = True
    output_formatter: str = "jsonlines"
    device_map: str | None = None
    # OpenAI tool calling (serving/tool_calls.py): parse the calls of requests that give tools,
    # with this tool_parsers.PARSERS format, as vLLM's --enable-auto-tool-choice.
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    engine_options: dict = field(default_factory=dict)
    # Every option.* as written (prefix stripped): custom handlers read their own keys here.
    options: dict = field(default_factory=dict)
    unknown_keys: tuple[str, ...] = ()  # rejected unless a custom handler reads them


def read_properties(artifact_dir: str | Path) -> dict[str, str]:
    """The artifact's serving.properties (root, else code/), or {} when it has none."""
    for candidate in (Path(artifact_dir) / PROPERTIES_FILE, Path(artifact_dir) / "code" / PROPERTIES_FILE):
        if candidate.is_file():
            return parse_properties(_decode(candidate.read_bytes()))
    return {}


def _decode(data: bytes) -> str:
    """UTF-8 (a BOM dropped), else ISO-8859-1: Java's Properties.load reads that, so DJLServing
    accepts a latin-1 file; every byte decodes in it, and valid UTF-8 is far likelier to mean UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties: `key=value` or `key: value`, `#`/`!` comments, `\\` continuations."""
    values: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2).strip()
        else:
            values[line] = ""
    return values


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Keys set by the environment, in precedence order (later wins)."""
    environ = os.environ if environ is None else environ
    return {key: environ[name] for key, name in env_variables(environ).items()}


def env_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """key -> the environment variable that sets it (the one that wins), for error messages."""
    environ = os.environ if environ is None else environ
    out = {key: name for name, key in SHORT_ENV.items() if environ.get(name)}
    option_keys = {_norm(k): k for k in OPTION_KEYS + ENGINE_OPTION_KEYS}
    server_keys = {_norm(k): k for k in SERVER_KEYS}
    for name in environ:
        if name.startswith("OPTION_"):
            suffix = name[len("OPTION_"):]
            out["option." + option_keys.get(_norm(suffix), suffix.lower())] = name
        elif name.startswith("SERVING_") and _norm(name[len("SERVING_"):]) in server_keys:
            # Other SERVING_* variables configure the server or storage, not a model.
            out[server_keys[_norm(name[len("SERVING_"):])]] = name
    return out


def loading_timeout(env: Mapping[str, str], env_names: Mapping[str, str] | None = None) -> float:
    """option.model_loading_timeout as the environment sets it: the budget for fetching the
    artifact, whose serving.properties may then set its own. Validated like build_config does."""
    return PropertyReader(env, env_names).seconds("option.model_loading_timeout", LOADING_TIMEOUT_S)


def build_config(
    name: str, artifact_dir: str | Path, file_values: Mapping[str, str], env: Mapping[str, str],
    env_names: Mapping[str, str] | None = None,
) -> ServingConfig:
    """ServingConfig from the file's keys with the environment's on top; ValueError names the key
    (and the variable that set it, from `env_names`: env_variables())."""
    values = {**file_values, **env}
    reader = PropertyReader(values, {k: v for k, v in (env_names or {}).items() if k in env})
    options = {k[len("option."):]: v for k, v in values.items() if k.startswith("option.")}
    dtype = reader.choice("option.dtype", DTYPES, "auto")
    quantization = reader.choice("option.quantize", {"int8", "fp8", "bitsandbytes8"}, None)
    if dtype in ("int8", "fp8"):  # DJL writes 8-bit weights as a dtype
        quantization, dtype = dtype, "auto"
    if quantization == "bitsandbytes8":
        quantization = "int8"
    engine = reader.text("engine")
    if engine is not None and engine.lower() not in ENGINES:
        raise ValueError(
            f"engine: unknown engine {engine!r}; use DeepSpeed, MPI or Python (our tensor-parallel "
            "engine) or Accelerate"
        )
    min_workers = reader.integer("minWorkers", None, minimum=1)
    max_workers = reader.integer("maxWorkers", None, minimum=1)
    if min_workers and max_workers and max_workers < min_workers:
        raise ValueError(f"maxWorkers ({max_workers}) must be >= minWorkers ({min_workers})")
    max_model_len = reader.integer("option.max_model_len", None, minimum=1)
    if max_model_len is None:
        max_model_len = reader.integer("option.max_tokens", None, minimum=1)
    enable_tools = reader.boolean("option.enable_auto_tool_choice", False)
    tool_call_parser = reader.choice("option.tool_call_parser", set(PARSERS), None)
    if enable_tools and tool_call_parser is None:
        raise reader.invalid("option.enable_auto_tool_choice",
                             f"needs option.tool_call_parser, one of {sorted(PARSERS)}")
    config = ServingConfig(
        name=name,
        artifact_dir=str(artifact_dir),
        model_id=reader.text("option.model_id") or reader.text("option.s3url"),
        engine=engine,
        entry_point=reader.text("option.entryPoint"),
        tensor_parallel_degree=reader.tp_degree("option.tensor_parallel_degree"),
        dtype=dtype,
        quantization=quantization,
        rolling_batch=reader.choice("option.rolling_batch", ROLLING_BATCH, "auto"),
        max_rolling_batch_size=reader.integer("option.max_rolling_batch_size", 64, minimum=1),
        max_model_len=max_model_len,
        model_loading_timeout_s=reader.seconds("option.model_loading_timeout", LOADING_TIMEOUT_S),
        predict_timeout_s=reader.seconds("option.predict_timeout", 120.0),
        job_queue_size=reader.integer("job_queue_size", 1000, minimum=0),
        batch_size=reader.integer("batch_size", 1, minimum=1),
        max_batch_delay_ms=reader.number("max_batch_delay", 100.0, minimum=0.0),
        min_workers=min_workers,
        max_workers=max_workers,
        install_requirements=reader.boolean("option.install_requirements", True),
        output_formatter=reader.choice("option.output_formatter", OUTPUT_FORMATTERS, "jsonlines"),
        device_map=reader.text("option.device_map"),
        enable_auto_tool_choice=enable_tools,
        tool_call_parser=tool_call_parser,
        engine_options=_engine_options(reader),
        options=options,
        unknown_keys=tuple(sorted(_unknown(reader))),
    )
    for key in sorted(set(values) & set(IGNORED_KEYS)):
        logger.info("%s: %s is accepted for DJLServing compatibility and has no effect", name, key)
    return config


def _engine_options(reader: PropertyReader) -> dict:
    """option.<EngineConfig field>, typed like the field; EngineConfig validates the ranges."""
    out: dict = {}
    for key in ENGINE_OPTION_KEYS:
        full = "option." + key
        if full not in reader.values:
            continue
        if key in ("enable_prefix_caching", "enable_chunked_prefill", "enforce_eager", "async_scheduling"):
            out[key] = reader.boolean(full, False)
        elif key in ("gpu_memory_utilization", "cpu_kv_cache_gib"):
            out[key] = reader.number(full, 0.0, minimum=0.0)
        elif key in ("attention_backend", "load_format"):
            out[key] = reader.text(full)
        else:
            out[key] = reader.integer(full, 1, minimum=1)
    if "option.max_rolling_batch_prefill_tokens" in reader.values:
        out["max_num_batched_tokens"] = reader.integer("option.max_rolling_batch_prefill_tokens", 1, minimum=1)
    return out


def _unknown(reader: PropertyReader) -> set[str]:
    """The keys given that nothing read and that no list here names."""
    known = reader.seen | set(IGNORED_KEYS) | set(SERVER_KEYS) | {"option." + k for k in OPTION_KEYS + ENGINE_OPTION_KEYS}
    return set(reader.values) - known


def _norm(key: str) -> str:
    return key.replace("_", "").replace(".", "").lower()
