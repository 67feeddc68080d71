"""The provider layer: pure, I/O-free functions from bytes to normalised usage.

- ``hosts``: which hosts are intercepted, and as which provider.
- ``endpoints``: which API a request is, and whether it is a model call (a row).
- ``parsers``: ``json_parser_for(endpoint)`` and ``stream_parser_for(endpoint, content_type)``.
- ``anthropic``, ``openai``, ``gemini``, ``bedrock``: per-API usage logic.
- ``sse``, ``eventstream``, ``jsonarray``: incremental framing; ``decode``: Content-Encoding.
- ``errors``: reading a provider's error body.

Nothing here imports mitmproxy, touches the network or the disk.
"""
