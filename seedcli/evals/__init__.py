"""Evaluation: POPE answer parsing and metrics, CHAIR mention extraction and metrics, paired statistics.

The scoring modules here (`pope_scoring`, `chair`, `stats`) are pure: no torch, no models, no I/O
beyond reading the benchmark files they are handed. Generation and the evaluation runner build on them.
"""
