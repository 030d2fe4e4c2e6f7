"""Losses (filled in below)."""
