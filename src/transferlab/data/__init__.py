"""The images and their splits: sources, the manifest, decoding and transforms (stage download)."""
