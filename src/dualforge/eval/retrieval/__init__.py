"""Search over (possibly truncated) embeddings: exact, by faiss factory index, and Matryoshka funnels."""

from dualforge.eval.retrieval.budget import (
    CascadeChoice,
    CascadeTrial,
    choose_cascade,
    default_candidates,
    qrels_quality,
)
from dualforge.eval.retrieval.budget_cv import CascadeCV, FoldResult, cross_validate_cascade
from dualforge.eval.retrieval.exact import exact_search, faiss_available, prepare, run_from_search
from dualforge.eval.retrieval.funnel import (
    AdaptiveSearcher,
    Funnel,
    FunnelResult,
    Stage,
    cascade_flops,
    check_stages,
    exact_flops,
    format_funnel_spec,
    parse_funnel_spec,
)
from dualforge.eval.retrieval.index import (
    FaissIndex,
    PrefixRescorer,
    TorchFlatIndex,
    VectorIndex,
    build_index,
)
from dualforge.eval.retrieval.search import SearchFn, corpus_embeddings, make_search

__all__ = [
    "AdaptiveSearcher",
    "CascadeCV",
    "CascadeChoice",
    "CascadeTrial",
    "FaissIndex",
    "FoldResult",
    "Funnel",
    "FunnelResult",
    "PrefixRescorer",
    "SearchFn",
    "Stage",
    "TorchFlatIndex",
    "VectorIndex",
    "build_index",
    "cascade_flops",
    "check_stages",
    "choose_cascade",
    "corpus_embeddings",
    "cross_validate_cascade",
    "default_candidates",
    "exact_flops",
    "exact_search",
    "faiss_available",
    "format_funnel_spec",
    "make_search",
    "parse_funnel_spec",
    "prepare",
    "qrels_quality",
    "run_from_search",
]
