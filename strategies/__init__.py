"""Hypothesis strategies that draw shardfuzz Cases."""
