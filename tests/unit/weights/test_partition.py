"""shardserve partition -> pre-sharded load round trip, damage detection, degree mismatch."""

import json
import re

import pytest
import torch

from shardserve import LLM, SamplingParams
from shardserve.cli import main as cli_main
from shardserve.errors import ModelLoadError
from shardserve.weights.manifest import MANIFEST

PROMPTS = ["The quick brown fox", "Hi there"]
GREEDY = SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def partitioned(tiny_checkpoint, tmp_path_factory):
    src = tiny_checkpoint("llama")
    out = tmp_path_factory.mktemp("presharded") / "tp2"
    assert cli_main(["partition", "--model", str(src), "--tp", "2", "--out", str(out)]) == 0
    return src, out


def test_manifest_describes_every_rank_file(partitioned):
    _, out = partitioned
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tp_size"] == 2 and manifest["architecture"] == "LlamaForCausalLM"
    assert [f["name"] for f in manifest["files"]] == ["rank-00000-of-00002.safetensors", "rank-00001-of-00002.safetensors"]
    for f in manifest["files"]:
        assert (out / f["name"]).stat().st_size == f["bytes"] and len(f["sha256"]) == 64
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def _tp2_greedy(model_dir) -> list[list[int]]:
    with LLM(str(model_dir), dtype="fp32", tensor_parallel_size=2) as llm:
        return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_presharded_load_equals_direct_load(partitioned):
    src, out = partitioned
    assert _tp2_greedy(out) == _tp2_greedy(src)


def test_flipped_byte_is_refused_naming_the_file(partitioned, tmp_path):
    """By the rank that reads it, and by the engine, which raises the rank's error itself."""
    import shutil

    _, out = partitioned
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    rank1 = damaged / "rank-00001-of-00002.safetensors"
    data = bytearray(rank1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rank1.write_bytes(bytes(data))
    from shardserve.models import load_model
    from shardserve.models.config import ModelConfig
    from shardserve.parallel import ParallelInfo, set_parallel_info

    set_parallel_info(ParallelInfo(rank=1, world_size=2))
    try:
        with pytest.raises(ModelLoadError, match="rank-00001-of-00002.safetensors.*sha256"):
            load_model(ModelConfig.from_hf(damaged), damaged, torch.float32, "cpu")
    finally:
        set_parallel_info(ParallelInfo())
    with pytest.raises(ModelLoadError, match="^rank 1: .*rank-00001-of-00002.safetensors.*sha256") as caught:
        LLM(str(damaged), dtype="fp32", tensor_parallel_size=2)
    assert "Traceback" not in str(caught.value)


def test_other_degree_is_a_clear_error(partitioned):
    """Refused by the engine itself before it starts any rank (no rank's traceback)."""
    _, out = partitioned
    for degree in (1, 4):  # a rank's error would start "rank N: "
        with pytest.raises(ModelLoadError, match=f"^{re.escape(str(out))} was partitioned for "
                                                 f"tensor_parallel_degree=2.*runs {degree}"):
            LLM(str(out), dtype="fp32", tensor_parallel_size=degree)


def test_partition_refuses_non_empty_output(partitioned, capsys):
    src, out = partitioned
    assert cli_main(["partition", "--model", str(src), "--tp", "2", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_bloom_presharded_load_equals_direct_load(tiny_checkpoint, tmp_path):
    """BLOOM's ranks keep their query_key_value rows reordered ([3, heads, head_dim]); the rank
    files hold them so, and are read back without reordering them again."""
    src, out = tiny_checkpoint("bloom"), tmp_path / "bloom-tp2"
    assert cli_main(["partition", "--model", str(src), "--tp", "2", "--out", str(out)]) == 0
    assert _tp2_greedy(out) == _tp2_greedy(src)


def test_older_format_version_is_refused_with_the_remedy(partitioned, tmp_path):
    import shutil

    _, out = partitioned
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["format_version"] = 1
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(old / MANIFEST))}: .*version 1 is not "
                                             ".*version 2: write it again with `shardserve partition`"):
        LLM(str(old), dtype="fp32", tensor_parallel_size=2)


def test_partition_onto_a_file_is_a_clear_error(partitioned, tmp_path, capsys):
    src, _ = partitioned
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert cli_main(["partition", "--model", str(src), "--tp", "2", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


def test_a_failed_partition_leaves_its_output_as_it_found_it(partitioned, tmp_path, capsys):
    """A degree the model cannot take fails after the output directory was made: none is left
    behind (a new one is removed, an empty one stays empty)."""
    src, _ = partitioned
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        assert cli_main(["partition", "--model", str(src), "--tp", "3", "--out", str(out)]) == 2
    assert "must divide one another" in capsys.readouterr().err
    assert not new.exists() and empty.is_dir() and not any(empty.iterdir())


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("tp_size"), "tp_size must be an integer >= 1, got None"),
    (lambda m: m.update(files=m["files"][:1]), r"files must list 2 rank files \(tp_size\), got 1"),
    (lambda m: m["files"][1].pop("sha256"), r"files\[1\] must have a name, bytes and sha256"),
], ids=["no tp_size", "a rank file short", "an entry without sha256"])
def test_a_manifest_missing_entries_is_refused_naming_it(partitioned, tmp_path, damage, message):
    import shutil

    _, out = partitioned
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    damage(manifest)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(broken / MANIFEST))}: {message}"):
        LLM(str(broken), dtype="fp32", tensor_parallel_size=2)
