"""The demo's embedded amqtt broker: sessions survive clients that connect and subscribe at once."""

from __future__ import annotations

import asyncio

import pytest

from tendril_transactive.cloud.demo.broker import embedded_broker

pytestmark = pytest.mark.unit

CLIENTS = 40


def test_the_subscription_table_can_grow_while_it_is_walked() -> None:
    """amqtt walks it with an await inside the loop; a subscription added meanwhile must not end
    the walk (a plain dict raises RuntimeError here)."""

    async def main() -> list[str]:
        broker = embedded_broker()
        await broker.start()
        try:
            table = broker._broker._subscriptions
            table["a/#"] = []
            seen = []
            for topic in table:
                seen.append(topic)
                table[f"b/{len(seen)}"] = []
            return seen
        finally:
            await broker.stop()

    assert asyncio.run(main()) == ["a/#"]


def test_many_clients_connecting_and_subscribing_at_once_all_get_a_message() -> None:
    import aiomqtt

    async def main() -> int:
        broker = embedded_broker()
        await broker.start()
        try:
            # Retained messages make amqtt's walk of the table await a send for every topic in it,
            # which is when another client's SUBSCRIBE can land (as the demo's retained statuses do).
            async with aiomqtt.Client(broker.host, broker.port, identifier="retainer") as pub:
                for i in range(CLIENTS):
                    await pub.publish(f"t/{i}", b"r", qos=1, retain=True)
            ready = asyncio.Barrier(CLIENTS + 1)

            async def client(i: int) -> bool:
                async with aiomqtt.Client(broker.host, broker.port, identifier=f"c{i}") as c:
                    await c.subscribe(f"t/{i}", qos=1)
                    await ready.wait()
                    async with asyncio.timeout(20):
                        async for msg in c.messages:
                            if msg.payload == b"x":
                                return True
                return False

            tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
            async with asyncio.timeout(30):
                await ready.wait()
            async with aiomqtt.Client(broker.host, broker.port, identifier="pub") as pub:
                for i in range(CLIENTS):
                    await pub.publish(f"t/{i}", b"x", qos=1)
            return sum(await asyncio.gather(*tasks))
        finally:
            await broker.stop()

    assert asyncio.run(main()) == CLIENTS
