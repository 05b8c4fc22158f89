"""Evaluation: zero-shot classification and regression, retrieval metrics, reports and plots."""
