"""kombu's Redis transport, with the one fix Threadline's workers need to outlive a Redis
restart.

When the broker connection drops, the worker releases it and then, closing the channel, tries
to put its unacknowledged messages back, and later acknowledges the replies that finish. Both
go through the channel's QoS, which asks the already released transport for its connection
parameters and fails with `AttributeError: 'NoneType' object has no attribute 'hostname'`
(`kombu/transport/redis.py` `_connparams`). That is not one of the transport's connection
errors, so neither kombu's `ignore_errors` nor Celery's ack handling catches it, and the worker
stops with "Unrecoverable error" (seen on 5 of 5 restarts, kombu 5.7.0, celery 5.7.0; upstream:
celery/kombu#582 and #970 report the same `_connparams` failure on a closed connection).

Here the QoS turns that case into the connection error it is, which kombu and Celery already
handle: the channel closes, the consumer reconnects, and a late ack that can no longer be sent
is logged. The message stays in Redis's unacked set (if Redis kept it) and is delivered again
after the visibility timeout; the run's claim makes that second delivery a no-op for a finished
reply, and the reaper covers a message Redis lost (docs/reliability.md).

Used through `CELERY_BROKER_TRANSPORT` (chatproject/settings.py) for redis:// brokers.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class _ReleasedConnectionQoS(kombu_redis.QoS):
    def _released(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return transport is None or getattr(transport, "client", None) is None

    def _guarded(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except AttributeError as exc:
            if not self._released():
                raise
            raise RedisConnectionError("The broker connection was already released.") from exc

    def restore_unacked(self, client: Any = None) -> Any:
        return self._guarded(super().restore_unacked, client)

    def ack(self, delivery_tag: Any) -> Any:
        return self._guarded(super().ack, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> Any:
        return self._guarded(super().reject, delivery_tag, requeue=requeue)


class _Channel(kombu_redis.Channel):
    QoS = _ReleasedConnectionQoS


class RedisTransport(kombu_redis.Transport):
    Channel = _Channel
