"""shardserve: tensor-parallel large-model inference and a DJLServing-compatible model server."""

from shardserve.config import EngineConfig
from shardserve.engine.request import FinishReason, OutputKind, RequestOutput
from shardserve.engine.sampling_params import SamplingParams

__all__ = ["LLM", "AsyncEngine", "EngineConfig", "SamplingParams", "RequestOutput", "FinishReason", "OutputKind"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the package for its configs must not build the engine stack.
    if name == "LLM":
        from shardserve.engine.llm import LLM

        return LLM
    if name == "AsyncEngine":
        from shardserve.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
