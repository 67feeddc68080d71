"""Local LLM provider simulator: real wire shapes over real TLS, deterministic usage.

Tests, benchmarks and ``halton-meter demo`` point real clients (the official SDKs, curl) at the
REAL host names; the meter's ``[upstream] resolve`` sends its upstream connection here and
``[upstream] ca_bundle = sim.ca_path`` makes it trust the simulator. No network is ever needed.

Starting it
-----------
In-process (a background thread)::

    from halton_meter.sim import ProviderSim
    with ProviderSim() as sim:                  # or ProviderSim(dir).start(port=0, http_port=0)
        sim.port, sim.ca_path, sim.base_url     # https://127.0.0.1:<port>
        sim.resolve_entry("api.openai.com")     # {"api.openai.com:443": "127.0.0.1:<port>"}
        ...
        sim.wait_for_requests(1)                # -> list[SimRecord]
        sim.requests[-1].usage                  # exact usage object sent on the wire

As a process::

    python -m halton_meter.sim --port 0 --dir D [--http-port 0] [--name extra.host ...]

prints ONE JSON line ``{"port", "http_port", "ca", "pid", "dir"}`` and serves until SIGTERM.
``GET /_sim/log[?since=ID]`` returns ``{"requests": [record, ...]}`` (records with id > ID);
``POST /_sim/reset`` clears it; ``GET /_sim/health`` answers ``{"ok": true}``. Control paths
are never logged.

Certificates (``ca.py``): ``ca.pem`` (trust this), ``ca-key.pem`` (0600), ``leaf.pem``,
``leaf-key.pem`` (0600), reused while valid. The leaf covers api.anthropic.com, api.openai.com,
generativelanguage.googleapis.com, openrouter.ai, *.openai.azure.com,
*.cognitiveservices.azure.com, bedrock-runtime.{us-east-1,us-west-2}.amazonaws.com,
*.{us-east-1,us-east-2,us-west-2,eu-west-1,eu-central-1}.amazonaws.com, api.mistral.ai,
api.groq.com, api.deepseek.com, api.together.xyz, api.x.ai, example.com, www.example.com,
*.example.com, example.org, example.net, localhost, 127.0.0.1, ::1, plus ``extra_names``.

Routes (by path, for any Host; HTTP/1.1 only, keep-alive, ALPN http/1.1)
------------------------------------------------------------------------
api (as in the log)     method + path
anthropic.messages      POST /v1/messages                       JSON, or SSE with "stream": true
anthropic.count_tokens  POST /v1/messages/count_tokens          {"input_tokens": N}
anthropic.models        GET  /v1/models  (Host *anthropic* or an anthropic-version header)
openai.chat             POST /v1/chat/completions               JSON / SSE
openai.responses        POST /v1/responses                      JSON / SSE
openai.responses.ws     GET  /v1/responses + Upgrade: websocket (response.create messages)
openai.embeddings       POST /v1/embeddings
openai.models           GET  /v1/models
openrouter.chat         POST /api/v1/chat/completions           chat shape + usage.cost
azure.chat              POST /openai/deployments/{dep}/chat/completions?api-version=...
azure.embeddings        POST /openai/deployments/{dep}/embeddings   (model: the body's, else {dep})
                        (/openai/v1/chat/completions and /openai/v1/responses too)
gemini.generate         POST /v1beta/models/{m}:generateContent
gemini.stream           POST /v1beta/models/{m}:streamGenerateContent  (?alt=sse: SSE with
                        \\r\\n\\r\\n separators; without: one JSON array streamed element by element)
gemini.count_tokens     POST /v1beta/models/{m}:countTokens
gemini.models           GET  /v1beta/models
bedrock.invoke          POST /model/{id}/invoke                 Anthropic body and answer
bedrock.invoke_stream   POST /model/{id}/invoke-with-response-stream  event-stream, chunk.bytes =
                        base64 of each Anthropic stream event
bedrock.converse        POST /model/{id}/converse
bedrock.converse_stream POST /model/{id}/converse-stream        AWS event-stream binary frames
site                    anything else: for a non-API Host (example.com) any path answers 200
                        "Hello from <host>" (header x-sim-site); on an API host, 404 JSON
                        except ``GET /`` (200).

The model is the body's "model" (or the path's, for Gemini/Bedrock), echoed back unchanged,
so unknown names reach pricing as they are. Any API key is accepted; credentials headers are
recorded in the log (tests check they reached upstream).

Usage: deterministic, canonical, then mapped per API
----------------------------------------------------
Canonical counts (``SimRecord.usage_canonical``): input_tokens = max(1, request body bytes // 4)
(uncached input), output_tokens = number of text deltas (x-sim-events, default 5; with
x-sim-response-bytes: bytes // 4), everything else 0; each can be set exactly with
``x-sim-usage: {"input_tokens": 100, "output_tokens": 20, "cache_read_tokens": 30,
"cache_write_tokens": 5, "cache_write_1h_tokens": 2, "reasoning_tokens": 7, "cost": "0.0123"}``
(unknown keys -> 400). Mapping onto the wire (``SimRecord.usage`` is exactly what was sent):

- Anthropic: input_tokens = input; cache_read_input_tokens = cache_read;
  cache_creation_input_tokens = cache_write + cache_write_1h; cache_creation =
  {ephemeral_5m_input_tokens: cache_write, ephemeral_1h_input_tokens: cache_write_1h};
  output_tokens = output. Streams: message_start carries the input side with output_tokens 1;
  message_delta carries the CUMULATIVE final usage (input side again + output). The log's usage
  is {"message_start": {...}, "message_delta": {...}} for streams.
- OpenAI chat / OpenRouter / Azure: prompt_tokens = input + cache_read + cache_writes;
  prompt_tokens_details.cached_tokens = cache_read; completion_tokens = output (reasoning
  included); completion_tokens_details.reasoning_tokens = reasoning; total_tokens. Streams carry
  usage only with stream_options.include_usage (final chunk, "choices": []; usage null before),
  except OpenRouter which always sends it (plus usage.cost, default (prompt*1e-6 +
  completion*2e-6) USD, and a ": OPENROUTER PROCESSING" comment line first).
  No include_usage -> the log's usage is None.
- Responses: input_tokens = input + cache_read + cache_writes; input_tokens_details.cached_tokens;
  output_tokens; output_tokens_details.reasoning_tokens; total_tokens; in response.completed
  (or response.incomplete / response.failed with x-sim-outcome), null in response.created.
- Gemini: promptTokenCount = input + cache_read; cachedContentTokenCount = cache_read (when >0);
  candidatesTokenCount = output - reasoning; thoughtsTokenCount = reasoning (when >0);
  totalTokenCount. Stream chunks carry cumulative counts; the last chunk has the final ones.
- Bedrock converse: inputTokens = input, outputTokens = output, cacheRead/WriteInputTokens
  (when any), totalTokens. invoke: Anthropic's usage (+ x-amzn-bedrock-*-token-count headers).
- Embeddings: prompt_tokens = total_tokens = input + cache.

Knobs (request headers; SDKs: ``extra_headers=`` / ``default_headers=``)
------------------------------------------------------------------------
x-sim-status: 400|401|403|404|429|500|503|529
    Answer that status with the provider's real error JSON (Anthropic {"type":"error",...},
    OpenAI {"error":{...}}, Gemini {"error":{"code","status"}}, Bedrock {"message"} +
    x-amzn-errortype). 429/503/529 carry ``retry-after`` (x-sim-retry-after, default "1").
    SDKs retry these by default: pass max_retries=0 in tests.
x-sim-encoding: gzip|br|zstd|deflate
    Content-Encoding on the response; streamed bodies are compressed with a flush per event
    (each event decodes on arrival). Always chunked (no content-length).
x-sim-events: N         number of text deltas (default 5; 0 allowed).
x-sim-delay-ms: N       pause between streamed events (not before the first).
x-sim-ttfb-ms: N        pause before the status line (latency / time-to-first-byte tests).
x-sim-truncate: after=K close the connection after K streamed events (counting every SSE event,
                        message_start and ping included; a JSON-array element; an event-stream
                        frame), without the terminal event; the chunked body never ends. On a
                        non-streamed body: half the body, then close. Record: truncated=True.
                        ``after=K,reset``: abort with a TCP RST instead of a clean close.
x-sim-malformed: 1      JSON body cut in half (invalid JSON); streams get one bad event after
                        the first (``data: {...{oops``; a bad-CRC frame for event-stream).
x-sim-response-bytes: N a response whose text totals N bytes, generated in 64 KiB pieces and
                        never held in memory (JSON: content-length exact; SSE: N/64Ki deltas).
x-sim-usage: {json}     exact canonical usage (above).
x-sim-outcome: completed|incomplete|failed|error
                        incomplete: Anthropic stop_reason max_tokens, chat finish_reason length,
                        Responses response.incomplete (with usage), Gemini MAX_TOKENS.
                        failed/error: Anthropic stream ends with an ``event: error``
                        (overloaded_error) and no message_delta; chat stream gets a
                        data: {"error":...} and no [DONE]; Responses response.failed (with usage).

Where a client cannot set headers (a CLI, a WebSocket message), the model name carries knobs:
``"gpt-4o@sim:status=429,events=3,delay-ms=20"`` (header name without ``x-sim-``; a bare key
means "1"); the part before ``@sim:`` is the model echoed back and logged. Headers win over
the model name, which wins over the simulator's defaults (``ProviderSim(defaults={...})``,
``--default x-sim-delay-ms=20``). x-sim-usage needs the header (its JSON has commas).

WebSocket (openai.responses.ws): knobs come from the upgrade request's headers and apply to
every response.create on the connection (x-sim-truncate counts messages across the whole
connection and aborts the socket); x-sim-status answers the handshake with that error instead
of 101; a model-name status (``gpt-5@sim:status=429``) answers that one message with
``{"type": "error", "status": 429, "error": {...}}`` and no usage. Each response.create is one entry in the record's ws_calls; the record's usage/model
are the latest call's.

The request log (``SimRecord``, or its dict over /_sim/log)
----------------------------------------------------------
id, ts, method, host (Host header without port), path, query, headers (lower-case names,
repeated headers joined with ", "), body_size, body_sha256, body_text (first 64 KiB), tls, sni,
peer, api, model, stream, status, usage (wire), usage_canonical, knobs (non-default ones),
events_sent, bytes_sent (before compression), first_event_at / last_event_at
(time.monotonic() of the server process), completed, truncated, client_aborted, ws_calls
(WebSocket: one entry per response.create with its model and usage).
Records are never dropped (indexes stay stable: ``sim.requests[before:]`` works); only the
newest 1000 keep body_text, older ones keep body_size and body_sha256. A handler crash answers
500 {"error": {"type": "sim_internal_error"}} and logs ``sim.handler_error``.
"""

from halton_meter.sim.app import SimRecord
from halton_meter.sim.ca import SimCerts, ensure_sim_certs
from halton_meter.sim.provider import ProviderSim

__all__ = ["ProviderSim", "SimCerts", "SimRecord", "ensure_sim_certs"]
