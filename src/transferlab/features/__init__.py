"""Backbones and the feature store they fill once: extraction, transferability, the backbone choice."""
