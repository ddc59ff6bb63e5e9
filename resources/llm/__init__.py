"""The LLM engine: one interface (requests in, results out) over vLLM offline or HTTP endpoints."""

from resources.llm.engine import Engine, Generation, GenerationStats, LLMEngine, TransientGenerationError
from resources.llm.types import Completion, ModelRef, Request, Result, Sampling, request_key

__all__ = ["Completion", "Engine", "Generation", "GenerationStats", "LLMEngine", "ModelRef", "Request",
           "Result", "Sampling", "TransientGenerationError", "request_key"]
