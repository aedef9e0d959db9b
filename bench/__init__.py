"""Benchmarks of the gateway: rate sweep and trace replay with real SIP peers, and micro-benchmarks.

Run ``python -m bench --help``; docs/performance.md says how to read the results.
"""
