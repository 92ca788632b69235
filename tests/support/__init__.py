"""Shared helpers for the test suite (service checks, simulator fixtures)."""
