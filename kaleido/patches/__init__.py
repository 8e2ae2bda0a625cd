"""Kaleido Patch Generator (DESIGN.md stage 2)."""
