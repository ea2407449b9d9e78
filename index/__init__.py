"""Vectors -> retrieval: FAISS index wrapper with id mapping, removal and persistence."""
