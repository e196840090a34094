"""Dataflow step logic: parsing, event time, identity, per-customer shards. No I/O."""
