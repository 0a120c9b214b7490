"""The small interface every transport implements, and its config schema."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from ..codec import DEFAULT_MAX_PAYLOAD, FrameDecoder
from ..frame import Frame, FrameError
from ..sequence import SequenceTracker

log = logging.getLogger("opmon.transport")

SCHEMES = ("inproc", "zmq+pubsub", "zmq+pushpull", "mqtt", "mqtts")


class TransportConfig(BaseModel):
    """Options of one link. Secrets are named by ``*_env`` or ``*_file``, never given inline."""

    model_config = ConfigDict(extra="forbid")

    url: str
    # ZeroMQ high-water mark in messages, each end. A message holds up to max_batch_frames
    # frames or max_batch_bytes of arrays (a larger frame travels alone), so each end queues at
    # most about hwm x max(max_batch_bytes, largest frame) bytes.
    hwm: int = 1000
    max_batch_frames: int = 64             # ZeroMQ: frames sent back to back share a message
    max_batch_bytes: int = 4 << 20
    bind: Literal["auto", "publisher", "subscriber"] = "auto"
    qos: Literal[0, 1] = 1                 # MQTT
    format: Literal["binary", "json"] = "binary"  # MQTT payload form
    client_id: str | None = None           # MQTT; set it for a persistent session
    max_buffered: int = 100_000            # bounded outgoing buffer (frames)
    max_inflight: int = 100                # MQTT QoS 1 window
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 10.0
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    curve_secret_key_file: str | None = None     # own certificate (zmq.auth format)
    curve_server_key_file: str | None = None     # connecting side: the server's public cert
    curve_authorized_keys_dir: str | None = None  # binding side: allowed client certs

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            raise ValueError(f"unknown transport scheme {scheme!r}; expected one of {SCHEMES}")
        return url

    @field_validator("qos", mode="before")
    @classmethod
    def _qos_from_query(cls, qos: object) -> object:
        return int(qos) if isinstance(qos, str) and qos.isdigit() else qos

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        if port is not None:
            return port
        return 8883 if self.scheme == "mqtts" else 1883


class Publisher(ABC):
    """Sends frames. ``publish`` awaits when the outgoing buffer is full (backpressure)."""

    def __init__(self, cfg: TransportConfig):
        self.cfg = cfg
        self.sent = 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    async def publish(self, frame: Frame) -> None: ...

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Hand everything published so far to the transport."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Subscriber(ABC):
    """Receives frames. Counts rejects (with the reason) and sequence gaps per stream."""

    def __init__(self, cfg: TransportConfig, topics: list[str]):
        self.cfg = cfg
        self.topics = topics
        self.decoder = FrameDecoder(cfg.max_payload_bytes)
        self.tracker = SequenceTracker()
        self.received = 0
        self.rejects = 0
        self.last_reject: str | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def _raw(self) -> AsyncIterator[object]:
        """Yields raw messages; ``_decode`` turns one into frames."""

    @abstractmethod
    def _decode(self, raw: object) -> list[Frame]:
        """The frames of one message; raises FrameError if none can be decoded."""

    def reject(self, where: str, exc: Exception) -> None:
        self.rejects += 1
        self.last_reject = f"{where}: {exc}"
        if self.rejects <= 10 or self.rejects % 1000 == 0:
            log.warning("rejected frame #%d from %s: %s", self.rejects, where, exc)

    async def __aiter__(self) -> AsyncIterator[Frame]:
        async for raw in self._raw():
            try:
                frames = self._decode(raw)
            except FrameError as exc:
                self.reject(self.cfg.url, exc)
                continue
            except (RecursionError, ValueError, TypeError, OverflowError, MemoryError) as exc:
                # whatever arrives is untrusted: a message the decoder trips over is a reject,
                # never the end of the receive loop
                self.reject(self.cfg.url, FrameError(None, "payload",
                                                     f"undecodable: {type(exc).__name__}: {exc}"))
                continue
            for frame in frames:
                self.received += 1
                if self.tracker.observe(frame):
                    yield frame

    async def __aenter__(self) -> Subscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
