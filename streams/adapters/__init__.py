"""Swappable edges (storage, images, the vector index). They import only `schemas`."""
