"""The lab: everything that exists to demonstrate, measure or attack the product.

The runtime never imports this package (tests/unit/test_layout.py enforces it)."""
