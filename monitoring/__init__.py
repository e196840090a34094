"""Metrics, health and readiness for ops."""
