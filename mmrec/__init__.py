"""mmrec: multimodal recommender (catalog -> encoders -> fusion -> FAISS)."""
from __future__ import annotations

__version__ = "0.1.0"
