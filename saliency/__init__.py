"""Salient-object foreground detection (DESIGN.md stage 1)."""
