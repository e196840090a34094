"""Bytewax dataflows: each reads top to bottom as the path of an event."""
