"""Benchmarks of cdcflow: the pipeline against the raw limit of each of its parts.

``python -m bench`` (``make bench``, ``QUICK=1`` for a short run) measures, on one
machine in one go, the raw limit of every stage (MongoDB writes, change-stream
capture, RabbitMQ publish and consume, ClickHouse load), the pipeline end to end
(throughput and freshness), the original naive design, and the workers' peak
memory under a backlog; it prints a table and writes ``bench/results/latest.json``.
Ratios measured in one run are what a shared machine can honestly report.
See ``docs/performance.md``.
"""
