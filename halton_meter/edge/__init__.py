"""The edge: the loopback forward proxy every client is given as ``HTTPS_PROXY``.

``python -m halton_meter.edge`` (supervisord's ``edge`` program). Modules:

- `server`: the asyncio proxy (CONNECT, absolute-form HTTP), daemon hand-over, fail-open,
  loop refusal;
- `splice` / `zerocopy`: moving tunnel bytes (transport pipes; ``splice(2)`` on Linux);
- `httpio`: the HTTP/1.1 heads and body framing the plain-HTTP path needs;
- `identify`: client pid from the source port, tool from the process chain;
- `attribution` / `registry`: project tiers and the slug -> path registry;
- `handover`: the ``X-Halton-Attribution`` / ``X-Halton-Edge`` headers (the daemon decodes
  the same format);
- `stats`: counters persisted to ``edge-stats.json`` for ``status``.
"""
