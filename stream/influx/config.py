"""Config schema of the InfluxDB sink (``type = "influxdb"``)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..sinks.base import SinkConfig


class InfluxSinkConfig(SinkConfig):
    """``api = "v1"``: InfluxDB 1.x ``/write`` (also 2.x/3.x v1-compatibility) with ``database``,
    optional ``retention_policy`` and ``username`` + ``password_env``/``password_file`` (basic
    auth) or ``token_env``/``token_file``. ``api = "v2"``: ``/api/v2/write`` through
    influxdb-client with ``org``, ``bucket`` and ``token_env``/``token_file``."""

    kinds: list[str] = ["result.*", "event", "alert", "health"]
    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v1"
    database: str | None = None            # v1
    retention_policy: str | None = None    # v1
    username: str | None = None            # v1 basic auth
    password_env: str | None = None
    password_file: str | None = None
    org: str | None = None                 # v2
    bucket: str | None = None              # v2
    token_env: str | None = None
    token_file: str | None = None
    tls_ca: str | None = None              # https: CA bundle to trust
    batch_size: int = Field(5000, ge=1)            # lines per request
    flush_interval_s: float = Field(1.0, gt=0)     # a partial batch waits at most this long
    gzip: bool = True
    gzip_level: int = Field(1, ge=1, le=9)
    timeout_s: float = Field(10.0, gt=0)           # one request
    retry_min_s: float = Field(0.2, gt=0)          # first backoff; doubles per failure
    retry_max_s: float = Field(30.0, gt=0)
    retry_after_max_s: float = Field(300.0, gt=0)  # cap on a server's Retry-After
    max_pending_batches: int = Field(4, ge=1)      # in memory, waiting for the writer
    spool_dir: str = "spool/influxdb"
    spool_max_bytes: int = Field(1 << 30, ge=1)    # on disk (gzip); full = backpressure
    dead_letter_path: str | None = None            # default: <spool_dir>/dead-letter.jsonl
    close_timeout_s: float = Field(10.0, ge=0)     # close(): time to drain before spooling
    unique_window: int = Field(16, ge=1)           # timestamps remembered per series

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _target(self) -> InfluxSinkConfig:
        if self.api == "v1" and not self.database:
            raise ValueError("api 'v1' needs database")
        if self.api == "v2" and not (self.org and self.bucket):
            raise ValueError("api 'v2' needs org and bucket")
        if self.api == "v2" and (self.username or self.password_env or self.password_file):
            raise ValueError("api 'v2' authenticates with token_env or token_file")
        return self
