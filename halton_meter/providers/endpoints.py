"""Which API a request is, and whether it is a model call (a usage row).

A provider host also serves settings, telemetry, model lists and token counting; those
classify as None and never become rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

APIS = (
    "messages",
    "chat",
    "responses",
    "completions",
    "embeddings",
    "generate_content",
    "stream_generate_content",
    "bedrock_invoke",
    "bedrock_invoke_stream",
    "bedrock_converse",
    "bedrock_converse_stream",
)

_STREAMING_APIS = frozenset(
    {"stream_generate_content", "bedrock_invoke_stream", "bedrock_converse_stream"}
)


@dataclass(frozen=True)
class Endpoint:
    provider: str
    api: str
    # The model named by the path: Gemini's model, Azure's deployment, Bedrock's modelId.
    path_model: str | None = None
    # True for an Azure deployment name (a fallback: the response's model is better).
    path_model_is_deployment: bool = False
    # GET /v1/responses with an Upgrade header: the Responses API over WebSocket (Codex).
    websocket: bool = False

    @property
    def path_stream(self) -> bool:
        return self.api in _STREAMING_APIS

    def request_model(self, body: bytes | None) -> str | None:
        """The model the request asked for (before any response arrived)."""
        body_model = _body_field(body, "model")
        if not isinstance(body_model, str) or not body_model:
            body_model = None
        if self.path_model is not None and not self.path_model_is_deployment:
            return self.path_model
        return body_model or self.path_model

    def request_stream(self, body: bytes | None) -> bool:
        """Whether the request asked to stream."""
        if self.path_stream:
            return True
        return _body_field(body, "stream") is True

    def resolve_model(self, body: bytes | None, response_model: str | None) -> str | None:
        """The model to record: the response's, except where the path is more precise.

        Bedrock's modelId (``anthropic.claude-...-v1:0``) is what its prices are keyed by, so
        it wins over the short name an Anthropic body echoes back.
        """
        if self.provider == "bedrock" and self.path_model:
            return self.path_model
        return response_model or self.request_model(body)


def _body_field(body: bytes | None, name: str) -> Any:
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj.get(name) if isinstance(obj, dict) else None


def _strip(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    if len(path) > 1:
        path = path.rstrip("/")
    return path


_OPENAI_SUFFIX_APIS = (
    ("/chat/completions", "chat"),
    ("/completions", "completions"),
    ("/responses", "responses"),
    ("/embeddings", "embeddings"),
)


def _openai_api(path: str, prefix: str) -> str | None:
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :]
    for suffix, api in _OPENAI_SUFFIX_APIS:
        if rest == suffix:
            return api
    return None


def _classify_anthropic(method: str, path: str) -> Endpoint | None:
    if method == "POST" and path == "/v1/messages":
        return Endpoint("anthropic", "messages")
    return None


def _classify_openai(provider: str, method: str, path: str, prefix: str) -> Endpoint | None:
    api = _openai_api(path, prefix)
    if api is None:
        return None
    if method == "POST":
        return Endpoint(provider, api)
    if method == "GET" and api == "responses":
        return Endpoint(provider, api, websocket=True)
    return None


# /v1beta/models/gemini-2.5-flash:generateContent, /v1/tunedModels/x:streamGenerateContent
_GEMINI_RE = re.compile(
    r"^/(?:v1|v1beta|v1alpha)/(?P<kind>models|tunedModels)/(?P<model>[^/:]+)"
    r":(?P<method>generateContent|streamGenerateContent|embedContent|batchEmbedContents)$"
)
_GEMINI_METHOD_APIS = {
    "generateContent": "generate_content",
    "streamGenerateContent": "stream_generate_content",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}


def _classify_gemini(method: str, path: str) -> Endpoint | None:
    if method != "POST":
        return None
    m = _GEMINI_RE.match(path)
    if m is not None:
        model = unquote(m.group("model"))
        return Endpoint("gemini", _GEMINI_METHOD_APIS[m.group("method")], path_model=model)
    # Gemini's OpenAI-compatible surface
    for prefix in ("/v1beta/openai", "/v1/openai"):
        api = _openai_api(path, prefix)
        if api is not None:
            return Endpoint("gemini", api)
    return None


_AZURE_DEPLOYMENT_RE = re.compile(
    r"^/openai/deployments/(?P<dep>[^/]+)"
    r"/(?P<api>chat/completions|completions|embeddings|responses)$"
)
_AZURE_DEPLOYMENT_APIS = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
}


def _classify_azure(method: str, path: str) -> Endpoint | None:
    m = _AZURE_DEPLOYMENT_RE.match(path)
    if m is not None:
        if method != "POST":
            return None
        return Endpoint(
            "azure",
            _AZURE_DEPLOYMENT_APIS[m.group("api")],
            path_model=unquote(m.group("dep")),
            path_model_is_deployment=True,
        )
    for prefix in ("/openai/v1", "/openai", "/models", "/v1"):
        ep = _classify_openai("azure", method, path, prefix)
        if ep is not None:
            return ep
    # Claude models in Azure AI Foundry speak the Messages API
    if method == "POST" and path in ("/anthropic/v1/messages", "/anthropic/messages"):
        return Endpoint("azure", "messages")
    return None


_BEDROCK_RE = re.compile(
    r"^/model/(?P<model>[^/]+(?:/[^/]+)*?)"
    r"/(?P<op>invoke|invoke-with-response-stream|converse|converse-stream)$"
)
_BEDROCK_APIS = {
    "invoke": "bedrock_invoke",
    "invoke-with-response-stream": "bedrock_invoke_stream",
    "converse": "bedrock_converse",
    "converse-stream": "bedrock_converse_stream",
}


def _classify_bedrock(method: str, path: str) -> Endpoint | None:
    if method != "POST":
        return None
    m = _BEDROCK_RE.match(path)
    if m is None:
        return None
    # modelId may be URL-encoded ("...-v1%3A0") or an ARN; prices are keyed by the id itself
    model = unquote(m.group("model"))
    if model.startswith("arn:") and "/" in model:
        model = model.rsplit("/", 1)[1]
    return Endpoint("bedrock", _BEDROCK_APIS[m.group("op")], path_model=model)


def _classify_compatible(method: str, path: str) -> Endpoint | None:
    # An OpenAI-compatible server may mount the API under any prefix (/v1, /api/v1, /openai/v1)
    if method == "POST" and path.endswith("/messages") and not path.endswith("/count_tokens"):
        return Endpoint("compatible", "messages")
    for suffix, api in _OPENAI_SUFFIX_APIS:
        if path.endswith(suffix):
            if method == "POST":
                return Endpoint("compatible", api)
            if method == "GET" and api == "responses":
                return Endpoint("compatible", api, websocket=True)
            return None
    return None


def classify(provider: str, method: str, path: str) -> Endpoint | None:
    """The endpoint of a request on a provider host, or None when it is not a model call."""
    method = method.upper()
    p = _strip(path)
    if provider == "anthropic":
        return _classify_anthropic(method, p)
    if provider == "openai":
        return _classify_openai("openai", method, p, "/v1")
    if provider == "openrouter":
        return _classify_openai("openrouter", method, p, "/api/v1")
    if provider == "gemini":
        return _classify_gemini(method, p)
    if provider == "azure":
        return _classify_azure(method, p)
    if provider == "bedrock":
        return _classify_bedrock(method, p)
    if provider == "compatible":
        return _classify_compatible(method, p)
    return None
