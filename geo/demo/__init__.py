"""Synthetic settlements for demos, tests and benchmarks (generator and loader)."""
