"""The producer: MongoDB change stream → RabbitMQ with pipelined publisher confirms.

``run_producer(settings, stop=..., health=...)`` is the worker (see :mod:`.main`);
:mod:`.changestream` reads and resumes the stream, :mod:`.publishing` owns the
RabbitMQ connection, :mod:`.outbox` tracks confirms and the saveable token,
:mod:`.offsets` stores that token in MongoDB.
"""

from cdcflow.producer.main import ProducerStats, run_producer

__all__ = ["ProducerStats", "run_producer"]
