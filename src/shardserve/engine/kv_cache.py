"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, prefix reuse.

The cache tensors themselves live on each rank (model_runner); this manager, on rank 0 only,
decides which block ids a sequence's tokens go to. A block that is full gets a content hash
chained over every token before it, so a later request whose prompt starts with the same tokens
reuses the block instead of recomputing it. Freed blocks keep their hash and stay reusable until
they are evicted, least recently freed first.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from shardserve.engine.request import Request


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and its content is known


def hash_block(parent: bytes | None, token_ids: list[int]) -> bytes:
    """Collision-resistant hash of a full block given the hash of everything before it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least 1 block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, least recently freed first (evicted first).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # content hash -> block id
        self._hashes: dict[str, list[bytes]] = {}  # request id -> hashes of its full blocks
        self._table_ids = itertools.count()  # Request.table_id

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, request: Request, max_tokens: int) -> list[int]:
        """Block ids holding the longest cached prefix of the request's first `max_tokens` tokens
        (the scheduler's limit: prompt_logprobs.cacheable_tokens).

        At least one token is always left to compute, since the model must produce logits for
        the last one; a fully cached prompt therefore reuses all but its last block.
        """
        if not self.enable_prefix_caching:
            return []
        # The scheduler asks at every step until the request is admitted: read block by block,
        # not a copy of the whole context each time.
        known = request.num_known_tokens
        end = min(max_tokens, known)
        hits: list[int] = []
        parent = None
        for start in range(0, end - self.block_size + 1, self.block_size):
            parent = hash_block(parent, request.token_slice(start, start + self.block_size))
            block_id = self._cached.get(parent)
            if block_id is None:
                break
            hits.append(block_id)
        if hits and len(hits) * self.block_size >= known:
            hits.pop()
        return hits

    def allocate(self, request: Request, num_new_tokens: int, cached: list[int] | None = None) -> bool:
        """Give the request blocks for `num_new_tokens` more tokens; False if there are too few.

        `cached` (from find_cached_prefix, only on admission) are shared, not copied.
        """
        cached = cached or []
        num_tokens = request.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_needed(num_tokens) - len(request.block_ids) - len(cached)
        # Reusing a free cached block takes it out of the free list too.
        reclaimed = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        if num_new_blocks + reclaimed > len(self._free):
            return False
        if not request.block_ids:  # a new table: a new id
            request.table_id = next(self._table_ids)
        for block_id in cached:
            self._touch(block_id)
        request.block_ids.extend(cached)
        for _ in range(max(num_new_blocks, 0)):
            request.block_ids.append(self._pop_free())
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks; tail blocks are evicted before shared prefixes."""
        for block_id in reversed(request.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self._free[block_id] = None
        request.block_ids = []
        self._hashes.pop(request.request_id, None)

    def cache_full_blocks(self, request: Request) -> None:
        """Register hashes of blocks the request has filled since the last call."""
        if not self.enable_prefix_caching:
            return
        hashes = self._hashes.setdefault(request.request_id, [])
        # Blocks of known tokens only (a token in flight is not known yet).
        num_full = min(request.num_computed_tokens, request.num_known_tokens) // self.block_size
        while len(hashes) < num_full:  # usually no new full block: nothing to do
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            digest = hash_block(parent, request.token_slice(i * self.block_size, (i + 1) * self.block_size))
            hashes.append(digest)
            block = self.blocks[request.block_ids[i]]
            if block.hash is None and digest not in self._cached:
                block.hash = digest
                self._cached[digest] = block.block_id

    def _touch(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _pop_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cached content
            del self._cached[block.hash]
            block.hash = None
        block.ref_count = 1
        return block_id
