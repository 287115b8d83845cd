"""Search over (possibly truncated) embeddings."""

from dualforge.eval.retrieval.exact import exact_search, faiss_available, run_from_search

__all__ = ["exact_search", "faiss_available", "run_from_search"]
