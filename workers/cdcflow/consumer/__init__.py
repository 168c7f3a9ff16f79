"""The consumer: a Beam pipeline from RabbitMQ to ClickHouse."""
