"""Benchmarks for ocifs: ``python -m bench run ...`` and ``python -m bench.mount_vs_raw``.

See bench/README.md for what is measured, the peers' flags and the network profiles.
"""
