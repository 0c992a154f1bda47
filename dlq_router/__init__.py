"""dlq-router: broker-level retries for AMQP and Redis consumers."""

__version__ = "0.1.0"
