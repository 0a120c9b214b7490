"""MQTT framed transport vs raw aiomqtt publishing the same payload bytes, through a Mosquitto
that the benchmark starts on a free loopback port.

Framed: stream.transports MqttPublisher -> MqttSubscriber, i.e. Frame -> encode_payload -> bounded
buffer -> publish window -> aiomqtt, and on the far side FrameDecoder (validation) ->
SequenceTracker. Raw: aiomqtt clients with the same options publishing the very same payload to
the same topic at the same QoS: for QoS 1 with the same number of publishes in flight
(``max_inflight``), for QoS 0 one awaited publish after the other, as the framed publisher does.
The receiver subscribes to that one topic and only counts messages.

Sender and receiver run in separate spawn processes; the sender's rate includes waiting for the
last acknowledgement.

    python bench/bench_mqtt_transport.py [--quick] [--reps N] [--only TEXT] [--profile LINES]
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiomqtt
from common import (
    ECHEM_100,
    IMAGE_64KIB,
    Bench,
    Case,
    Meter,
    Row,
    Variant,
    check_idle,
    clocks,
    finish_send,
    guard,
    mosquitto,
    parse_args,
    print_table,
    ready,
    receive_frames,
    send_frames,
    versions,
)

from stream.codec import encode_payload
from stream.topics import topic_for
from stream.transports import TransportConfig
from stream.transports.mqtt import MqttPublisher, MqttSubscriber

MAX_INFLIGHT = TransportConfig.model_fields["max_inflight"].default  # framed default: 100
DEADLINE_S = 100.0


def _cfg(port: int, qos: int) -> TransportConfig:
    return TransportConfig(url=f"mqtt://127.0.0.1:{port}", qos=qos, max_inflight=MAX_INFLIGHT)


def wire(case: Case) -> tuple[str, bytes]:
    """Topic and payload the framed publisher sends for frame 0 of ``case``."""
    frame = case.frame(0, case.make_arrays())
    return topic_for(frame), encode_payload(frame)


def _client(port: int, role: str, **kwargs: Any) -> aiomqtt.Client:
    # the options stream.transports.mqtt uses, apart from TLS and credentials
    return aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{role}-{uuid.uuid4().hex[:8]}",
                          clean_session=True, keepalive=30, timeout=10, **kwargs)


# -- framed: stream.transports ----------------------------------------------------------------


def tx_framed(port: int, n: int, case: Case, qos: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        pub = MqttPublisher(_cfg(port, qos))
        await pub.start()
        await asyncio.wait_for(pub.connected.wait(), 10)
        start = clocks()
        await send_frames(pub.publish, case, n)
        await pub.flush(DEADLINE_S)
        result = finish_send(start, pub.sent)
        await pub.close()
        return result
    return asyncio.run(run())


def rx_framed(port: int, n: int, case: Case, qos: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        sub = MqttSubscriber(_cfg(port, qos), [wire(case)[0]])
        return await receive_frames(sub, n, DEADLINE_S,
                                    wait_ready=lambda: asyncio.wait_for(sub.subscribed.wait(), 10))
    return asyncio.run(run())


# -- raw: aiomqtt -----------------------------------------------------------------------------


def tx_raw(port: int, n: int, case: Case, qos: int) -> dict[str, Any]:
    topic, payload = wire(case)

    async def run() -> dict[str, Any]:
        async with _client(port, "pub", max_inflight_messages=MAX_INFLIGHT) as client:
            client.pending_calls_threshold = MAX_INFLIGHT  # a full window is expected, not news
            start = clocks()
            if qos == 0:
                for _ in range(n):
                    await client.publish(topic, payload, qos=0)
            else:
                window = asyncio.Semaphore(MAX_INFLIGHT)
                tasks: set[asyncio.Task] = set()

                async def one() -> None:
                    try:
                        await client.publish(topic, payload, qos=qos)
                    finally:
                        window.release()

                for _ in range(n):
                    await window.acquire()
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
            return finish_send(start, n)
    return asyncio.run(run())


def rx_raw(port: int, n: int, case: Case, qos: int) -> dict[str, Any]:
    topic, _ = wire(case)

    async def run() -> dict[str, Any]:
        meter = Meter(n)
        async with _client(port, "sub") as client:
            await client.subscribe(topic, qos=qos)

            async def consume() -> None:
                async for _msg in client.messages:
                    meter.hit()
                    if meter.n >= n:
                        return

            task = asyncio.create_task(consume())
            ready()
            await guard(task, meter, DEADLINE_S)
        return meter.result()
    return asyncio.run(run())


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    reps = args.reps or (3 if args.quick else 5)
    # (case, frames per run, quick frames per run)
    plan = [(ECHEM_100, 10_000, 1_000), (IMAGE_64KIB, 5_000, 500)]
    print(f"MQTT framed vs raw aiomqtt; {versions()}, aiomqtt {aiomqtt.__version__}; "
          f"reps {reps}")
    check_idle()
    rows = []
    with mosquitto() as broker_port, Bench() as bench:
        print(f"  mosquitto on 127.0.0.1:{broker_port}", flush=True)
        for case, n_full, n_quick in plan:
            if args.only not in case.name:
                continue
            n = n_quick if args.quick else n_full
            for qos in (1, 0):
                framed = Variant(f"framed qos{qos}", rx_framed, tx_framed, (case, qos))
                raw = Variant(f"raw qos{qos}", rx_raw, tx_raw, (case, qos))
                if args.profile:
                    for v in (framed, raw):
                        bench.profile(v, broker_port, n, args.profile)
                    continue
                print(f"  {case.name}, QoS {qos}: {n:,} frames x {reps} reps ...", flush=True)
                runs = bench.compare([framed, raw], n, reps, lambda: broker_port)
                size = len(wire(case)[1])
                note = f"{size:,} B/payload" + (f", {MAX_INFLIGHT} in flight" if qos else "")
                rows.append(Row(f"{case.name} QoS {qos}", runs[framed.label], runs[raw.label],
                                size, note=note))
    if rows:
        print_table("MQTT: framed (MqttPublisher -> MqttSubscriber) vs raw aiomqtt, same payloads",
                    rows)


if __name__ == "__main__":
    main()
