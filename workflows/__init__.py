"""Workflows: the deterministic decisions of a lead's journey."""
