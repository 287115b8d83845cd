"""Search one fixed corpus: its embeddings cached on disk, and a queries -> top-k function.

The cache is a ``.npy`` matrix with the document ids one per line in ``<cache>.ids.txt`` (the
layout ``dualforge encode`` writes). It holds the full embeddings, so any prefix dims or funnel
can reuse it. Bad values raise ``ValueError`` whose message names the ``dualforge search`` option.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dualforge.eval.retrieval.exact import prepare
from dualforge.eval.retrieval.funnel import Funnel, parse_funnel_spec
from dualforge.eval.retrieval.index import build_index

SearchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``queries (Q, D) -> (scores, ids)``, each ``(Q, k)``, best first."""

TextsEncoder = Callable[[list[str]], np.ndarray]
"""``texts -> (len(texts), D)`` embeddings."""


def read_cache(cache: Path, doc_ids: Sequence[str], dim: int) -> np.ndarray:
    """The ``(N, dim)`` embeddings of a cache file, checked against the corpus ids and ``dim``.

    Raises:
        ValueError: When the ids file or the matrix shape does not match.
    """
    ids_file = cache.with_suffix(".ids.txt")
    cached_ids = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.is_file() else []
    try:
        emb = np.load(cache, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"--cache {cache}: not an embeddings matrix (.npy) written by dualforge "
            f"({type(err).__name__}): delete it or name another file"
        ) from None
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        raise ValueError(
            f"--cache {cache}: not a 2-d embeddings matrix: delete it or name another file"
        )
    if cached_ids != list(doc_ids) or emb.shape != (len(doc_ids), dim):
        raise ValueError(
            f"--cache {cache} (shape {emb.shape}, ids {ids_file}) does not match this corpus "
            f"and model ({len(doc_ids)} x {dim}): delete it or name another file"
        )
    return np.asarray(emb, dtype=np.float32)


def write_cache(cache: Path, doc_ids: Sequence[str], emb: np.ndarray) -> None:
    """Write the embeddings and their ids; the ``.npy`` appears last, whole (atomic rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, emb)
    cache.with_suffix(".ids.txt").write_text("\n".join(doc_ids) + "\n", encoding="utf-8")
    os.replace(tmp, cache)


def corpus_embeddings(
    encode: TextsEncoder, doc_ids: Sequence[str], texts: Sequence[str], dim: int, cache: Path | None
) -> np.ndarray:
    """``(N, D)`` document embeddings, read from ``cache`` when it exists, else encoded.

    The cache is checked against the document ids and ``dim`` only: delete it after changing the
    model.

    Args:
        encode: The document encoder.
        doc_ids: Id of each document.
        texts: Text of each document.
        dim: The encoder's embedding size.
        cache: The ``.npy`` cache file (written when missing), or None.

    Raises:
        ValueError: For a cache that does not match (see :func:`read_cache`).
    """
    if cache is not None and cache.is_file():
        return read_cache(cache, doc_ids, dim)
    emb = encode(list(texts))  # (N, D)
    if cache is not None:
        write_cache(cache, doc_ids, emb)
    return emb


def make_search(
    emb: np.ndarray,
    k: int,
    metric: str,
    *,
    funnel: str | None = None,
    dims: int | None = None,
    factory: str = "Flat",
    params: str | None = None,
) -> SearchFn:
    """``queries (Q, D) -> (scores, ids)`` of the top ``k``: by a funnel, a prefix or all dims.

    Args:
        emb: ``(N, D)`` corpus embeddings.
        k: Results per query.
        metric: ``"cos"`` or ``"ip"``.
        funnel: A funnel spec such as ``"32:200,384:10"`` (its first stage uses ``factory``).
        dims: Search with the first ``dims`` dims (ignored with ``funnel``; default all).
        factory: faiss factory string of the index.
        params: faiss search parameters.

    Raises:
        ValueError: For a bad funnel, dims, factory or params.
    """
    if funnel:
        cascade = Funnel(emb, parse_funnel_spec(funnel), factory=factory, metric=metric,
                         params=params)  # fmt: skip

        def by_funnel(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            result = cascade.search(q)
            return result.scores[:, :k], result.ids[:, :k]

        return by_funnel
    size = dims or emb.shape[1]
    corpus = prepare(emb, dims=size, name="corpus")  # (N, size)
    index = build_index(corpus, factory, metric, params=params)
    return lambda q: index.search(q[:, :size], k)
