"""Batched feature extraction and the on-disk feature cache (frozen backbones train on cached vectors)."""
