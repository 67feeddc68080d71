"""Routing, knobs and the request log: turns a ``SimRequest`` into a ``SimResponse``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from halton_meter.core.logging import get_logger
from halton_meter.sim import anthropic, bedrock, gemini, openai
from halton_meter.sim.common import (
    Call,
    KnobError,
    Knobs,
    Reply,
    default_usage,
    dumps,
    split_model_knobs,
)
from halton_meter.sim.server import Progress, SimRequest, SimResponse
from halton_meter.sim.websocket import responses_ws

log = get_logger("halton_meter.sim")

_KNOWN_API_HOSTS = (
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "openrouter.ai",
    "localhost",
    "127.0.0.1",
    "::1",
)
_KNOWN_API_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".amazonaws.com")
_BODY_TEXT_KEEP = 64 * 1024
_BODY_TEXT_RECORDS = 1000  # only the newest records keep their body text


@dataclass
class SimRecord:
    """One request the simulator received, and exactly what it answered."""

    id: int
    ts: float
    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int
    body_sha256: str
    body_text: str = field(repr=False)  # the first 64 KiB, decoded leniently
    tls: bool
    sni: str | None
    peer: str
    api: str | None = None  # e.g. "anthropic.messages", "openai.chat", "site"
    model: str | None = None
    stream: bool = False
    status: int = 0
    usage: dict[str, Any] | None = None  # the exact usage object(s) put on the wire
    usage_canonical: dict[str, Any] | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    ws_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.progress.completed

    @property
    def truncated(self) -> bool:
        return self.progress.truncated

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json_body(self) -> Any:
        return json.loads(self.body_text)

    def to_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "id": self.id,
            "ts": self.ts,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_size": self.body_size,
            "body_sha256": self.body_sha256,
            "body_text": self.body_text,
            "tls": self.tls,
            "sni": self.sni,
            "peer": self.peer,
            "api": self.api,
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "usage": self.usage,
            "usage_canonical": self.usage_canonical,
            "knobs": self.knobs,
            "events_sent": p.events_sent,
            "bytes_sent": p.bytes_sent,
            "first_event_at": p.first_event_at,
            "last_event_at": p.last_event_at,
            "completed": p.completed,
            "truncated": p.truncated,
            "client_aborted": p.client_aborted,
            "ws_calls": self.ws_calls,
        }


Handler = Callable[[Call], Reply]


@dataclass(frozen=True)
class _Route:
    api: str
    family: str  # error shape: anthropic | openai | gemini | bedrock
    handler: Handler
    model: str | None = None  # from the path (Gemini, Bedrock)
    fallback_model: str | None = None  # when the body names none (Azure: the deployment)
    stream: bool | None = None  # decided by the path rather than the body


class SimApp:
    def __init__(self) -> None:
        self.requests: list[SimRecord] = []
        # x-sim-* header values applied when neither the request nor its model name sets them
        self.defaults: dict[str, str] = {}
        self._lock = threading.Lock()
        self._next_id = 1

    # -- log --------------------------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, req: SimRequest) -> SimRecord:
        headers: dict[str, str] = {}
        for k, v in req.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        with self._lock:
            rec = SimRecord(
                id=self._next_id,
                ts=time.time(),
                method=req.method,
                host=req.host,
                path=req.path,
                query=req.query,
                headers=headers,
                body_size=req.body_size,
                body_sha256=req.body_sha256,
                body_text=req.body[:_BODY_TEXT_KEEP].decode("utf-8", "replace"),
                tls=req.tls,
                sni=req.sni,
                peer=req.peer,
            )
            self._next_id += 1
            if not req.path.startswith("/_sim/"):
                self.requests.append(rec)
                # Bounded memory in long benchmarks, stable indexes for tests: old records keep
                # their metadata and lose only the body text.
                if len(self.requests) > _BODY_TEXT_RECORDS:
                    self.requests[-_BODY_TEXT_RECORDS - 1].body_text = ""
        return rec

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, req: SimRequest) -> SimResponse:
        rec = self._record(req)
        try:
            return self._dispatch(req, rec)
        except Exception as exc:  # a simulator bug shows up as a 500, not a dropped socket
            log.exception("sim.handler_error", method=req.method, path=req.path)
            rec.status = 500
            error = {"error": {"type": "sim_internal_error", "message": repr(exc)}}
            resp = _json(500, error)
            resp.progress = rec.progress
            return resp

    def _dispatch(self, req: SimRequest, rec: SimRecord) -> SimResponse:
        if req.path.startswith("/_sim/"):
            return self._control(req)
        route = _route(req)
        if route is None:
            return self._site(req, rec)
        rec.api = route.api
        body = _parse_body(req)
        model = route.model or (body.get("model") if isinstance(body.get("model"), str) else None)
        model = model or route.fallback_model or _default_model(route.family)
        model, model_knobs = split_model_knobs(model)
        rec.model = model
        try:
            knobs = Knobs.from_request(req, model_knobs, self.defaults)
        except KnobError as exc:
            rec.status = 400
            return _error(route.family, 400, f"simulator knob error: {exc}", rec, None)
        defaults = vars(Knobs())
        rec.knobs = {k: v for k, v in vars(knobs).items() if v != defaults[k]}
        stream = route.stream if route.stream is not None else bool(body.get("stream"))
        rec.model, rec.stream = model, stream
        if knobs.status is not None and knobs.status >= 400:
            rec.status = knobs.status
            return _error(route.family, knobs.status, _status_message(knobs.status), rec, knobs)
        if route.api == "openai.responses.ws":
            rec.status = 101
            resp = SimResponse(status=101, progress=rec.progress)
            resp.websocket = lambda session: responses_ws(session, req, rec, self.defaults)
            return resp
        call = Call(req=req, knobs=knobs, api=route.api, model=model, stream=stream, body=body)
        call.usage = default_usage(call)
        if route.api.endswith(("models", "count_tokens")):
            call.usage.output_tokens = 0
        reply = route.handler(call)
        if call.wire_usage is not None:
            rec.usage = call.wire_usage
            rec.usage_canonical = call.usage.to_dict()
        rec.status = reply.status
        return _to_response(reply, knobs, rec, req)

    def _control(self, req: SimRequest) -> SimResponse:
        if req.path == "/_sim/log" and req.method == "GET":
            since = int(req.query.get("since", "0") or 0)
            with self._lock:
                body = {"requests": [r.to_dict() for r in self.requests if r.id > since]}
            return _json(200, body)
        if req.path in ("/_sim/reset", "/_sim/log") and req.method in ("POST", "DELETE"):
            self.clear()
            return _json(200, {"ok": True})
        if req.path == "/_sim/health":
            return _json(200, {"ok": True})
        return _json(404, {"error": "unknown simulator control path"})

    def _site(self, req: SimRequest, rec: SimRecord) -> SimResponse:
        rec.api = "site"
        if _is_api_host(req.host) and req.path != "/":
            rec.status = 404
            message = f"no route for {req.method} {req.path}"
            resp = _json(404, {"error": {"message": message, "type": "not_found"}})
            resp.progress = rec.progress
            return resp
        rec.status = 200
        html = f"<!doctype html><title>{req.host}</title><h1>Hello from {req.host}</h1>\n".encode()
        resp = SimResponse(
            status=200,
            headers=[("content-type", "text/html; charset=utf-8"), ("x-sim-site", req.host)],
            body=html,
        )
        resp.progress = rec.progress
        return resp


def _is_api_host(host: str) -> bool:
    host = host.lower()
    return host in _KNOWN_API_HOSTS or host.endswith(_KNOWN_API_SUFFIXES)


def _default_model(family: str) -> str:
    return {
        "anthropic": anthropic.DEFAULT_MODEL,
        "gemini": gemini.DEFAULT_MODEL,
        "bedrock": bedrock.DEFAULT_MODEL,
    }.get(family, openai.DEFAULT_MODEL)


def _route(req: SimRequest) -> _Route | None:
    path = req.path.rstrip("/") or "/"
    m = req.method
    host = req.host.lower()
    if m == "POST":
        if path == "/v1/messages":
            return _Route("anthropic.messages", "anthropic", anthropic.messages)
        if path == "/v1/messages/count_tokens":
            return _Route(
                "anthropic.count_tokens", "anthropic", anthropic.count_tokens, stream=False
            )
        if path in ("/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"):
            return _Route("openai.chat", "openai", openai.chat)
        if path in ("/v1/responses", "/openai/v1/responses", "/openai/responses"):
            return _Route("openai.responses", "openai", openai.responses)
        if path in ("/v1/embeddings", "/openai/v1/embeddings"):
            return _Route("openai.embeddings", "openai", openai.embeddings, stream=False)
        if path == "/api/v1/chat/completions":
            return _Route(
                "openrouter.chat", "openai", lambda c: openai.chat(c, flavor="openrouter")
            )
        if path.startswith("/openai/deployments/"):
            parts = path.split("/")
            if len(parts) >= 5:
                dep = unquote(parts[3])
                tail = "/".join(parts[4:])
                if tail == "chat/completions":
                    return _Route(
                        "azure.chat",
                        "openai",
                        lambda c: openai.chat(c, flavor="azure"),
                        fallback_model=dep,
                    )
                if tail == "embeddings":
                    return _Route(
                        "azure.embeddings",
                        "openai",
                        openai.embeddings,
                        stream=False,
                        fallback_model=dep,
                    )
        if path.startswith(("/v1beta/models/", "/v1/models/", "/v1alpha/models/")):
            return gemini.route(req, path)
        if path.startswith("/model/"):
            return bedrock.route(req, path)
    if m == "GET" and not _is_ws(req):
        if path in ("/v1/models", "/api/v1/models", "/openai/v1/models"):
            if "anthropic" in host or req.header("anthropic-version"):
                return _Route(
                    "anthropic.models", "anthropic", lambda c: anthropic.models(), stream=False
                )
            return _Route("openai.models", "openai", lambda c: openai.models(), stream=False)
        if path in ("/v1beta/models", "/v1/models"):
            return _Route("gemini.models", "gemini", lambda c: gemini.models(), stream=False)
    if m == "GET" and _is_ws(req) and path in ("/v1/responses", "/openai/v1/responses"):
        return _Route("openai.responses.ws", "openai", _no_handler, stream=True)
    return None


def _no_handler(call: Call) -> Reply:
    raise AssertionError("answered by the WebSocket session")


def _is_ws(req: SimRequest) -> bool:
    return (req.header("upgrade") or "").lower() == "websocket"


def _parse_body(req: SimRequest) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        body = json.loads(req.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _status_message(status: int) -> str:
    return {
        400: "Simulated invalid request.",
        401: "Simulated invalid API key.",
        403: "Simulated permission denied.",
        404: "Simulated model not found.",
        429: "Simulated rate limit exceeded.",
        500: "Simulated internal server error.",
        503: "Simulated service unavailable.",
        529: "Simulated overload.",
    }.get(status, f"Simulated error {status}.")


def _error(
    family: str, status: int, message: str, rec: SimRecord, knobs: Knobs | None
) -> SimResponse:
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    body: dict[str, Any]
    if family == "anthropic":
        body = anthropic.error_body(status, message)
        body["request_id"] = f"req_sim{rec.id}"
        headers.append(("request-id", f"req_sim{rec.id}"))
    elif family == "gemini":
        body = gemini.error_body(status, message)
    elif family == "bedrock":
        body, kind = bedrock.error_body(status, message)
        headers.append(("x-amzn-errortype", kind))
    else:
        body = openai.error_body(status, message)
        headers.append(("x-request-id", f"req_sim{rec.id}"))
    if status in (429, 503, 529) and knobs is not None:
        headers.append(("retry-after", knobs.retry_after))
    resp = SimResponse(status=status, headers=headers, body=dumps(body).encode())
    if knobs is not None:
        resp.encoding = knobs.encoding
        resp.ttfb_s = knobs.ttfb_s
    resp.progress = rec.progress
    return resp


def _json(status: int, obj: Any) -> SimResponse:
    return SimResponse(
        status=status, headers=[("content-type", "application/json")], body=dumps(obj).encode()
    )


def _to_response(reply: Reply, knobs: Knobs, rec: SimRecord, req: SimRequest) -> SimResponse:
    headers = [("content-type", reply.content_type), *reply.headers]
    resp = SimResponse(status=reply.status, headers=headers, progress=rec.progress)
    resp.encoding = knobs.encoding
    resp.delay_s = knobs.delay_s
    resp.ttfb_s = knobs.ttfb_s
    resp.truncate_after = knobs.truncate_after
    resp.truncate_reset = knobs.truncate_reset
    if reply.chunks is None:
        resp.body = reply.body[: max(1, len(reply.body) // 2)] if knobs.malformed else reply.body
    else:
        chunks: Iterable[bytes] = reply.chunks
        if knobs.malformed:
            chunks = _with_bad_chunk(chunks, reply.bad_chunk)
            reply.content_length = None
        resp.chunks = chunks
        resp.content_length = reply.content_length
    return resp


def _with_bad_chunk(chunks: Iterable[bytes], bad: bytes) -> Iterator[bytes]:
    for i, chunk in enumerate(chunks):
        yield chunk
        if i == 0:
            yield bad
