"""engage: a real-time customer engagement engine for e-commerce.

Events flow one way: Kafka (``connectors``) -> parsing and event time
(``operators``) -> per-customer state (``state``) -> triggers (``rules``) ->
actions back to Kafka and state to Redis (``connectors``). ``flows`` wires
those steps into a Bytewax dataflow; ``monitoring`` holds every metric.
"""

__version__ = "0.1.0"
