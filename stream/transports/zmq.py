"""ZeroMQ transport: PUB/SUB for live fan-out, PUSH/PULL for lossless paths. Zero-copy both ways.

By default the publishing end binds for PUB/SUB (many subscribers connect) and the receiving end
binds for PUSH/PULL (many adapters push into one worker). ``bind`` overrides this.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import zmq
import zmq.asyncio

from ..codec import encode_multipart
from ..frame import Frame
from ..topics import mqtt_matches, topic_for, zmq_prefix
from .base import Publisher, Subscriber, TransportConfig

log = logging.getLogger("opmon.transport.zmq")


def _endpoint(cfg: TransportConfig) -> str:
    return f"tcp://{cfg.host}:{cfg.port}"


def _binds(cfg: TransportConfig, side: str) -> bool:
    if cfg.bind != "auto":
        return cfg.bind == side
    pubsub = cfg.scheme == "zmq+pubsub"
    return (side == "publisher") == pubsub


class _ZmqEnd:
    def __init__(self, cfg: TransportConfig, side: str, socket_type: int):
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(socket_type)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM if side == "publisher" else zmq.RCVHWM, cfg.hwm)
        self._auth = None
        binds = _binds(cfg, side)
        if cfg.curve_secret_key_file:
            self._setup_curve(cfg, server=binds)
        if binds:
            self.sock.bind(_endpoint(cfg))
        else:
            self.sock.connect(_endpoint(cfg))

    def _setup_curve(self, cfg: TransportConfig, server: bool) -> None:
        import zmq.auth
        public, secret = zmq.auth.load_certificate(cfg.curve_secret_key_file)
        if secret is None:
            raise ValueError(f"{cfg.curve_secret_key_file}: no secret key in the certificate")
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        if server:
            from zmq.auth.asyncio import AsyncioAuthenticator
            self._auth = AsyncioAuthenticator(self.ctx)
            self._auth.start()
            if cfg.curve_authorized_keys_dir:
                self._auth.configure_curve(domain="*",
                                           location=str(Path(cfg.curve_authorized_keys_dir)))
            else:
                self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            self.sock.curve_server = True
        else:
            if not cfg.curve_server_key_file:
                raise ValueError("curve_server_key_file is needed on the connecting side")
            server_public, _ = zmq.auth.load_certificate(cfg.curve_server_key_file)
            self.sock.curve_serverkey = server_public

    def close_socket(self) -> None:
        self.sock.close()
        if self._auth is not None:
            self._auth.stop()


class ZmqPublisher(Publisher):
    def __init__(self, cfg: TransportConfig):
        super().__init__(cfg)
        stype = zmq.PUB if cfg.scheme == "zmq+pubsub" else zmq.PUSH
        self._end = _ZmqEnd(cfg, "publisher", stype)
        self._topics: dict[tuple[str, str], bytes] = {}

    async def publish(self, frame: Frame) -> None:
        key = (frame.stream, frame.kind)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = topic_for(frame).encode()
        await self._end.sock.send_multipart(encode_multipart(frame, topic), copy=False)
        self.sent += 1

    async def close(self) -> None:
        self._end.close_socket()


class ZmqSubscriber(Subscriber):
    def __init__(self, cfg: TransportConfig, topics: list[str]):
        super().__init__(cfg, topics)
        pubsub = cfg.scheme == "zmq+pubsub"
        self._end = _ZmqEnd(cfg, "subscriber", zmq.SUB if pubsub else zmq.PULL)
        if pubsub:
            for prefix in {zmq_prefix(t) for t in topics}:
                self._end.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        # ZeroMQ filters by prefix only; finer MQTT-style patterns are checked here.
        self._exact = all(t.endswith("#") and "+" not in t for t in topics)

    async def _raw(self) -> AsyncIterator[object]:
        sock = self._end.sock
        while True:
            parts = await sock.recv_multipart(copy=False)
            if self._exact or any(mqtt_matches(p, parts[0].bytes.decode(errors="replace"))
                                  for p in self.topics):
                yield parts

    def _decode(self, raw: object) -> Frame:
        return self.decoder.decode_multipart(raw[1:])  # type: ignore[index]

    async def close(self) -> None:
        self._end.close_socket()
