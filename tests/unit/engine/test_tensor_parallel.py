"""The tensor-parallel engine (spawned ranks, gloo on CPU) against one rank."""

import json
import os
import subprocess
import sys
import time

import pytest

from shardserve import LLM, SamplingParams
from shardserve.engine.worker import free_port, wait_for_peers_to_leave
from shardserve.errors import EngineDeadError

PROMPTS = ["The quick brown fox", "Once upon a time there was", "Hi"]
GREEDY = SamplingParams(max_new_tokens=16, min_new_tokens=16, temperature=0.0)


def one_rank_tokens(path):
    with LLM(str(path), dtype="fp32") as llm:
        return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize(
    "arch, tp, overrides",
    [
        ("llama", 2, {}),
        ("llama", 4, {}),  # 2 kv heads < 4 ranks: kv heads replicated
        ("bloom", 2, {}),
        ("opt", 2, {"vocab_size": 515}),  # vocab not divisible by tp
    ],
)
def test_greedy_tokens_equal_one_rank(arch, tp, overrides, tiny_checkpoint):
    path = tiny_checkpoint(arch, **overrides)
    expected = one_rank_tokens(path)
    with LLM(str(path), dtype="fp32", tensor_parallel_size=tp) as llm:
        assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


def test_async_steps_with_repetition_penalties_on_two_ranks_equal_one_rank(tiny_checkpoint):
    """Asynchronous steps: every rank samples, filling placeholders and the token in flight that
    a penalty counts from its own tokens; they must agree with one synchronous rank."""
    path = str(tiny_checkpoint("llama"))
    params = [SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=p) for p in (1.3, 1.0, 0.5)]
    with LLM(path, dtype="fp32") as llm:
        expected = [o.token_ids for o in llm.generate(PROMPTS, params)]
    with LLM(path, dtype="fp32", tensor_parallel_size=2, async_scheduling=True) as llm:
        assert [o.token_ids for o in llm.generate(PROMPTS, params)] == expected


def test_killed_rank_fails_fast_and_leaves_no_process(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=2)
    procs = list(llm.executor.procs)
    llm.add_request("r", "a long story", SamplingParams(max_new_tokens=200, ignore_eos=True))
    llm.step()
    procs[1].kill()
    started = time.monotonic()
    with pytest.raises(EngineDeadError, match="rank 1"):
        for _ in range(200):
            llm.step()
    assert time.monotonic() - started < 30
    time.sleep(0.5)
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(EngineDeadError):
        llm.step()


def test_a_killed_rank_is_blamed_not_the_peer_whose_collective_it_broke(tiny_checkpoint, monkeypatch):
    """On a busy host rank 0's error (its all-reduce lost its peer) and rank 1's death are both
    waiting when the engine looks: the error names the rank that died."""
    import signal
    import threading

    import shardserve.engine.multiproc_executor as executor_module

    llm = LLM(str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=2)
    llm.add_request("r", "a long story", SamplingParams(max_new_tokens=200, ignore_eos=True))
    llm.step()
    pid = llm.executor.procs[1].pid
    os.kill(pid, signal.SIGSTOP)  # rank 1 stops; rank 0 will wait for it in the next step
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    real_wait = executor_module.wait

    def slow_wait(objects, timeout=None):  # the engine process, slow to look (a busy host)
        time.sleep(1.0)
        return real_wait(objects, timeout)

    monkeypatch.setattr(executor_module, "wait", slow_wait)
    with pytest.raises(EngineDeadError, match=r"^rank 1 exited unexpectedly \(exit code -9\)"):
        llm.step()


def test_engines_shut_down_hold_no_handles(tiny_checkpoint):
    """A shut-down engine's executor is freed with its rank pipes: a process that loads models
    again and again keeps its file descriptor count flat."""
    import gc
    import weakref

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    model = str(tiny_checkpoint("llama"))
    with LLM(model, dtype="fp32", tensor_parallel_size=2) as llm:
        executor = weakref.ref(llm.executor)
    del llm
    gc.collect()
    assert executor() is None
    before = open_fds()
    for _ in range(3):
        with LLM(model, dtype="fp32", tensor_parallel_size=2):
            pass
    gc.collect()
    assert open_fds() < before + 4  # 4 more a cycle when the pipes leaked


def _kv_blocks_worker(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from shardserve.engine.kv_budget import min_over_ranks
    from shardserve.parallel import ParallelInfo, set_parallel_info

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    set_parallel_info(ParallelInfo(rank=rank, world_size=2, group=dist.group.WORLD))
    results[rank] = min_over_ranks(4096 if rank == 0 else 1024, torch.device("cpu"))  # rank 1: less room
    dist.destroy_process_group()


def test_every_rank_allocates_what_the_fullest_rank_holds():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_kv_blocks_worker, args=(free_port(), results), nprocs=2)
        assert dict(results) == {0: 1024, 1: 1024}


def test_degree_that_does_not_fit_the_heads_is_the_ranks_own_error(tiny_checkpoint):
    """A rank's ValueError while the ranks start reaches the caller as itself, message only."""
    with pytest.raises(ValueError, match=r"^rank \d: num_key_value_heads \(2\) and tensor_parallel_size \(3\) must divide") as caught:
        LLM(str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=3)
    assert "Traceback" not in str(caught.value)


# A user's script at TP2, the engine at module level (no main guard); rank 0 prints the tokens.
_TP2_SCRIPT = """
import json, sys
from shardserve import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="fp32", tensor_parallel_size=2)
outs = llm.generate({prompts!r}, SamplingParams(max_new_tokens=16, min_new_tokens=16, temperature=0.0))
print("RESULT" + json.dumps([o.token_ids for o in outs]))
llm.shutdown()
"""


def test_two_hosts_via_launcher_env_equal_one_rank(tiny_checkpoint, tmp_path):
    """Ranks started like torchrun/mpirun would on two hosts (here both on loopback)."""
    path = tiny_checkpoint("llama")
    script = tmp_path / "launched.py"
    script.write_text(_TP2_SCRIPT.format(prompts=PROMPTS))
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    result = [line for line in outputs[0][0].splitlines() if line.startswith("RESULT")]
    assert json.loads(result[0][len("RESULT"):]) == one_rank_tokens(path)
    assert "RESULT" not in outputs[1][0]  # rank 1 only served


def test_script_without_a_main_guard_starts_its_ranks_once(tiny_checkpoint, tmp_path):
    """The README's Python example as a script: the engine created at module level. The ranks
    must not re-run the script (multiprocessing's default), which would start ranks from ranks."""
    path = tiny_checkpoint("llama")
    script = tmp_path / "unguarded.py"
    script.write_text(_TP2_SCRIPT.format(prompts=PROMPTS))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, str(script), str(path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert len(result) == 1 and json.loads(result[0][len("RESULT"):]) == one_rank_tokens(path)


def test_rank_lost_while_idle_marks_the_async_engine_errored(tiny_checkpoint):
    from shardserve import AsyncEngine, EngineConfig

    engine = AsyncEngine(EngineConfig(model=str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=2))
    try:
        procs = list(engine.llm.executor.procs)
        assert not engine.errored
        procs[1].kill()
        deadline = time.monotonic() + 10
        while not engine.errored and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.errored
        assert isinstance(engine._dead, EngineDeadError) and "rank 1" in str(engine._dead)
        time.sleep(0.5)
        assert not any(p.is_alive() for p in procs)
    finally:
        engine.shutdown()


def test_spawned_ranks_rendezvous_in_a_store_the_engine_hosts(tiny_checkpoint):
    """The store outlives every rank (a rank's NCCL heartbeat thread polls it until the rank's
    process ends): the ranks report leaving to it, exit cleanly, and it still answers after."""
    llm = LLM(str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=2)
    store, procs = llm.executor.store, list(llm.executor.procs)
    store.set("probe", "engine")
    llm.shutdown()
    assert [p.exitcode for p in procs] == [0, 0]
    assert any(key.endswith("shardserve/left/1") for key in store.list_keys())  # under the group's prefix
    assert store.get("probe") == b"engine"


def test_rank0_leaves_after_every_other_rank_or_its_timeout(caplog):
    import torch.distributed as dist

    store = dist.HashStore()
    for rank in (1, 2):
        wait_for_peers_to_leave(store, rank, 4)
    start = time.monotonic()
    wait_for_peers_to_leave(store, 0, 4, timeout_s=0.3)  # rank 3 never reports
    assert time.monotonic() - start >= 0.3 and "not every rank" in caplog.text
    wait_for_peers_to_leave(store, 3, 4)
    caplog.clear()
    wait_for_peers_to_leave(store, 0, 4, timeout_s=30)  # all reported: returns at once
    assert time.monotonic() - start < 10 and not caplog.text
