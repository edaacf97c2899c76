# One-off measurement (not a test): QoS 1 publish -> PUBACK round trip of tendril_fw's
# MQTT client against a broker, with and without TCP_NODELAY.
#   MICROPYPATH=.frozen:firmware/lib micropython firmware/tools/mqtt_rtt.py PORT [N]

import asyncio
import sys
import time

from tendril_fw import mqtt_client
from tendril_fw.mqtt_client import MQTTClient


async def measure(port, n, nodelay):
    if not nodelay:
        mqtt_client.set_nodelay = lambda writer: False
    client = MQTTClient("rtt-%d" % nodelay, "127.0.0.1", port, keepalive=60)
    await client.connect()
    payload = b"x" * 200
    for _ in range(50):  # warm up
        await client.publish("bench/rtt", payload, 1)
    samples = []
    for _ in range(n):
        t0 = time.ticks_us()
        await client.publish("bench/rtt", payload, 1)
        samples.append(time.ticks_diff(time.ticks_us(), t0))
    await client.disconnect()
    samples.sort()
    return client.nodelay, samples[len(samples) // 2], samples[int(len(samples) * 0.99)], samples[-1]


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    for nodelay in (True, False):
        if not nodelay:
            n = min(n, 100)  # 40+ ms each
        got = asyncio.run(measure(port, n, nodelay))
        print("nodelay=%s n=%d median=%d us p99=%d us max=%d us" % (got[0], n, got[1], got[2], got[3]))


main()
