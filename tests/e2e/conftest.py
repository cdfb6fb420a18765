"""One shared live server for most end-to-end tests (loading models is the expensive part).

Models of the shared server:
  llama    engine=Python, tiny Llama through option.model_id (tp engine)
  llama-t  engine=MPI, tiny Llama with 4096 positions (generations long enough to time out or
           be abandoned), 2 CPU copies (minWorkers), predict_timeout 1 s
  gpt2     engine=Accelerate, tiny GPT-2 (an architecture our engine lacks), dynamic batching
  handler  custom model.py importing djl_python, job_queue_size 2, predict_timeout 2 s
"""

from __future__ import annotations

import httpx
import pytest
from artifacts import write_artifact
from live import MAX_BODY_BYTES, ThreadServer

from shardserve.serving.settings import ServerSettings


@pytest.fixture(scope="session")
def llama_dir(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="session")
def long_llama_dir(tiny_checkpoint):
    return tiny_checkpoint("llama", max_position_embeddings=4096)


@pytest.fixture(scope="session")
def gpt2_dir(tiny_checkpoint):
    return tiny_checkpoint("gpt2")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, llama_dir, long_llama_dir, gpt2_dir):
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "llama": write_artifact(root / "llama", {
            "engine": "Python", "option.model_id": llama_dir, "option.max_rolling_batch_size": 8,
            "job_queue_size": 32,
        }),
        "llama-t": write_artifact(root / "llama-t", {
            "engine": "MPI", "option.model_id": long_llama_dir, "minWorkers": 2, "option.predict_timeout": 1,
        }),
        "gpt2": write_artifact(root / "gpt2", {
            "engine": "Accelerate", "option.model_id": gpt2_dir, "batch_size": 4, "max_batch_delay": 20,
        }),
        "handler": write_artifact(root / "handler", {
            "option.greeting": "hello from serving.properties", "job_queue_size": 2, "option.predict_timeout": 2,
        }, handler=True),
        "deepspeed": write_artifact(root / "deepspeed", {
            "engine": "DeepSpeed", "option.model_id": long_llama_dir, "option.tensor_parallel_degree": 2,
        }),
    }


@pytest.fixture(scope="session")
def server(artifacts):
    names = ("llama", "llama-t", "gpt2", "handler")
    settings = ServerSettings(models=tuple((n, str(artifacts[n])) for n in names), max_body_bytes=MAX_BODY_BYTES)
    live = ThreadServer(settings).start()
    yield live
    live.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
