"""The sentinel protocol's kernels (parallel/sentinel_kernels.py) in Triton's interpreter, one
process playing one rank of 2 or 4. The peers' pushes are written into its buffer by hand before
each call (real peers write them over NVLink: tests/gpu/test_fast_all_reduce.py runs real ranks).

Checked at every call of a sequence that mixes both kernels, sizes and dtypes:
- the output has the bits of the float32 sum in rank order rounded to the dtype (and, fused, of
  the norm kernels after it);
- this rank's share lands in its own slot of the call's set in every peer's buffer, and nowhere
  else, with a negative zero sent as a positive one (the sentinel's bits are never sent), also
  where the fused kernel's rows are pushed in parts by several programs;
- this rank's own buffer holds nothing but the sentinel afterwards;
- the call is counted, so the two sets alternate.
bfloat16 is left to tests/gpu: the interpreter's bfloat16 rounding is not the GPU's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers.markers import needs_interpreter

SLOT_BYTES = 16 * 1024


class _Rank:
    """One rank's view of `world` symmetric buffers (its own and its peers'), its handle, state."""

    def __init__(self, world: int, rank: int):
        from shardserve.parallel.sentinel_kernels import SENTINEL_INT16, sentinel_buffer_bytes

        self.world, self.rank = world, rank
        self.buffers = [torch.empty(sentinel_buffer_bytes(SLOT_BYTES, world), dtype=torch.uint8) for _ in range(world)]
        for buffer in self.buffers:
            buffer.view(torch.int16).fill_(SENTINEL_INT16)
        pointers = torch.tensor([b.data_ptr() for b in self.buffers], dtype=torch.int64)
        self.handle = SimpleNamespace(buffer_ptrs_dev=pointers, rank=rank, world_size=world, keep=pointers)
        self.state = torch.zeros(2, dtype=torch.int32)

    def slots(self, owner: int, dtype: torch.dtype, call: int) -> torch.Tensor:
        """[world, slot elements]: the set call number `call` uses, in `owner`'s buffer."""
        elems = SLOT_BYTES // dtype.itemsize
        first = (call % 2) * self.world * elems
        return self.buffers[owner].view(dtype)[first: first + self.world * elems].view(self.world, elems)

    def all_sentinel(self, owner: int) -> bool:
        from shardserve.parallel.sentinel_kernels import SENTINEL_INT16

        return bool((self.buffers[owner].view(torch.int16) == SENTINEL_INT16).all())


def _as_sent(share: torch.Tensor) -> torch.Tensor:
    """A share as a rank sends it: any cell with the sentinel's bits becomes +0."""
    from shardserve.parallel.sentinel_kernels import cell_bits

    bits = share.view(torch.int16 if share.element_size() == 2 else torch.int32)
    return torch.where(bits == cell_bits(share.dtype)[1], 0, bits).view(share.dtype)


def _shares(world: int, shape: tuple, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    shares = [(2 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(world)]
    for share in shares:
        share.view(-1)[3] = -0.0  # sent as +0; the sum is the same
    if dtype == torch.float32:
        shares[0].view(-1).view(torch.int32)[5] = -0x7FFF8000  # a denormal with the sentinel's bits
    return shares


def _call(rank: _Rank, call: int, shares: list[torch.Tensor], kernel) -> tuple:
    """Peers' pushes into this rank's buffer, the kernel as this rank, and the checks every call
    shares. -> the kernel's result."""
    from shardserve.parallel.sentinel_kernels import SENTINEL_INT16

    sent = [_as_sent(s) for s in shares]
    n, dtype = shares[0].numel(), shares[0].dtype
    for peer in range(rank.world):
        if peer != rank.rank:
            rank.slots(rank.rank, dtype, call)[peer, :n] = sent[peer].flatten()
    result = kernel(shares[rank.rank])
    assert rank.all_sentinel(rank.rank), f"call {call}: cells left unclean in this rank's buffer"
    for peer in range(rank.world):
        if peer != rank.rank:
            got = rank.slots(peer, dtype, call)[rank.rank, :n]
            assert torch.equal(got.view(torch.uint8), sent[rank.rank].flatten().view(torch.uint8)), f"call {call}: push"
            got.view(torch.int16).fill_(SENTINEL_INT16)  # as the peer clears what it read
            assert rank.all_sentinel(peer), f"call {call}: this rank wrote outside its slot of peer {peer}"
    assert rank.state.tolist() == [call + 1, 0], f"call {call}: counted {rank.state.tolist()}"
    return result


def _rank_order_sum(shares: list[torch.Tensor]) -> torch.Tensor:
    total = _as_sent(shares[0]).float()
    for share in shares[1:]:
        total = total + _as_sent(share).float()
    return total.to(shares[0].dtype)


@needs_interpreter
@pytest.mark.timeout(60)  # a kernel polling the wrong cells spins for ever
@pytest.mark.parametrize("world,rank", [(2, 0), (2, 1), (4, 2)])
def test_sequence_of_sums_and_fused_norms(world, rank, monkeypatch):
    pytest.importorskip("triton")
    from shardserve.parallel import sentinel_kernels

    # Rows of 96 pushed in parts of 32 (float16) or 16 (float32) by programs of their own.
    monkeypatch.setattr(sentinel_kernels, "NORM_PART_BYTES", 64)
    from shardserve.kernels.layer_norm import fused_add_layer_norm
    from shardserve.kernels.rms_norm import rms_norm
    from shardserve.layers.norm import LayerNorm, RMSNorm
    from shardserve.parallel.sentinel_kernels import sentinel_add_norm, sentinel_all_reduce

    me = _Rank(world, rank)
    gen = torch.Generator().manual_seed(world * 10 + rank)
    ln, rms = LayerNorm(96, 1e-5), RMSNorm(96, 1e-6)
    for p in (*ln.parameters(), *rms.parameters()):
        p.data = 1 + 0.3 * torch.randn(96, generator=gen)
    # Sizes change from call to call: a cell left unclean by a larger call would show in a later one.
    cases = [("sum", (1500,), torch.float16), ("layer", (3, 96), torch.float16), ("sum", (7,), torch.float32),
             ("rms", (2, 96), torch.float32), ("sum", (4000,), torch.float32), ("sum", (700,), torch.float16)]
    for call, (kind, shape, dtype) in enumerate(cases):
        shares = _shares(world, shape, dtype, gen)
        reduced = _rank_order_sum(shares)
        if kind == "sum":
            got = _call(me, call, shares, lambda x: sentinel_all_reduce(x, me.handle, me.state, SLOT_BYTES))
            assert torch.equal(got, reduced), f"call {call}: sum"
            continue
        norm = ln if kind == "layer" else rms
        weight, bias = norm.weight.data.to(dtype), None if kind == "rms" else norm.bias.data.to(dtype)
        residual = (torch.randn(shape, generator=gen) + 1).to(dtype) if kind == "layer" else None
        out, stream = _call(me, call, shares, lambda x, w=weight, b=bias, r=residual, e=norm.eps: sentinel_add_norm(
            x, r, w, b, e, me.handle, me.state, SLOT_BYTES))
        if kind == "layer":
            want_out, want_stream = fused_add_layer_norm(reduced, residual, weight, bias, norm.eps)
        else:
            want_out, want_stream = rms_norm(reduced, weight, norm.eps), reduced
        assert torch.equal(stream, want_stream) and torch.equal(out, want_out), f"call {call}: {kind} norm"


def test_an_unknown_protocol_is_an_error_not_a_fallback_to_nccl():
    from shardserve.parallel.fast_all_reduce import create_fast_all_reduce

    with pytest.raises(ValueError, match="all_reduce_protocol must be one of sentinel, barrier; got 'lamport'"):
        create_fast_all_reduce(None, torch.device("cpu"), 2, protocol="lamport")
