"""The store: one SQLite row per request, and the body files beside it.

- ``model.Row``: the row (one column per field).
- ``db.connect(path, readonly=False)``: WAL, 0600, versioned schema (``db.MIGRATIONS``).
- ``writer.RowWriter``: the daemon's single writer thread (``submit`` never blocks).
- ``bodies.BodyStore`` / ``bodies.redact_query``: body files under the size gate.
- ``queries``: rows, totals and groups for ``report``, the API and reprice.

A low room: it knows nothing of mitmproxy, the providers' wire formats or the CLI.
"""
