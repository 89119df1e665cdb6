"""Deduplication: signatures (streaming pass), then global exact, pixel, near and semantic passes."""
