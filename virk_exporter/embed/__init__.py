"""Embedders: frames to vectors for the drift tests (the model's features, or a bundled backbone)."""
