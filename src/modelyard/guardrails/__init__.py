"""Guardrails: checks on every request's input and output, whatever model answered (docs/guardrails.md)."""
