# Run under MicroPython by bench/tls.py (not a test): QoS 1 publish -> PUBACK round trip of
# tendril_fw's MQTT client, cleartext and TLS (the firmware's own tlsconf context), and the GC
# heap one open session holds.
#   MICROPYPATH=.frozen:firmware/lib micropython firmware/tools/tls_rtt.py PLAIN_PORT TLS_PORT CA N

import asyncio
import gc
import sys
import time

from tendril_fw import tlsconf
from tendril_fw.mqtt_client import MQTTClient


async def measure(port, n, ctx):
    gc.collect()
    free_before = gc.mem_free()
    client = MQTTClient("rtt-%s" % ("tls" if ctx else "plain"), "127.0.0.1", port, keepalive=60,
                        ssl=ctx, server_hostname="localhost")
    t0 = time.ticks_us()
    await client.connect()
    connect_us = time.ticks_diff(time.ticks_us(), t0)
    gc.collect()
    held = free_before - gc.mem_free()
    payload = b"x" * 200  # about a telemetry record
    for _ in range(50):  # warm up
        await client.publish("bench/rtt", payload, 1)
    samples = []
    for _ in range(n):
        t0 = time.ticks_us()
        await client.publish("bench/rtt", payload, 1)
        samples.append(time.ticks_diff(time.ticks_us(), t0))
    await client.disconnect()
    samples.sort()
    return connect_us, held, samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def main():
    plain, tls, ca, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    gc.collect()
    before = gc.mem_free()
    ctx = tlsconf.context({"tls": True, "ca": ca, "client_cert": None, "client_key": None})
    gc.collect()
    print("context_bytes=%d" % (before - gc.mem_free()))
    for name, port, c in (("plain", plain, None), ("tls", tls, ctx), ("plain", plain, None), ("tls", tls, ctx)):
        got = asyncio.run(measure(port, n, c))
        print("%s connect_us=%d session_bytes=%d median_us=%d p99_us=%d" % ((name,) + got))


main()
