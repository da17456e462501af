"""Helpers shared by the tests, the demo and the benchmarks (a real S3 server, among others)."""
