"""Load and lifecycle on the shared server: bounded queue, predict timeout, client disconnects,
several engine copies, /ping phases during a slow load, management registration."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
from artifacts import write_artifact
from live import wait_until

# Several seconds of decoding on llama-t (4096 positions) however fast the engine gets on a CPU.
LONG = {"max_new_tokens": 4000, "ignore_eos": True}


def read_gauge(metrics_text: str, name: str, model: str) -> float:
    return float(re.search(rf'^{name}{{model="{model}"}} (\S+)$', metrics_text, re.M).group(1))


def gauge(client, name: str, model: str) -> float:
    return read_gauge(client.get("/metrics").text, name, model)


def record_aborts(server, monkeypatch) -> list:
    """What llama-t's engine copies abort from now on: LLM.abort's outputs (None where the
    request had already finished). An abort seen there, not a deadline, shows the disconnect
    stopped the request, so the waits below can be generous for a loaded machine."""
    outputs = []
    for engine in server.store.get("llama-t").engine.engines:
        def abort(request_id, real=engine.llm.abort):
            outputs.append(real(request_id))
            return outputs[-1]

        monkeypatch.setattr(engine.llm, "abort", abort)
    return outputs


def wait_for_abort(client, aborted: list) -> None:
    wait_until(lambda: any(out is not None for out in aborted)
               and gauge(client, "shardserve_running_requests", "llama-t") == 0, 10, what="abort on disconnect")


def test_queue_overflow_sends_exactly_the_excess_503s_then_recovers(server, tmp_path):
    """handler: 1 running + job_queue_size 2 queued; 6 at once -> 3 admitted, 3 refused."""
    gate = tmp_path / "release"

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            tasks = [asyncio.create_task(c.post("/predictions/handler", json={"action": "wait", "gate": str(gate)}))
                     for _ in range(6)]
            refused = []
            while len(refused) < 3:  # the refusals come back at once; the admitted ones hang
                done, _ = await asyncio.wait([t for t in tasks if t not in refused], timeout=10,
                                             return_when=asyncio.FIRST_COMPLETED)
                assert done, "expected immediate 503s"
                refused += list(done)
            assert not any(t.done() for t in tasks if t not in refused)
            gate.touch()
            return [t.result() for t in refused], await asyncio.gather(*[t for t in tasks if t not in refused])

    refused, admitted = asyncio.run(burst())
    assert [r.status_code for r in refused] == [503] * 3
    assert all(r.headers["retry-after"] == "1" and "job_queue_size" in r.json()["error"] for r in refused)
    assert [r.status_code for r in admitted] == [200] * 3
    assert all(r.json() == {"released": True} for r in admitted)
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/predictions/handler", json={"action": "echo"}).status_code == 200


def test_predict_timeout_is_504_and_aborts_the_request(client):
    started = time.monotonic()
    r = client.post("/predictions/llama-t", json={"inputs": "Hello", "parameters": LONG})
    assert r.status_code == 504, r.text
    assert "predict_timeout" in r.json()["error"]
    assert time.monotonic() - started < 5
    wait_until(lambda: gauge(client, "shardserve_running_requests", "llama-t") == 0, 3, what="abort")


def test_handler_predict_timeout_is_504(client, tmp_path):
    gate = tmp_path / "never-yet"
    r = client.post("/predictions/handler", json={"action": "wait", "gate": str(gate)})
    assert r.status_code == 504
    gate.touch()  # let the handler thread go; its queue slot is freed when it does
    wait_until(lambda: client.post("/predictions/handler", json={"action": "echo"}).status_code == 200, 10,
               what="handler free again")


def test_client_disconnect_aborts_the_request(server, client, monkeypatch):
    aborted = record_aborts(server, monkeypatch)
    body = {"inputs": "Once upon a time", "parameters": LONG, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as c, c.stream("POST", "/predictions/llama-t", json=body) as r:
        lines = r.iter_lines()
        assert next(lines)  # generation is running
        assert gauge(client, "shardserve_running_requests", "llama-t") == 1
    wait_for_abort(client, aborted)  # leaving the block closed the connection mid-stream
    assert gauge(client, "shardserve_kv_cache_usage_ratio", "llama-t") == 0  # its blocks are freed
    wait_until(lambda: server.store.get("llama-t").admission.inflight == 0, 10, what="queue slot back")


def test_a_streamed_openai_disconnect_aborts_every_choice_and_frees_their_queue_slots(server, client, monkeypatch):
    """The server cancels a dropped stream's body, and again at each await of its cleanup: the
    cleanup runs shielded, or its slots would stay taken until the model answers only 503s."""
    aborted = record_aborts(server, monkeypatch)
    body = {"model": "llama-t", "prompt": "Once upon a time", "n": 3, "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    for _ in range(2):
        with httpx.Client(base_url=server.url, timeout=30) as c, c.stream("POST", "/v1/completions", json=body) as r:
            assert next(r.iter_lines())  # generation is running
        wait_until(lambda: sum(out is not None for out in aborted) >= 3, 10, what="every choice aborted")
        wait_until(lambda: server.store.get("llama-t").admission.inflight == 0, 10, what="queue slots back")
        assert sum(out is not None for out in aborted) == 3  # the stream's choices, each once
        aborted.clear()


def test_non_streaming_client_disconnect_aborts_too(server, client, monkeypatch):
    aborted = record_aborts(server, monkeypatch)

    async def abandon():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            request = asyncio.create_task(c.post("/predictions/llama-t", json={"inputs": "Hi", "parameters": LONG}))
            for _ in range(100):
                if read_gauge((await c.get("/metrics")).text, "shardserve_running_requests", "llama-t") == 1:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the request never ran")
            request.cancel()  # the client gives up: its connection closes
            await asyncio.gather(request, return_exceptions=True)

    asyncio.run(abandon())
    wait_for_abort(client, aborted)


def test_requests_are_balanced_over_engine_copies(server):
    model = server.store.get("llama-t")
    assert len(model.engine.engines) == 2

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4}}
            return await asyncio.gather(*(c.post("/predictions/llama-t", json=body) for _ in range(4)))

    before = list(model.engine.served)
    assert [r.status_code for r in asyncio.run(burst())] == [200] * 4
    assert [after - b for after, b in zip(model.engine.served, before, strict=True)] == [2, 2]


def test_ping_reports_phases_during_a_slow_load(server, client, tmp_path):
    gate = tmp_path / "init-done"
    slow = write_artifact(tmp_path / "slow", {"option.init_gate": gate}, handler=True)
    r = client.post("/models", params={"url": str(slow), "model_name": "slow", "synchronous": "false"})
    assert r.status_code == 202
    try:
        wait_until(lambda: client.get("/ping").json()["models"]["slow"]["status"] == "loading", 10, what="loading")
        r = client.get("/ping")
        assert r.status_code == 503 and r.json()["status"] == "Loading"
        assert client.post("/predictions/slow", json={}).status_code == 503
        gate.touch()
        wait_until(lambda: client.get("/ping").status_code == 200, 10, what="ready")
        assert client.post("/predictions/slow", json={"action": "echo"}).status_code == 200
        assert client.get("/models/slow").json()[0]["status"] == "ready"
    finally:
        gate.touch()
        assert client.delete("/models/slow").status_code == 200
    assert client.get("/models/slow").status_code == 404


def test_register_a_bad_artifact_is_400_and_keeps_the_server_healthy(client, tmp_path):
    bad = write_artifact(tmp_path / "bad", {"engine": "Python", "option.tensor_parallel_degree": "lots"})
    r = client.post("/models", params={"url": str(bad), "model_name": "bad"})
    assert r.status_code == 400
    assert "option.tensor_parallel_degree" in r.json()["error"]
    assert client.get("/ping").status_code == 200
    assert "bad" not in [m["modelName"] for m in client.get("/models").json()["models"]]
    assert client.post("/models", params={"url": str(bad), "model_name": "llama"}).status_code == 409


def test_unregistering_a_model_fails_its_running_requests_at_once(client, long_llama_dir, tmp_path):
    """Requests still running when their model is deleted get a 503 now, not at their deadline."""
    artifact = write_artifact(tmp_path / "doomed", {"engine": "Python", "option.model_id": long_llama_dir,
                                                    "option.predict_timeout": 300})
    assert client.post("/models", params={"url": str(artifact), "model_name": "doomed"}).status_code == 200

    async def run() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as c:
            pending = asyncio.ensure_future(c.post("/predictions/doomed", json={"inputs": "Hello", "parameters": LONG}))
            await asyncio.sleep(1.0)  # running by now
            started = time.monotonic()
            assert (await c.delete("/models/doomed")).status_code == 200
            response = await pending
            return response, time.monotonic() - started

    response, waited = asyncio.run(run())
    assert response.status_code == 503 and "unregistered" in response.json()["error"]
    assert waited < 30
