"""Exact search over (possibly truncated) embeddings."""

from dualforge.eval.retrieval.exact import exact_search, faiss_available, prepare, run_from_search

__all__ = ["exact_search", "faiss_available", "prepare", "run_from_search"]
