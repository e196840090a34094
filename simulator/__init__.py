"""A simulated storefront that produces realistic event streams."""
