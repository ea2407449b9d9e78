"""Vectors + graph -> user/item vectors: projection, attention fusion, propagation, losses."""
