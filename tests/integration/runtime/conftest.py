"""Fixtures for the runtime tests; the harness lives in runtime_harness.py."""

from runtime_harness import federation, pki

__all__ = ["federation", "pki"]
