"""Comparison harnesses: the same work written with other libraries, for the side-by-side benchmark only.
Nothing here is product code, and nothing in ``sync_core`` may import it."""
