"""Content -> vectors: text and image encoders and the on-disk feature cache."""
