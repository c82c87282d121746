"""Choose the Queue adapter from settings: pgqueue (Lite default) or SQS."""

from __future__ import annotations

import asyncpg

from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.config import Settings
from trace_platform.domain.errors import ConfigError
from trace_platform.ports import Queue


def queue_from_settings(settings: Settings, pool: asyncpg.Pool, listen_dsn: str) -> Queue:
    if settings.queue_backend == "sqs":
        from trace_platform.adapters.sqs_queue import SqsQueue

        try:
            return SqsQueue(prefix=settings.sqs_queue_prefix)
        except ImportError:  # boto3 is part of the [aws] extra
            raise ConfigError("TRACE_QUEUE_BACKEND=sqs needs the [aws] extra (boto3)") from None
    return PgQueue(pool, listen_dsn=listen_dsn)
