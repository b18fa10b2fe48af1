"""Dataset cards (protocol, split rule, score range, published reference rows) as package data."""
