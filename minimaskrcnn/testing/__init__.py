"""Helpers for tests and notebooks: tier fixtures, hypothesis strategies, gradcheck."""
