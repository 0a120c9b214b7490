"""The two write paths: InfluxDB 1.x ``/write`` over plain HTTP (``http.client``, one kept-alive
connection) and ``/api/v2/write`` through influxdb-client's synchronous write (its own retries
off: the ``BatchWriter`` retries, spools and dead-letters). Each ``post`` makes one attempt and
reports the outcome instead of raising."""

from __future__ import annotations

import base64
import email.utils
import http.client
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ..secrets import read_secret
from .config import InfluxSinkConfig


@dataclass(slots=True)
class PostResult:
    status: int | None         # None: no HTTP answer (refused, reset, timed out)
    reason: str = ""           # the server's error text, or the exception
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def rejected(self) -> bool:
        """The data itself was refused (400, 422): retrying the same lines cannot succeed."""
        return self.status in (400, 422)

    @property
    def too_large(self) -> bool:
        return self.status == 413


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: an integer, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _ssl_context(cfg: InfluxSinkConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cfg.tls_ca)


class V1Client:
    """POST ``/write?db=&rp=&precision=ns`` with a gzip'd body on a kept-alive connection."""

    gzip_body = True

    def __init__(self, cfg: InfluxSinkConfig):
        parts = urlsplit(cfg.url)
        self.cfg = cfg
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 8086)
        query = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            query["rp"] = cfg.retention_policy
        self.path = f"{parts.path}/write?{urlencode(query)}"
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if cfg.gzip:
            self.headers["Content-Encoding"] = "gzip"
        token = read_secret(f"{cfg.url} token", cfg.token_env, cfg.token_file)
        password = read_secret(f"{cfg.url} password", cfg.password_env, cfg.password_file)
        if token:
            self.headers["Authorization"] = f"Token {token}"
        elif cfg.username:
            basic = base64.b64encode(f"{cfg.username}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        self.gzip_body = cfg.gzip
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.cfg.timeout_s, context=_ssl_context(self.cfg))
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.cfg.timeout_s)
        return self._conn

    def post(self, body: bytes) -> PostResult:
        """One attempt. ``body`` is gzip'd when the config says so."""
        try:
            conn = self._connection()
            conn.request("POST", self.path, body, self.headers)
            resp = conn.getresponse()
            text = resp.read()
            retry_after = parse_retry_after(resp.getheader("Retry-After"))
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return PostResult(resp.status, text.decode("utf-8", "replace").strip(), retry_after)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return PostResult(None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class V2Client:
    """``/api/v2/write`` through influxdb-client's synchronous WriteApi, one call per batch."""

    gzip_body = False  # influxdb-client compresses itself (enable_gzip)

    def __init__(self, cfg: InfluxSinkConfig):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = read_secret(f"{cfg.url} token", cfg.token_env, cfg.token_file)
        self.cfg = cfg
        self.client = InfluxDBClient(url=cfg.url, token=token or "", org=cfg.org,
                                     timeout=int(cfg.timeout_s * 1000), enable_gzip=cfg.gzip,
                                     ssl_ca_cert=cfg.tls_ca, retries=False)
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def post(self, body: bytes) -> PostResult:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=body,
                                 write_precision=WritePrecision.NS)
            return PostResult(204)
        except ApiException as exc:
            headers = exc.headers or {}
            body_text = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) \
                else str(exc.body or exc.reason or "")
            return PostResult(exc.status, body_text.strip(),
                              parse_retry_after(headers.get("Retry-After")))
        except InfluxDBError as exc:
            status = getattr(exc.response, "status", None) if exc.response is not None else None
            return PostResult(status, str(exc))
        except Exception as exc:  # urllib3 connection errors: refused, reset, timeout
            return PostResult(None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.write_api.close()
        self.client.close()


def open_client(cfg: InfluxSinkConfig) -> V1Client | V2Client:
    return V1Client(cfg) if cfg.api == "v1" else V2Client(cfg)
