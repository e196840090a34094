"""Per-customer state: sliding windows, carts, orders, and its Redis key layout."""
