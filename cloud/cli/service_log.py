"""Logging for the long-running services (ingest, market, agent): their progress lines are their
output, so their logger says INFO even when `tendril` runs at the default WARNING."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def progress_logging(log: logging.Logger) -> None:
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format=FORMAT)
