"""The config catalog builds the real architectures (sizes checked on the meta device)."""

from __future__ import annotations

import pytest
import torch

from shardserve.models import create_model
from shardserve.models.config import ModelConfig
from shardserve.weights.catalog import CATALOG, catalog_config, write_config_dir

# Published parameter counts, in billions (embeddings included; tied heads counted once).
SIZES_B = {"opt-125m": 0.125, "opt-30b": 30.0, "opt-66b": 66.0, "bloom-560m": 0.56, "bloom": 176.2,
           "llama-3-8b": 8.03, "llama-3-70b": 70.6, "mistral-7b": 7.24, "qwen2-7b": 7.6}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_parses(name):
    config = ModelConfig.from_hf(catalog_config(name))
    assert config.num_heads % config.num_kv_heads == 0


@pytest.mark.parametrize("name,billions", sorted(SIZES_B.items()))
def test_parameter_counts_match_the_published_sizes(name, billions):
    model = create_model(ModelConfig.from_hf(catalog_config(name)), torch.float16)
    count = sum(p.numel() for p in model.parameters()) / 1e9
    assert count == pytest.approx(billions, rel=0.03)


def test_lookup_by_hub_name_and_unknown_name(tmp_path):
    assert catalog_config("facebook/OPT-30B")["hidden_size"] == 7168
    with pytest.raises(ValueError, match="catalog"):
        catalog_config("gpt-5")
    assert (write_config_dir("opt-125m", tmp_path / "m") / "config.json").is_file()
