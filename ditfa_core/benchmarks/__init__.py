"""Benchmarks (scripts, not tests): run as ``python -m ditfa_core.benchmarks.<name>``."""
