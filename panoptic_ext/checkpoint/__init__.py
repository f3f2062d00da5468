"""Checkpoint loading/saving helpers. Work in progress (issue 6)."""
