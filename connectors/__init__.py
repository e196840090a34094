"""The edges: Kafka source and sinks, Redis store, the embedded dev stack."""
