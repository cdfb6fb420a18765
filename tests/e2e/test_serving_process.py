"""`shardserve serve` as a process: SIGTERM drains; a DJLServing DeepSpeed artifact at tensor
parallel degree 2; a killed rank turns /ping to 500 without hanging any client."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import psutil
from live import ProcessServer, wait_until


def rank_processes(server_pid: int) -> list[psutil.Process]:
    """The engine's rank processes: the server's leaf descendants (spawned ranks are children,
    fork-server ranks grandchildren), less multiprocessing's resource tracker."""
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if not p.children() and "resource_tracker" not in " ".join(p.cmdline())]


def test_sigterm_drains_in_flight_requests_then_exits_0(artifacts, tmp_path):
    live = ProcessServer([f"handler={artifacts['handler']}", "--drain-timeout", "30"], tmp_path / "server.log").start()
    gate = tmp_path / "release"
    result = {}
    try:
        def in_flight():
            result["response"] = httpx.post(f"{live.url}/invocations", json={"action": "wait", "gate": str(gate)}, timeout=60)

        worker = threading.Thread(target=in_flight)
        worker.start()
        wait_until(lambda: 'shardserve_running_requests{model="handler"} 1.0' in httpx.get(f"{live.url}/metrics").text,
                   10, what="request running")
        live.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{live.url}/ping").status_code == 503, 10, what="draining")
        assert httpx.get(f"{live.url}/ping").json() == {"status": "Draining"}
        refused = httpx.post(f"{live.url}/invocations", json={"action": "echo"})
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert live.proc.poll() is None  # still serving the in-flight request
        gate.touch()
        worker.join(30)
        assert result["response"].status_code == 200
        assert result["response"].json() == {"released": True}
        assert live.proc.wait(20) == 0, live.log()
    finally:
        gate.touch()
        live.stop()


def test_deepspeed_artifact_at_degree_2_then_a_killed_rank(artifacts, server, tmp_path):
    live = ProcessServer([f"deepspeed={artifacts['deepspeed']}"], tmp_path / "server.log").start(ready_timeout=180)
    try:
        assert httpx.get(f"{live.url}/ping").status_code == 200, live.log()
        body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 8, "ignore_eos": True}}
        tp2 = httpx.post(f"{live.url}/invocations", json=body, timeout=60)
        tp1 = httpx.post(f"{server.url}/predictions/llama-t", json=body, timeout=60)
        assert tp2.status_code == 200
        assert tp2.json()["generated_text"] == tp1.json()["generated_text"]  # same weights, same greedy text

        ranks = rank_processes(live.proc.pid)
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        stream = {"inputs": "Hello", "parameters": {"max_new_tokens": 4000, "ignore_eos": True}, "stream": True}
        with httpx.stream("POST", f"{live.url}/invocations", json=stream, timeout=15) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))["token"]
            assert isinstance(first["id"], int) and isinstance(first["text"], str)  # generating before the kill
            ranks[-1].kill()
            events = [json.loads(line) for line in lines if line]  # ends: no hang (read timeout 15 s)
        assert "error" in events[-1] and "failed" in events[-1]["error"]
        wait_until(lambda: httpx.get(f"{live.url}/ping").status_code == 500, 10, what="ping 500")
        ping = httpx.get(f"{live.url}/ping").json()
        assert ping["models"]["deepspeed"]["status"] == "failed"
        after = httpx.post(f"{live.url}/invocations", json=body, timeout=10)
        assert after.status_code == 503 and "not available" in after.json()["error"]
    finally:
        live.stop()
