"""Triggers that turn customer state into actions."""
