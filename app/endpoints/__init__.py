"""Endpoint kinds: one module per route family, each telling the shared pipeline what differs."""

from app.endpoints.base import GenerationEndpoint
from app.endpoints.chat import ChatEndpoint
from app.endpoints.completions import CompletionsEndpoint
from app.endpoints.embeddings import EmbeddingsEndpoint
from app.endpoints.responses import ResponsesEndpoint

# The generation routes, each served by the shared pipeline (app/pipeline.py).
GENERATION_ENDPOINTS: tuple[GenerationEndpoint, ...] = (
    ChatEndpoint(),
    CompletionsEndpoint(),
    ResponsesEndpoint(),
    EmbeddingsEndpoint(),
)
