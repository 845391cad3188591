"""Shared test helpers (import as `from helpers.<module> import ...`); tests never import
one another."""
