"""Benchmarks of occle: latency, throughput and scaling tables (run by ``occle-bench``)."""
