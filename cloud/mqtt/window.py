"""How many QoS 1 publications the agent and the market keep awaiting their PUBACK at once.

One at a time costs a broker round trip per message; a round of 1,000 sites publishes ~2,000
(transactions, commands; the market as many tenders and confirms). The window was 8, because
aiomqtt logs a warning per call past 10 pending ones and paho keeps at most 20 in flight; at 8 the
round's publications waited on round trips through an event loop that was busy with everything
else (docs/loop-bench.md). Both limits are settings: `windowed_client` raises them with the window.
"""

from __future__ import annotations

from typing import Any

import aiomqtt

PUBLISH_WINDOW = 32


def windowed_client(*args: Any, **kwargs: Any) -> aiomqtt.Client:
    """An aiomqtt.Client (same arguments) whose paho keeps PUBLISH_WINDOW QoS 1 publications in
    flight and whose warning starts past PUBLISH_WINDOW pending calls (plus a subscribe or two)."""
    client = aiomqtt.Client(*args, max_inflight_messages=PUBLISH_WINDOW, **kwargs)
    client.pending_calls_threshold = PUBLISH_WINDOW + 8
    return client
