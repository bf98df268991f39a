"""Benchmarks (``byok bench ...``): side-by-side ratios measured in one run, written as JSON.

This machine is noisy, so every figure is a ratio of two things measured interleaved in the
same run, with p50/p95 and the raw samples kept. Targets are reported, never asserted in tests.
"""
