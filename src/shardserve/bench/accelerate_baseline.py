"""The baseline engine: Hugging Face transformers `generate`, layers split over the GPUs by
Accelerate's device map (a pipeline: one GPU works at a time), as in the original comparison.

With random weights the baseline gets exactly the tensors our engine creates for
load_format="random": each HF parameter name is mapped to our (parameter, shard) by the loader's
own name mapping, and the same lazily generated tensor (weights/random_init.RandomTensor, keyed
by our name, shard and seed) is produced in full on the GPU that the device map gives that
layer. Nothing goes through the host or the disk, so a 60 GB model is ready in seconds; the
alternative (write a random safetensors checkpoint once and load it in both engines) would
spend minutes of disk I/O per run for the same guarantee. tests/unit/bench checks the two
engines' logits agree on such weights.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from shardserve.models.config import ModelConfig

logger = logging.getLogger(__name__)


class AccelerateBaseline:
    def __init__(
        self, model_dir: str | Path, dtype: torch.dtype, devices: list[torch.device],
        random_weights: bool, seed: int = 0,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM

        started = time.perf_counter()
        self.devices = devices
        self.dtype = dtype
        self.model_config = ModelConfig.from_hf(str(model_dir))
        if random_weights:
            hf_config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
            self.model = _random_model(hf_config, self.model_config, dtype, devices, seed)
        else:
            kwargs = {"device_map": "auto", "max_memory": _max_memory(devices)} if devices[0].type == "cuda" else {}
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True, **kwargs)
        self.model.eval()
        self.input_device = self.model.get_input_embeddings().weight.device
        _sync(devices)
        self.load_seconds = time.perf_counter() - started

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy, exactly `new_tokens` each (EOS suppressed until then, as min_new_tokens does)."""
        ids = torch.tensor(prompts, device=self.input_device)
        pad = self.model_config.pad_token_id
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=pad if pad is not None else 0,
        )
        _sync(self.devices)
        return out[:, ids.shape[1] :].tolist()

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """float32 logits [len(token_ids), vocab] on the CPU."""
        ids = torch.tensor([token_ids], device=self.input_device)
        return self.model(ids).logits[0].float().cpu()

    @torch.inference_mode()
    def logits_fp32(self, token_ids: list[int]) -> torch.Tensor:
        """The same logits computed in float32 (the model upcast for the call, then cast back:
        half-precision weights survive the round trip exactly; buffers, such as a float32 rotary
        inv_freq that the cast back would round, are put back as they were): the half-precision
        noise floor."""
        buffers = [(module, name, b) for module in self.model.modules() for name, b in module._buffers.items()]
        self.model.to(torch.float32)
        try:
            return self.logits(token_ids)
        finally:
            self.model.to(self.dtype)
            for module, name, b in buffers:
                module._buffers[name] = b
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _random_model(hf_config, model_config: ModelConfig, dtype, devices, seed: int):
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.tie_weights()
    if devices[0].type == "cuda":
        # What from_pretrained(device_map="auto") does: balance the layers over the GPUs.
        no_split = model._no_split_modules
        memory = get_balanced_memory(model, _max_memory(devices), no_split, dtype=dtype)
        device_map = infer_auto_device_map(model, memory, no_split, dtype=dtype)
    else:
        device_map = {"": devices[0]}
    for name, tensor in same_random_tensors(model, model_config, dtype, device_map, seed):
        set_module_tensor_to_device(model, name, tensor.device, value=tensor)
    model.tie_weights()  # the new embedding parameter must become the LM head again
    if devices[0].type == "cuda":
        return dispatch_model(model, device_map)
    return model.to(devices[0])


def same_random_tensors(hf_model, model_config: ModelConfig, dtype, device_map: dict, seed: int):
    """(HF parameter name, tensor on its device) equal to our engine's load_format="random"."""
    from shardserve.models import create_model
    from shardserve.weights.loader import param_for
    from shardserve.weights.random_init import random_tensor

    ours = create_model(model_config, dtype)  # meta device; this process is a single rank
    params = dict(ours.named_parameters())
    for hf_name, _ in hf_model.named_parameters():  # tied weights appear once
        target = param_for(ours, hf_name)
        if target is None:
            continue
        name, shard_id = target
        param = params[name]
        device = _device_for(hf_name, device_map)
        fill = getattr(param, "random_fill", None)
        if fill is not None:
            yield hf_name, torch.full(param.shard_shapes[shard_id], fill, dtype=dtype, device=device)
            continue
        yield hf_name, random_tensor(seed, name, shard_id, param.shard_shapes[shard_id], dtype, device)[:]


def _device_for(param_name: str, device_map: dict) -> torch.device:
    """The device of the longest device-map prefix owning `param_name`."""
    best = max((k for k in device_map if k == "" or param_name == k or param_name.startswith(k + ".")), key=len)
    where = device_map[best]
    return torch.device(f"cuda:{where}" if isinstance(where, int) else where)


def _max_memory(devices: list[torch.device]) -> dict:
    # Leave room for activations and the KV cache of generate.
    return {d.index: int(torch.cuda.get_device_properties(d).total_memory * 0.85) for d in devices}


def _sync(devices: list[torch.device]) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)
