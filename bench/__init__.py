"""Benchmarks that print each measured figure against the limit it is judged by.

Run ``python -m bench`` (full, about six and a half minutes on two cores) or
``python -m bench --quick`` (a small correctness pass for CI). See
``docs/benchmarks.md`` for what each one measures and the latest results.
"""
