"""weights/fast_read: the chunked, overlapped reader gives exactly what safetensors gives, with
tensors straddling chunk boundaries, block hashes checked, dtypes converted, damage refused.
On the CPU the copies are synchronous; the chunk/byte bookkeeping is the same as on a GPU."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from shardserve.errors import ModelLoadError
from shardserve.weights.fast_read import LoadStats, read_rank_file
from shardserve.weights.manifest import file_digests

gen = torch.Generator().manual_seed(0)


def _tensors() -> dict[str, torch.Tensor]:
    """Odd sizes and every dtype a rank file holds; no zeros (a missed copy must show)."""
    def rnd(*shape):
        return torch.randn(*shape, generator=gen).add_(3.0)

    q = torch.randint(1, 127, (300, 129), generator=gen, dtype=torch.int8)
    return {
        "big.weight": rnd(700, 1001),  # ~2.8 MB: spans several 1 MiB chunks
        "a.weight": rnd(37, 13).half(),
        "b.weight": rnd(5, 77).bfloat16(),
        "q.weight": q,
        "q.weight_scale": rnd(300),
        "f8.weight": rnd(64, 33).to(torch.float8_e4m3fn),
        "tiny": rnd(1),
    }


@pytest.fixture(scope="module")
def rank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast-read") / "rank-00000-of-00001.safetensors"
    save_file(_tensors(), str(path))
    return path


def _empty_like_file(path, dtypes: dict | None = None) -> dict[str, torch.Tensor]:
    # Parameters pre-filled with NaN / -1 so that any byte not copied is visible.
    params = {}
    for name, t in load_file(str(path)).items():
        dtype = (dtypes or {}).get(name, t.dtype)
        params[name] = torch.full(t.shape, -1 if not dtype.is_floating_point else float("nan"), dtype=dtype) \
            if dtype != torch.float8_e4m3fn else torch.full(t.shape, 7, dtype=torch.uint8).view(dtype)
    return params


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                                              b.view(torch.uint8) if b.element_size() == 1 else b)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize(("chunk", "block"), [(1 << 20, None), (3 * 4096, 4096), (64 << 20, 1 << 16)])
def test_equals_safetensors(rank_file, chunk, block, direct):
    want = load_file(str(rank_file))
    params = _empty_like_file(rank_file)
    hashes = file_digests(rank_file, block)[1] if block else None
    stats = read_rank_file(rank_file, params, chunk_bytes=chunk, threads=3, block_sha256=hashes, block_bytes=block,
                           direct=direct)
    assert all(_same(params[n], want[n]) for n in want)
    assert stats.bytes_read == rank_file.stat().st_size and stats.as_dict()["read_s"] >= 0
    assert rank_file.stat().st_size % 4096  # the last read ends mid-page: O_DIRECT's short read


def test_direct_io_is_used_where_the_file_system_allows_it(rank_file):
    import os

    try:
        os.close(os.open(rank_file, os.O_RDONLY | os.O_DIRECT))
        allowed = True
    except OSError:  # e.g. tmpfs: the buffered fallback is what the test above ran
        allowed = False
    assert read_rank_file(rank_file, _empty_like_file(rank_file), chunk_bytes=1 << 20, direct=True).direct_io == allowed
    assert not read_rank_file(rank_file, _empty_like_file(rank_file), chunk_bytes=1 << 20).direct_io


def test_converts_half_precision_into_float32_parameters(rank_file):
    want = load_file(str(rank_file))
    params = _empty_like_file(rank_file, {"a.weight": torch.float32, "b.weight": torch.float32})
    read_rank_file(rank_file, params, chunk_bytes=1 << 20, stats=LoadStats())
    assert torch.equal(params["a.weight"], want["a.weight"].float())
    assert torch.equal(params["b.weight"], want["b.weight"].float())


def test_refuses_8bit_into_float_parameters(rank_file):
    params = _empty_like_file(rank_file, {"q.weight": torch.float32})
    with pytest.raises(ModelLoadError, match=r"'q.weight' is torch.int8 .* quantization it was partitioned with"):
        read_rank_file(rank_file, params)


def test_damaged_block_and_truncated_file_are_refused(rank_file, tmp_path):
    data = bytearray(rank_file.read_bytes())
    hashes = file_digests(rank_file, 4096)[1]
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"damaged.safetensors: sha256 of bytes \d+\.\.\d+ differs"):
        read_rank_file(damaged, _empty_like_file(rank_file), chunk_bytes=8 * 4096, block_sha256=hashes, block_bytes=4096)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(rank_file.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_rank_file(truncated, _empty_like_file(rank_file))


def test_missing_and_unexpected_tensors_are_named(rank_file):
    params = _empty_like_file(rank_file)
    params["extra.weight"] = params.pop("tiny")
    with pytest.raises(ModelLoadError, match=r"missing tensor\(s\) \['extra.weight'\]"):
        read_rank_file(rank_file, params)
