"""The HTTP client for the cloud API, and the classification of every answer.

Outbound rules: httpx with ``trust_env=False`` (never through the edge, never a ``*_PROXY``
variable), explicit timeouts, and only the proxy named in ``[cloud] proxy``. Certificates
are verified against the certifi roots PLUS ``[upstream] ca_bundle`` when it is set (the same
"extra roots" a corporate gateway or a test simulator needs for the provider traffic).

The base URL is checked before anything touches the network: a placeholder TLD raises
:class:`PlaceholderBaseURL` at once, naming the URL and the config path.

Every answer becomes an :class:`Outcome`: ``ok``, ``unauthorised`` (401), ``forbidden``
(403), ``rejected`` (400/422, and 413: this batch's content or size), or ``transient`` (5xx, 429, timeouts,
DNS and connection failures, anything unexpected).
"""

from __future__ import annotations

import email.utils
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import certifi
import httpx

from halton_meter.core.config import Config, require_real_base_url

OK = "ok"
UNAUTHORISED = "unauthorised"
FORBIDDEN = "forbidden"
REJECTED = "rejected"
TRANSIENT = "transient"

PATH_WHOAMI = "/v1/daemon/whoami"
PATH_PAIR = "/v1/daemon/pair"
PATH_REVOKE = "/v1/daemon/revoke"
PATH_BATCH = "/v1/requests/batch"

TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int | None = None
    data: dict[str, Any] | None = None
    error: str | None = None  # "cloud.<what>: ..." for last_error and the log
    retry_after_s: float | None = None
    url: str = ""


def ssl_context(config: Config) -> ssl.SSLContext:
    """certifi roots plus ``[upstream] ca_bundle``: added to the roots, never replacing them."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    if config.upstream.ca_bundle is not None:
        ctx.load_verify_locations(cafile=str(config.upstream.ca_bundle))
    return ctx


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


def classify_response(response: httpx.Response) -> Outcome:
    """One HTTP answer -> Outcome. The table lives here and nowhere else."""
    url = str(response.request.url)
    status = response.status_code
    data: dict[str, Any] | None = None
    try:
        parsed = response.json()
        data = parsed if isinstance(parsed, dict) else None
    except ValueError:
        data = None
    if 200 <= status < 300:
        return Outcome(OK, status, data or {}, url=url)
    detail = _short(response.text) if response.text else response.reason_phrase
    if status == 401:
        return Outcome(
            UNAUTHORISED, status, data, f"cloud.unauthorised: HTTP 401 from {url}", url=url
        )
    if status == 403:
        return Outcome(FORBIDDEN, status, data, f"cloud.forbidden: HTTP 403 from {url}", url=url)
    # 413 too: a batch too large for the server is split like a refused one.
    if status in (400, 413, 422):
        return Outcome(
            REJECTED, status, data, f"cloud.rejected: HTTP {status} from {url}: {detail}", url=url
        )
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return Outcome(
        TRANSIENT,
        status,
        data,
        f"cloud.transport_error: HTTP {status} from {url}: {detail}",
        retry_after_s=retry_after if status in (429, 503) else None,
        url=url,
    )


def classify_exception(exc: Exception, url: str) -> Outcome:
    """A request that got no HTTP answer (timeout, DNS, refused, TLS) -> transient."""
    what = type(exc).__name__
    return Outcome(
        TRANSIENT, None, None, f"cloud.transport_error: {url}: {what}: {_short(str(exc))}", url=url
    )


class CloudClient:
    """A thin, synchronous client. Create one per use; close it (or use ``with``)."""

    def __init__(self, config: Config, *, timeout: httpx.Timeout | None = None) -> None:
        # Raises PlaceholderBaseURL before any socket is opened.
        self.base_url = require_real_base_url(config).rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=ssl_context(config),
            trust_env=False,
            proxy=config.cloud.proxy,
            timeout=timeout or TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": _user_agent()},
        )

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Outcome:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        if content is not None:
            all_headers.setdefault("Content-Type", "application/json")
        url = f"{self.base_url}{path}"
        try:
            response = self._http.request(
                method, path, json=json_body, content=content, headers=all_headers
            )
        except httpx.HTTPError as exc:
            return classify_exception(exc, url)
        except (OSError, ssl.SSLError) as exc:
            return classify_exception(exc, url)
        return classify_response(response)

    def whoami(self, key: str) -> Outcome:
        return self._call("GET", PATH_WHOAMI, key=key)

    def pair(self, code: str, machine_name: str) -> Outcome:
        return self._call("POST", PATH_PAIR, json_body={"code": code, "machine_name": machine_name})

    def revoke(self, key: str) -> Outcome:
        return self._call("POST", PATH_REVOKE, key=key)

    def send_batch(self, key: str, body: bytes, idempotency_key: str) -> Outcome:
        return self._call(
            "POST",
            PATH_BATCH,
            key=key,
            content=body,
            headers={"Idempotency-Key": idempotency_key},
        )


def _user_agent() -> str:
    from halton_meter import __version__

    return f"halton-meter/{__version__}"
