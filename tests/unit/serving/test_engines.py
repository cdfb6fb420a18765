"""Engine choice, copies per host, and request balancing over copies."""

from __future__ import annotations

import asyncio
import json

import pytest

from shardserve.engine.request import RequestOutput
from shardserve.errors import EngineDeadError
from shardserve.serving.engines import ACCELERATE, TP, ReplicaSet, copy_devices, generation_engine
from shardserve.serving.properties import build_config


def test_copy_devices_split_gpus_by_degree():
    assert copy_devices(2, 8) == [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3"), ("cuda:4", "cuda:5"), ("cuda:6", "cuda:7")]
    assert copy_devices(8, 8) == [tuple(f"cuda:{i}" for i in range(8))]
    assert copy_devices(3, 8) == [("cuda:0", "cuda:1", "cuda:2"), ("cuda:3", "cuda:4", "cuda:5")]
    assert copy_devices(1, 4, max_workers=2) == [("cuda:0",), ("cuda:1",)]
    assert copy_devices(1, 0) == [None]
    assert copy_devices(2, 0, min_workers=2) == [None, None]
    with pytest.raises(ValueError, match="tensor_parallel_degree is 4"):
        copy_devices(4, 2)
    with pytest.raises(ValueError, match="minWorkers"):
        copy_devices(2, 4, min_workers=3)


def _arch_dir(tmp_path, arch):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    return tmp_path


@pytest.mark.parametrize(("engine", "arch", "expected"), [
    ("DeepSpeed", "LlamaForCausalLM", TP), ("MPI", "OPTForCausalLM", TP), (None, "BloomForCausalLM", TP),
    ("Accelerate", "LlamaForCausalLM", ACCELERATE), ("DeepSpeed", "GPT2LMHeadModel", ACCELERATE),
    (None, "GPT2LMHeadModel", ACCELERATE),
])
def test_generation_engine(tmp_path, engine, arch, expected):
    values = {"engine": engine} if engine else {}
    config = build_config("m", tmp_path, values, {})
    assert generation_engine(config, _arch_dir(tmp_path, arch)) == expected


class FakeEngine:
    """Finishes a request when the test releases it, so requests stay in flight."""

    def __init__(self):
        self.errored = False
        self.tokenizer = None
        self.max_model_len = 100
        self.release = asyncio.Event()
        self.seen: list[str] = []

    async def generate(self, prompt, params, request_id, output_kind=None):
        self.seen.append(request_id)
        await self.release.wait()
        yield RequestOutput(request_id, prompt, [1], "x", [5], "x", [5], True)

    def stats(self):
        return {"num_running": len(self.seen), "num_waiting": 0, "kv_cache_usage": 0.5}

    def shutdown(self):
        pass


async def _start_many(replicas, n):
    async def one(i):
        return [o async for o in replicas.generate("p", None, f"r{i}")]

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.01)
    return tasks


def test_requests_go_to_the_copy_with_fewest_in_flight():
    async def run():
        a, b = FakeEngine(), FakeEngine()
        replicas = ReplicaSet([a, b])
        tasks = await _start_many(replicas, 4)
        assert (len(a.seen), len(b.seen)) == (2, 2) and replicas.inflight == [2, 2]
        a.release.set()  # a's requests finish: the next two both go to a
        await asyncio.gather(*tasks[0::2])
        more = [asyncio.create_task(_drain_one(replicas, f"x{i}")) for i in range(2)]
        await asyncio.sleep(0.01)
        assert (len(a.seen), len(b.seen)) == (4, 2)
        b.release.set()
        await asyncio.gather(*tasks, *more)
        assert replicas.inflight == [0, 0] and replicas.served == [4, 2]
        assert replicas.stats()["kv_cache_usage"] == 0.5

    asyncio.run(run())


async def _drain_one(replicas, rid):
    return [o async for o in replicas.generate("p", None, rid)]


def test_a_dead_copy_is_skipped_and_reported():
    async def run():
        a, b = FakeEngine(), FakeEngine()
        replicas = ReplicaSet([a, b])
        a.errored = True
        assert replicas.errored  # /ping: every copy must be healthy
        assert [replicas.pick() for _ in range(3)] == [1, 1, 1]
        b.errored = True
        with pytest.raises(EngineDeadError):
            replicas.pick()

    asyncio.run(run())
