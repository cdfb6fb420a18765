"""`shardserve bench` and `bench serve` refuse bad flags up front: one line naming the flag, exit
code 2, before any benchmark work (run_bench / the reference run is never reached)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shardserve.assets import default_model_path
from shardserve.bench import latency, load
from shardserve.bench.load import LoadConfig, RequestResult, format_report, summarize
from shardserve.cli import main


@pytest.fixture
def no_work(monkeypatch):
    """Any benchmark work fails the test: the flag must be refused before it."""
    def fail(*args, **kwargs):
        raise AssertionError("benchmark work started before the flags were checked")

    monkeypatch.setattr(latency, "run_bench", fail)
    monkeypatch.setattr(latency, "copy_bandwidth", fail)


def _bench(capsys, *flags: str) -> str:
    code = main(["bench", "--model", str(default_model_path()), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("shardserve bench: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flags, named", [
    (["--check-tokens", "-1"], "--check-tokens"),
    (["--new-tokens", "1"], "--new-tokens"),
    (["--engine-option", "foo=1"], "'foo'"),
    (["--engine-option", "enforce_eager.x=1"], "--engine-option"),
])
def test_bad_bench_flag_is_refused_before_work(no_work, capsys, flags, named):
    assert named in _bench(capsys, *flags)


@pytest.mark.parametrize("option, named", [
    ("block_size=0", "block_size must be an integer >= 1"),  # once failed after the reference run
    ("attention_backend=fast", "attention_backend must be"),
    ("max_num_seqs=1.5", "max_num_seqs must be an integer"),
    ("tensor_parallel_size=2", "--tp"),  # once ran TP2 while the report said tp=1
    ("model=/elsewhere", "--model"),
    ("dtype=fp32", "--dtype"),
])
def test_bench_engine_option_values_are_checked_before_work(no_work, capsys, option, named):
    line = _bench(capsys, "--engine-option", option)
    assert line.startswith("shardserve bench: error: --engine-option") and named in line, line


def test_bench_tp_beyond_the_gpus_is_refused_before_work(no_work, capsys, monkeypatch):
    """Both engines would have failed only when loading onto a GPU that does not exist."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _bench(capsys, "--tp", "4") == "shardserve bench: error: --tp 4 needs 4 GPUs, this host has 2\n"


def test_unusable_out_dir_is_refused_before_work(no_work, capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    assert "--out" in _bench(capsys, "--out", str(tmp_path / "afile" / "sub"))


def test_writable_out_dir_is_not_created_by_the_check(no_work, tmp_path):
    from shardserve.bench.commands import check_out_dir

    check_out_dir(tmp_path / "new" / "dir", "--out")
    assert not (tmp_path / "new").exists()


def test_prompt_longer_than_the_model_is_refused_before_work(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise AssertionError("benchmark work started before the length check")

    monkeypatch.setattr(latency, "copy_bandwidth", fail)
    assert "--prompt-len" in _bench(capsys, "--prompt-len", "100000", "--engines", "tp")


@pytest.mark.parametrize("flags, named", [
    (["--url", "notaurl"], "--url"),
    (["--url", "ftp://127.0.0.1:8080"], "--url"),
    (["--url", "http://127.0.0.1:99999"], "--url"),
    (["--url", "http://127.0.0.1:1", "--ttft-slo-ms", "-1"], "--ttft-slo-ms"),
    (["--url", "http://127.0.0.1:1", "--tpot-slo-ms", "nan"], "--tpot-slo-ms"),
])
def test_bad_load_flag_is_refused(capsys, flags, named):
    assert main(["bench", "serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardserve bench: error: ") and err.count("\n") == 1, err
    assert named in err


def test_unreachable_server_is_one_line_naming_the_url(capsys):
    assert main(["bench", "serve", "--url", "http://127.0.0.1:1", "--requests", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardserve bench: error: --url http://127.0.0.1:1"), err
    assert err.count("\n") == 1, err


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (the OS picks a free one; closing frees it): connection
    refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model_flags", [[], ["--model", "m"]])
def test_unreachable_server_is_refused_before_the_load(monkeypatch, capsys, closed_port, model_flags):
    """--model skips the model list, which used to be what found the server unreachable: the run
    then sent every request, each failed, and it ended with exit 1 instead of this one line."""
    sent = []
    one = load._one

    async def counted(*args, **kwargs):
        sent.append(1)
        return await one(*args, **kwargs)

    monkeypatch.setattr(load, "_one", counted)
    url = f"http://127.0.0.1:{closed_port}"
    code = main(["bench", "serve", "--url", url, *model_flags, "--requests", "2", "--concurrency", "1"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith(f"shardserve bench: error: --url {url}: ConnectError"), err
    assert err.count("\n") == 1 and not sent, err


class FakeServer:
    """What the fake OpenAI server answers: GET (the model list) with `get_status`, POST (a
    completion) with the SSE `stream` body."""

    def __init__(self):
        self.url = ""
        self.get_status = 404
        self.stream = (b'data: {"choices": [{"text": "hi"}], "usage": {"completion_tokens": 1}}\n\n'
                       b"data: [DONE]\n\n")


@pytest.fixture
def fake_server():
    answers = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(answers.get_status)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(answers.stream)))
            self.end_headers()
            self.wfile.write(answers.stream)

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answers.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("probe_status", [401, 404, 500, 503])
def test_server_answering_the_probe_with_an_error_is_reachable(fake_server, capsys, probe_status):
    """Any HTTP answer means the server is there: the load runs (and here succeeds)."""
    fake_server.get_status = probe_status
    code = main(["bench", "serve", "--url", fake_server.url, "--model", "m", "--requests", "2", "--concurrency", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and "2 requests (0 failed)" in out, out + err


def test_an_error_event_mid_stream_fails_the_request(fake_server, capsys):
    """The status line (200) went out before the server failed: its error event is the failure."""
    fake_server.stream = (b'data: {"choices": [{"text": "hi"}]}\n\n'
                          b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
    code = main(["bench", "serve", "--url", fake_server.url, "--model", "m", "--requests", "2", "--concurrency", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "2 requests (2 failed)" in out and "engine died" in out, out + err


def test_without_usage_the_chunks_with_text_count_as_tokens(fake_server, capsys):
    """A server that ignores stream_options sends no usage: output tokens are not 0 (which made
    TPOT 0 and every request meet any TPOT limit)."""
    fake_server.stream = b"".join(b'data: {"choices": [{"text": "t"}]}\n\n' for _ in range(5)) + b"data: [DONE]\n\n"
    code = main(["bench", "serve", "--url", fake_server.url, "--model", "m", "--requests", "2", "--concurrency", "1",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    report = json.loads(out)
    assert report["output_tokens_per_s"] == pytest.approx(10 / report["duration_s"])


def test_tpot_mean_leaves_out_one_token_requests():
    results = [RequestResult(ok=True, ttft_s=0.1, e2e_s=0.5, output_tokens=5),
               RequestResult(ok=True, ttft_s=0.1, e2e_s=0.1, output_tokens=1)]
    assert summarize(results, 1.0, LoadConfig(url="http://x"), "m")["tpot_mean_s"] == pytest.approx(0.1)


def test_all_failed_report_is_valid_json_with_nulls():
    results = [RequestResult(ok=False, error="HTTP 500: b''")] * 3
    report = summarize(results, 1.0, LoadConfig(url="http://x", ttft_slo_s=0.1), "m")
    text = json.dumps(report, allow_nan=False)  # NaN would raise here
    assert json.loads(text)["ttft_p50_s"] is None and report["tpot_mean_s"] is None
    assert "P50 -" in format_report(report)
