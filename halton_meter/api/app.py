"""The local API: `/health` open, everything else behind the home's bearer token.

Routes are thin: status comes from the doctor's classifier, report data from the store's
queries, so the API, `status` and `report` can never disagree about what they show.
"""

from __future__ import annotations

import hmac
import sqlite3
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from halton_meter import __version__
from halton_meter.api.token import ensure_api_token, read_api_token
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.timefilter import parse_time


class _TokenCheck:
    """Bearer token check, constant-time. Re-reads the file when it changes on disk, so a
    rotated token (file replaced) takes effect without a restart."""

    def __init__(self, home: Home) -> None:
        self._home = home
        self._token = ensure_api_token(home)
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._home.api_token.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _current(self) -> str:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._token = read_api_token(self._home) or self._token
            self._stamp = stamp
        return self._token

    def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = self._current()
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), expected.encode()
        )
        if not ok:
            get_logger().info("api.auth.refused", path=request.url.path)
            raise HTTPException(
                status_code=401,
                detail="missing or wrong API token (see the api-token file in the home)",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _open_store(home: Home) -> sqlite3.Connection:
    try:
        return db.connect(home.db, readonly=True)
    except FileNotFoundError:
        # Nothing captured yet: an empty in-memory database answers like an empty store.
        return sqlite3.connect(":memory:")


def _report(
    home: Home,
    *,
    since: str | None,
    project: str | None,
    model: str | None,
    provider: str | None,
    tool: str | None,
    limit: int,
    by: str | None,
) -> dict[str, Any]:
    try:
        since_dt = parse_time(since) if since else None
        if by is not None:
            queries.check_group_key(by)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    filters: dict[str, Any] = {
        "since": since_dt,
        "project": project,
        "model": model,
        "provider": provider,
        "tool": tool,
    }
    try:
        conn = _open_store(home)
    except db.StoreError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    try:
        # The same two shapes as `report --json` / `report --by KEY --json`.
        if by is not None:
            return {
                "groups": queries.group_by(conn, by, **filters),
                "totals": queries.totals(conn, **filters),
            }
        return {
            "rows": queries.query_rows(conn, limit=limit, **filters),
            "totals": queries.totals(conn, **filters),
        }
    except sqlite3.DatabaseError as exc:
        # Damaged underneath a reader: say which file and how to recover, never a traceback.
        raise HTTPException(status_code=503, detail=str(db.corrupt_error(home.db, exc))) from None
    finally:
        conn.close()


def create_app(home: Home) -> FastAPI:
    app = FastAPI(
        title="Halton Meter",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    require_token = Depends(_TokenCheck(home))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/status", dependencies=[require_token])
    def status() -> JSONResponse:
        from halton_meter.doctor.report import build_status

        # Only the service-side checks: the caller's shell environment is not ours to see,
        # `halton-meter status` adds those checks locally.
        return JSONResponse(build_status(home, client_env=None, source="api"))

    @app.get("/v1/report", dependencies=[require_token])
    def report(
        since: str | None = None,
        project: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        tool: str | None = None,
        limit: Annotated[int, Query(ge=0, le=100_000)] = queries.DEFAULT_LIMIT,
        by: str | None = None,
    ) -> dict[str, Any]:
        return _report(
            home,
            since=since,
            project=project,
            model=model,
            provider=provider,
            tool=tool,
            limit=limit,
            by=by,
        )

    return app
