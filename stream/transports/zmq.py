"""ZeroMQ transport: PUB/SUB for live fan-out, PUSH/PULL for lossless paths. Zero-copy both ways.

By default the publishing end binds for PUB/SUB (many subscribers connect) and the receiving end
binds for PUSH/PULL (many adapters push into one worker). ``bind`` overrides this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import zmq
import zmq.asyncio

from ..codec import encode_parts
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
    """Sends each frame as soon as the event loop gets to it. A frame under 64 KiB travels as one
    packed part (header and arrays, the payload form); a larger one as a header part followed by
    its arrays, zero-copy. Frames published back to back (a replay, a backlog) go out together
    in one ZeroMQ message, ``[topic, frame parts, frame parts, ...]``, up to ``max_batch_frames`` frames or ``max_batch_bytes``. A batch holds
    consecutive frames only, so order is kept; on PUB/SUB they also share one topic, so
    subscriptions filter exactly. An idle link adds no latency: a lone frame leaves on the next
    turn of the event loop."""

    def __init__(self, cfg: TransportConfig):
        super().__init__(cfg)
        self.pubsub = cfg.scheme == "zmq+pubsub"
        self._end = _ZmqEnd(cfg, "publisher", zmq.PUB if self.pubsub else zmq.PUSH)
        self._raw_sock = zmq.Socket.shadow(self._end.sock.underlying)
        self._topics: dict[tuple[str, str], bytes] = {}
        self._batch: list = []
        self._batch_topic = b""
        self._batch_frames = 0
        self._batch_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._sending: asyncio.Future | None = None
        self.messages = 0

    async def publish(self, frame: Frame) -> None:
        key = (frame.stream, frame.kind)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = topic_for(frame).encode()
        parts = encode_parts(frame)
        size = sum(a.nbytes for a in frame.arrays.values())
        if self._batch and (self._batch_frames >= self.cfg.max_batch_frames
                            or self._batch_bytes + size > self.cfg.max_batch_bytes
                            or (self.pubsub and topic != self._batch_topic)):
            await self.flush()
        if not self._batch:
            self._batch.append(topic)
            self._batch_topic = topic
        self._batch.extend(parts)
        self._batch_frames += 1
        self._batch_bytes += size
        self.sent += 1
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_now)

    def _take_batch(self) -> list:
        batch, self._batch = self._batch, []
        self._batch_frames = self._batch_bytes = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        return batch

    def _flush_now(self) -> None:
        """Event-loop callback: send what is pending without waiting, else hand it to a task."""
        self._flush_handle = None
        if self._batch and (self._sending is None or self._sending.done()):
            batch = self._take_batch()
            if not self._try_send(batch):
                self._sending = asyncio.ensure_future(self._send_waiting(batch))

    def _try_send(self, batch: list) -> bool:
        try:
            self._raw_sock.send_multipart(batch, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self.messages += 1
        return True

    async def _send_waiting(self, batch: list) -> None:
        await self._end.sock.send_multipart(batch, copy=False)
        self.messages += 1

    async def flush(self) -> None:
        if self._sending is not None:
            await self._sending  # keeps order behind a send still waiting for the socket
            self._sending = None
        if self._batch:
            batch = self._take_batch()
            if not self._try_send(batch):  # HWM reached: PUSH waits here (backpressure)
                await self._send_waiting(batch)

    async def close(self) -> None:
        await self.flush()
        self._end.close_socket()


class ZmqSubscriber(Subscriber):
    def __init__(self, cfg: TransportConfig, topics: list[str]):
        super().__init__(cfg, topics)
        pubsub = cfg.scheme == "zmq+pubsub"
        self._end = _ZmqEnd(cfg, "subscriber", zmq.SUB if pubsub else zmq.PULL)
        if pubsub:
            for prefix in {zmq_prefix(t) for t in topics}:
                self._end.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        # ZeroMQ filters by prefix only; finer MQTT-style patterns are checked per frame.
        self._exact = topics in (["opmon/#"], ["#"]) or (
            pubsub and all(t.endswith("#") and "+" not in t for t in topics))
        self.messages = 0

    async def _raw(self) -> AsyncIterator[object]:
        sock = self._end.sock
        raw = zmq.Socket.shadow(sock.underlying)
        burst = 0
        while True:
            try:  # take what is already queued without a trip through the event loop
                parts = raw.recv_multipart(zmq.NOBLOCK, copy=False)
                burst += 1
                if burst >= 64:
                    burst = 0
                    await asyncio.sleep(0)  # let other tasks run during a long burst
            except zmq.Again:
                burst = 0
                parts = await sock.recv_multipart(copy=False)
            self.messages += 1
            yield parts

    def _decode(self, raw: object) -> list[Frame]:
        frames, error = self.decoder.decode_batch(raw[1:])  # type: ignore[index]
        if error is not None:
            if not frames:
                raise error
            self.reject(self.cfg.url, error)
        if not self._exact:
            frames = [f for f in frames if any(mqtt_matches(p, topic_for(f)) for p in self.topics)]
        return frames

    async def close(self) -> None:
        self._end.close_socket()
