"""Tiny random-weight Hugging Face checkpoints for tests (no model hub on CI machines).

`make_tiny_checkpoint("llama", tmp_dir)` writes config.json, weights (safetensors by default) and a
byte-level BPE tokenizer trained here on a few paragraphs, so `AutoTokenizer.from_pretrained`,
`AutoModelForCausalLM.from_pretrained` and our loader all work offline.

Weights are HF's own init under a fixed seed with a large std (so logits differ meaningfully
across tokens), and every 1-D parameter (biases, norm weights) is perturbed away from its HF
init of 0 / 1 so that a bias or norm that fails to load changes the logits.
"""

from __future__ import annotations

import json
import shutil
import zlib
from functools import lru_cache
from pathlib import Path

import torch

ARCHS = ("opt", "opt-postln", "opt-proj", "bloom", "llama", "llama-linear-rope", "mistral", "qwen2", "gpt2")

VOCAB_SIZE = 512
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPECIAL = ["<pad>", "<s>", "</s>"]

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
)
_LLAMA = dict(_COMMON, intermediate_size=128, num_key_value_heads=2, initializer_range=0.15, rms_norm_eps=1e-5)
_OPT = dict(_COMMON, ffn_dim=128, init_std=0.15, dropout=0.0, attention_dropout=0.0)

# arch -> (transformers config class name, default config kwargs)
_VARIANTS: dict[str, tuple[str, dict]] = {
    "opt": ("OPTConfig", _OPT),
    "opt-postln": ("OPTConfig", dict(_OPT, do_layer_norm_before=False)),
    "opt-proj": ("OPTConfig", dict(_OPT, word_embed_proj_dim=32)),
    "bloom": (
        "BloomConfig",
        dict(
            vocab_size=VOCAB_SIZE, hidden_size=64, n_layer=2, n_head=4, initializer_range=0.15,
            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        ),
    ),
    "llama": (
        "LlamaConfig",
        dict(
            _LLAMA,
            rope_theta=10000.0,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "llama-linear-rope": (
        "LlamaConfig", dict(_LLAMA, rope_theta=10000.0, rope_scaling=dict(rope_type="linear", factor=2.0))
    ),
    "mistral": ("MistralConfig", dict(_LLAMA, sliding_window=4096, rope_theta=1000000.0)),
    "qwen2": ("Qwen2Config", dict(_LLAMA, rope_theta=1000000.0)),
    "gpt2": (
        "GPT2Config",
        dict(
            vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=256,
            initializer_range=0.15, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        ),
    ),
}

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
Large language models are served by inference engines that batch many requests together,
keeping a paged cache of keys and values for every sequence so that no memory is wasted.
Tensor parallelism splits each weight matrix across the accelerators of one host: the columns
of the first projection and the rows of the second, with one all-reduce at the end of a block.
Once upon a time, in a small village by the sea, there lived an old fisherman and his wife.
Every morning he rowed out past the harbour wall and cast his nets into the grey water.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 and 65536 appear in logs and benchmarks.
def forward(self, input_ids, positions): return self.lm_head(self.model(input_ids, positions))
Hello, world! How are you today? I am fine, thank you. What time is it? It is half past nine.
Rotary position embeddings rotate pairs of channels by an angle proportional to the position,
while ALiBi adds a linear bias to the attention scores that grows with the distance between
the query and the key. Both let the model know the order of the tokens in the sequence.
Weights are stored as safetensors files; each rank reads only the slice of every tensor it owns,
converting the data type on the fly, so host memory stays bounded by one slice at a time.
"""


@lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """A byte-level BPE with exactly `vocab_size` entries, as tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"corpus too small for a {vocab_size}-token BPE (got {tok.get_vocab_size()})")
    # Prepend BOS like Llama/OPT tokenizers do, so prompts start with a real special token.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return tok.to_str()


def save_tiny_tokenizer(path: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """tokenizer.json + tokenizer_config.json (+ special tokens map) loadable by AutoTokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        # Byte-level BPE never needs UNK; naming an existing token stops tokenizer classes such as
        # Qwen2Tokenizer from appending their own default one (which would grow the vocab).
        unk_token="<pad>",
        model_max_length=256,
        chat_template=(
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}"
        ),
    )
    tokenizer.save_pretrained(str(path))


def tiny_config(arch: str, **overrides):
    """The transformers config object of a tiny `arch` (see ARCHS), with `overrides` applied."""
    import transformers

    if arch not in _VARIANTS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    cls_name, defaults = _VARIANTS[arch]
    return getattr(transformers, cls_name)(**{**defaults, **overrides})


def _perturb_vectors(model: torch.nn.Module, scale: float = 0.2) -> None:
    """Move biases off 0 and norm weights off 1 (HF init) so each one matters to the logits."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * scale)


def make_tiny_checkpoint(
    arch: str,
    path: str | Path,
    *,
    dtype: str = "float32",
    seed: int | None = None,
    sharded: bool = False,
    format: str = "safetensors",
    **config_overrides,
) -> Path:
    """Write a tiny random `arch` checkpoint + tokenizer into `path`; returns the directory.

    dtype: "float32" | "float16" | "bfloat16" (the stored weights and config's dtype).
    seed: weights seed; default derived from `arch` so that variants differ from each other.
    sharded: several safetensors files + model.safetensors.index.json.
    format: "safetensors" | "bin" (a single pytorch_model.bin).
    config_overrides: any config key, e.g. tie_word_embeddings=False, vocab_size=515,
    num_key_value_heads=1. The tokenizer is trained to the model's vocab_size.
    """
    from transformers import AutoModelForCausalLM

    if format not in ("safetensors", "bin"):
        raise ValueError(f"format must be safetensors or bin, got {format!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_config(arch, **config_overrides)
    torch.manual_seed(zlib.crc32(arch.encode()) if seed is None else seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _perturb_vectors(model)
    model = model.to(getattr(torch, dtype))
    if format == "bin":
        # transformers 5 only writes safetensors; write the legacy format ourselves.
        model.config.architectures = [type(model).__name__]
        model.config.dtype = dtype
        model.config.save_pretrained(str(path))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        torch.save(state, path / "pytorch_model.bin")
    else:
        model.save_pretrained(str(path), max_shard_size="40KB" if sharded else "50GB")
    save_tiny_tokenizer(path, config.vocab_size)
    return path


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A writable copy (tests that corrupt a checkpoint must not touch the shared cached one)."""
    shutil.copytree(src, dst)
    return dst


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
