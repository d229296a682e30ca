"""Benchmarks of retryqueue against a hand-written SQL loop, pgqueuer and procrastinate.

Run ``python -m benchmarks --quick`` (under a minute) or ``python -m benchmarks`` (the full
run, with the 1M-row scenarios). Never part of the test run. Figures are only comparable
within one run: the machine is shared and noisy.
"""
