"""MQTT transport through aiomqtt (the maintained successor of asyncio-mqtt).

Publisher: a bounded outgoing buffer and a background task that connects, publishes with a window
of in-flight QoS 1 messages, and on any connection loss reconnects with exponential backoff and
jitter, re-sending every message not yet acknowledged. Nothing is lost across a broker restart at
QoS 1; a re-sent message may arrive twice, and the receiver's sequence tracker drops the copy.

Subscriber: a persistent session (``clean_session=False``) when ``client_id`` is set, so the broker
queues QoS 1 messages while the subscriber reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiomqtt

from ..codec import encode_json, encode_payload
from ..frame import Frame
from ..secrets import read_secret
from ..topics import topic_for
from .base import Publisher, Subscriber, TransportConfig

log = logging.getLogger("opmon.transport.mqtt")


def _client_kwargs(cfg: TransportConfig, identifier: str, clean_session: bool) -> dict:
    kwargs: dict = {
        "hostname": cfg.host,
        "port": cfg.port,
        "identifier": identifier,
        "clean_session": clean_session,
        "keepalive": 30,
        "timeout": 10,
    }
    if cfg.username:
        kwargs["username"] = cfg.username
        kwargs["password"] = read_secret(f"{cfg.url} password", cfg.password_env, cfg.password_file)
    if cfg.scheme == "mqtts" or cfg.tls_ca:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca)
        if cfg.tls_cert:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_insecure:
            ctx.check_hostname = False
        kwargs["tls_context"] = ctx
    return kwargs


class _Backoff:
    def __init__(self, cfg: TransportConfig):
        self.cfg = cfg
        self.delay = cfg.reconnect_min_s

    def reset(self) -> None:
        self.delay = self.cfg.reconnect_min_s

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, self.cfg.reconnect_max_s)


class MqttPublisher(Publisher):
    def __init__(self, cfg: TransportConfig):
        super().__init__(cfg)
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=cfg.max_buffered)
        self._unacked: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        self._next_id = 0
        self._task: asyncio.Task | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.reconnects = 0
        self.connected = asyncio.Event()
        self._encode = encode_json if cfg.format == "json" else encode_payload
        self._identifier = cfg.client_id or f"opmon-pub-{uuid.uuid4().hex[:12]}"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-publisher {self.cfg.url}")

    def _check_running(self) -> None:
        """Raise what stopped the background task, if it stopped (e.g. a missing secret):
        frames would otherwise pile up in the buffer with nothing left to send them."""
        task = self._task
        if task is not None and task.done() and not self._closing:
            if task.cancelled():
                raise RuntimeError(f"{self.cfg.url}: the MQTT publisher task was cancelled")
            exc = task.exception()
            raise RuntimeError(f"{self.cfg.url}: the MQTT publisher task stopped: {exc!r}") from exc

    async def publish(self, frame: Frame) -> None:
        if self._task is None:
            await self.start()
        self._check_running()
        self._idle.clear()
        await self._queue.put((topic_for(frame), self._encode(frame)))

    @property
    def buffered(self) -> int:
        return self._queue.qsize() + len(self._unacked)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every message so far is acknowledged by the broker."""
        async def drained() -> None:
            while self.buffered:
                self._check_running()
                self._idle.clear()
                # Re-check now and then: a task that dies never sets the idle event.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), 1.0)
        await asyncio.wait_for(drained(), timeout)

    async def close(self, timeout: float = 30.0) -> None:
        try:
            await self.flush(timeout)
        except TimeoutError:
            log.error("%s: closing with %d messages not acknowledged", self.cfg.url, self.buffered)
        except RuntimeError as exc:
            log.error("%s: closing with %d messages not sent: %s", self.cfg.url, self.buffered, exc)
        self._closing = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.connected.clear()

    async def _run(self) -> None:
        backoff = _Backoff(self.cfg)
        while not self._closing:
            try:
                kwargs = _client_kwargs(self.cfg, self._identifier, clean_session=True)
                client = aiomqtt.Client(max_inflight_messages=self.cfg.max_inflight, **kwargs)
                # A full window is normal here: without this aiomqtt logs "There are N pending
                # publish calls" for every publish beyond 10 in flight.
                client.pending_calls_threshold = self.cfg.max_inflight + 10
                async with client:
                    backoff.reset()
                    self.connected.set()
                    await self._pump(client)
            except (aiomqtt.MqttError, OSError) as exc:
                self.connected.clear()
                self.reconnects += 1
                log.warning("%s: connection lost (%s); %d messages kept for re-send",
                            self.cfg.url, exc, self.buffered)
                await backoff.sleep()

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish until the connection fails, then raise MqttError. Every message not yet
        acknowledged stays in ``_unacked``, in order, for the next connection."""
        window = asyncio.Semaphore(self.cfg.max_inflight if self.cfg.qos else 1)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sends: set[asyncio.Task] = set()

        def fail(exc: BaseException) -> None:
            if not failed.done():
                failed.set_exception(exc)

        async def send(msg_id: int, topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=self.cfg.qos)
            except Exception as exc:  # noqa: BLE001 - MqttError: reconnect; others: surfaced
                fail(exc)
                return
            finally:
                window.release()
            self._unacked.pop(msg_id, None)
            self.sent += 1
            if not self.buffered:
                self._idle.set()

        def launch(msg_id: int, topic: str, payload: bytes) -> None:
            task = asyncio.create_task(send(msg_id, topic, payload))
            sends.add(task)
            task.add_done_callback(sends.discard)

        async def send_inline(msg_id: int, topic: str, payload: bytes) -> None:
            # QoS 0 has nothing to wait for: no task per message
            await client.publish(topic, payload, qos=0)
            window.release()
            self._unacked.pop(msg_id, None)
            self.sent += 1
            if not self.buffered:
                self._idle.set()

        dispatch = launch if self.cfg.qos else send_inline

        async def feed() -> None:
            for msg_id, (topic, payload) in list(self._unacked.items()):  # re-send, oldest first
                await window.acquire()
                await _maybe(dispatch(msg_id, topic, payload))
            while True:
                await window.acquire()
                topic, payload = await self._queue.get()
                # Same step as the get: ``buffered`` never misses a message between the queue
                # and ``_unacked``, so ``flush`` cannot return early.
                msg_id = self._next_id
                self._next_id += 1
                self._unacked[msg_id] = (topic, payload)  # kept until acknowledged
                await _maybe(dispatch(msg_id, topic, payload))

        async def watch() -> None:
            # A publisher subscribes to nothing, so this iterator yields nothing and raises
            # MqttError as soon as the connection is lost. Without it a lost connection is only
            # noticed on the next publish, or when an in-flight one times out.
            async for _ in client.messages:
                pass
            raise aiomqtt.MqttError("message iterator ended")

        feeder = asyncio.create_task(feed(), name="mqtt-publisher feed")
        watcher = asyncio.create_task(watch(), name="mqtt-publisher watch")
        try:
            done, _ = await asyncio.wait({feeder, watcher, failed},
                                         return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                fut.result()  # raises: feed and watch never return, failed only fails
        finally:
            if failed.done():
                failed.exception()  # retrieved: no "exception never retrieved" warning
            else:
                failed.cancel()
            pending = [feeder, watcher, *sends]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def _maybe(result: object) -> None:
    if asyncio.iscoroutine(result):
        await result


class MqttSubscriber(Subscriber):
    def __init__(self, cfg: TransportConfig, topics: list[str]):
        super().__init__(cfg, topics)
        self.reconnects = 0
        self.subscribed = asyncio.Event()

    async def _raw(self) -> AsyncIterator[object]:
        backoff = _Backoff(self.cfg)
        persistent = self.cfg.client_id is not None
        identifier = self.cfg.client_id or f"opmon-sub-{uuid.uuid4().hex[:12]}"
        while True:
            try:
                kwargs = _client_kwargs(self.cfg, identifier, clean_session=not persistent)
                async with aiomqtt.Client(**kwargs) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=self.cfg.qos)
                    backoff.reset()
                    self.subscribed.set()
                    async for message in client.messages:
                        yield message
            except (aiomqtt.MqttError, OSError) as exc:
                self.subscribed.clear()
                self.reconnects += 1
                log.warning("%s: subscriber connection lost (%s); reconnecting", self.cfg.url, exc)
                await backoff.sleep()

    def _decode(self, raw: object) -> list[Frame]:
        payload = raw.payload  # type: ignore[attr-defined]
        if isinstance(payload, str):
            payload = payload.encode()
        return [self.decoder.decode_payload(payload)]
