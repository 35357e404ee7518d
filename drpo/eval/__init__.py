"""Evaluation: sampling, metrics, judging, tables."""
