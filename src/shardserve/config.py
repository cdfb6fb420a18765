"""Engine configuration: one frozen dataclass, validated once at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

_DTYPES = {
    "auto": "auto",
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}
_QUANTIZATIONS = (None, "int8", "fp8")


def canonical_dtype(name: str) -> str:
    """'fp16' / 'half' / 'float16' -> 'float16'; raises ValueError naming the field."""
    key = str(name).lower()
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))}, got {name!r}")
    return _DTYPES[key]


def torch_dtype(name: str):
    """'fp16' / 'half' / 'float16' -> torch.float16 ('auto' is resolved by the caller)."""
    canonical = canonical_dtype(name)
    if canonical == "auto":
        raise ValueError("dtype 'auto' has no torch dtype until it is resolved against a checkpoint")
    import torch  # lazily: reading configs must not import torch

    return getattr(torch, canonical)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to load a model and serve requests.

    KV capacity is `num_kv_blocks` when given, else `gpu_memory_utilization` of the GPU's free
    memory after loading, else (CPU) `cpu_kv_cache_gib`.
    """

    model: str
    dtype: str = "auto"  # auto = the checkpoint's torch_dtype (fp32 on CPU if it is half precision)
    tensor_parallel_size: int = 1
    devices: tuple[str, ...] | None = None  # explicit devices for the ranks, e.g. ("cuda:2", "cuda:3")
    quantization: str | None = None  # int8 | fp8 weight-only
    max_model_len: int | None = None  # default: the model's max positions
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_gib: float = 1.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # auto | torch | triton
    enforce_eager: bool = False  # no CUDA graphs
    # Schedule step n+1 while step n runs (its tokens are filled in on the device), so the
    # host's bookkeeping overlaps the GPU. None = on where the ranks run on GPUs.
    async_scheduling: bool | None = None
    load_format: str = "auto"  # auto | safetensors | pt | random
    seed: int = 0
    collective_timeout_s: float = 600.0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty path, got {self.model!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.quantization not in _QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {self.quantization!r}")
        _positive_int(self, "tensor_parallel_size")
        _positive_int(self, "block_size")
        _positive_int(self, "max_num_seqs")
        _positive_int(self, "max_num_batched_tokens")
        if self.max_model_len is not None:
            _positive_int(self, "max_model_len")
        if self.num_kv_blocks is not None:
            _positive_int(self, "num_kv_blocks")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, got {self.attention_backend!r}")
        if self.load_format not in ("auto", "safetensors", "pt", "random", "presharded"):
            raise ValueError(f"load_format must be auto, safetensors, pt, presharded or random, got {self.load_format!r}")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(self.devices))
            if len(self.devices) != self.tensor_parallel_size:
                raise ValueError(
                    f"devices lists {len(self.devices)} devices but tensor_parallel_size is "
                    f"{self.tensor_parallel_size}"
                )

    @classmethod
    def from_dict(cls, values: dict) -> EngineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_env(cls, model: str, **overrides) -> EngineConfig:
        """TENSOR_PARALLEL_DEGREE (int or 'max') in the environment sets the degree."""
        if "tensor_parallel_size" not in overrides and os.environ.get("TENSOR_PARALLEL_DEGREE"):
            overrides["tensor_parallel_size"] = parse_tp_degree(os.environ["TENSOR_PARALLEL_DEGREE"])
        return cls(model=model, **overrides)


def parse_tp_degree(value: str | int) -> int:
    """An int, or 'max' = every visible GPU (1 without GPUs)."""
    if isinstance(value, str) and value.strip().lower() == "max":
        import torch

        return max(torch.cuda.device_count(), 1)
    try:
        degree = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"tensor_parallel_degree must be an integer >= 1 or 'max', got {value!r}") from None
    if degree < 1:
        raise ValueError(f"tensor_parallel_degree must be an integer >= 1 or 'max', got {value!r}")
    return degree


def _positive_int(cfg, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
