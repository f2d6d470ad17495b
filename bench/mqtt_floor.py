"""The MQTT floor: a client of the broker that answers the docks at once and does nothing else.

    python bench/mqtt_floor.py --port 1883 [--host 127.0.0.1] [--mount-point floor/] [--nagle]

It subscribes as the server's transport does (MQTT 5, the same aiomqtt client library, QoS 1
on ``thing/product/+/requests``, ``thing/product/+/events`` and ``sys/product/+/status``, a
persistent session) and answers each ``file_upload_callback`` with an ``events_reply``
``{"result": 0}`` and each ``storage_config_get`` with a ``requests_reply`` carrying a fixed
storage configuration, each reply published at QoS 1 as soon as the message is read (a task
per reply, as the transport does, so that one waiting for its PUBACK holds nothing up). No
topic or envelope checks, no device directory, no database, no STS. ``bench/mqtt.py``'s
server-to-floor ratio is the share of this ceiling the transport and the service keep.

Its socket has TCP_NODELAY, as a client that answers small messages at once should: with
Nagle's algorithm on (paho-mqtt's default, which aiomqtt keeps) a reply written right after the
PUBACK of the message it answers waits for the broker to acknowledge that PUBACK, and Linux
delays that acknowledgement by up to 40 ms. ``--nagle`` leaves it on, to measure what that costs.

``--mount-point``: the broker listener's ``mount_point``. Some Mosquitto versions (2.0.11) hand
a client of such a listener the topic with the mount point in front, which the client's own
publications must not carry (the listener adds it again); the floor removes it before it
appends ``_reply``.

Prints ``mqtt floor subscribed on mqtt://HOST:PORT`` once subscribed; SIGTERM or SIGINT stop it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import time
from typing import Any, Dict, Set

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SUBSCRIPTIONS = ("thing/product/+/requests", "thing/product/+/events", "sys/product/+/status")

# storage_config_get's output, the shape of Pilot 2's sts data (protocol section 6.2), fixed.
STORAGE_OUTPUT: Dict[str, Any] = {
    "bucket": "media",
    "credentials": {"access_key_id": "3POX6W77L1EF4C86L2RE",
                    "access_key_secret": "9NG2P2yJaUrck576CkdRoRbchKssJiZygi5D93CBsduY",
                    "expire": 3300, "security_token": "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9." + "x" * 400},
    "endpoint": "http://127.0.0.1:8333", "object_key_prefix": "media/bench-ws", "provider": "minio",
    "region": "us-east-1",
}
ANSWERS: Dict[str, Dict[str, Any]] = {
    "file_upload_callback": {"result": 0},
    "storage_config_get": {"result": 0, "output": STORAGE_OUTPUT},
}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


async def serve(host: str, port: int, stop: asyncio.Event, mount_point: str = "", nagle: bool = False) -> None:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600  # as the transport's default
    tasks: Set[asyncio.Future] = set()
    async with aiomqtt.Client(host, port, identifier="dji-media-bench-floor", protocol=aiomqtt.ProtocolVersion.V5,
                              clean_start=False, properties=properties,
                              socket_options=[] if nagle else [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as client:
        await client.subscribe([(topic, 1) for topic in SUBSCRIPTIONS])
        print(f"mqtt floor subscribed on mqtt://{host}:{port}", flush=True)

        async def receive() -> None:
            async for message in client.messages:
                request = json.loads(bytes(message.payload))
                data = ANSWERS.get(request.get("method"))
                if data is None:
                    continue
                reply = _ENCODER.encode({"tid": request.get("tid"), "bid": request.get("bid"),
                                         "timestamp": int(time.time() * 1000), "method": request["method"],
                                         "data": data}).encode()
                topic = message.topic.value
                if mount_point and topic.startswith(mount_point):
                    topic = topic[len(mount_point):]
                task = asyncio.ensure_future(client.publish(topic + "_reply", reply, qos=1))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        receiving = asyncio.ensure_future(receive())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, stopping):
            task.cancel()
        await asyncio.gather(receiving, stopping, *tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount-point", default="", help="the listener's mount_point, removed from topics")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle's algorithm on (no TCP_NODELAY)")
    args = parser.parse_args()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop, args.mount_point, args.nagle)

    asyncio.run(run())


if __name__ == "__main__":
    main()
