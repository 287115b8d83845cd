"""``dualforge search``: search a corpus with a model, exactly, by prefix dims or by a funnel.

The corpus embeddings can be cached in a ``.npy`` file (with the document ids in
``<cache>.ids.txt``, the layout ``dualforge encode`` writes), so repeated searches encode only the
queries. The cache holds the full embeddings: any ``--dims`` or ``--funnel`` can reuse it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from dualforge.data import Document, load_corpus
from dualforge.eval.retrieval import Funnel, build_index, parse_funnel_spec, prepare
from dualforge.modeling import DualEncoder, load_model

SearchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("search", help="search a corpus with a model")
    p.add_argument("--model", default="minilm", help="model name or folder")
    p.add_argument("--corpus", required=True, help="BEIR folder or a corpus.jsonl file")
    p.add_argument(
        "--queries", default=None, help="file of queries, one per line (default: read stdin)"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--funnel", default=None, help="funnel dims:keep,..., e.g. 32:200,384:10")
    how.add_argument("--dims", type=int, default=None, help="search with the first DIMS dims")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--index-factory", default="Flat", help="faiss factory, e.g. HNSW32")
    p.add_argument("--index-params", default=None, help="faiss search params, e.g. efSearch=128")
    p.add_argument(
        "--cache", default=None, help="corpus embeddings .npy: read if present, else written"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None, help="override max_seq_length")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    p.set_defaults(func=run)


def load_documents(path: Path, skip_bad: bool) -> dict[str, Document]:
    """The documents of a BEIR folder (its ``corpus.jsonl``) or of a corpus file."""
    file = path / "corpus.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"--corpus: no such corpus file {file}")
    docs = load_corpus(file, skip_bad=skip_bad)
    if not docs:
        raise SystemExit(f"--corpus: {file} has no document")
    return docs


def _read_cache(cache: Path, doc_ids: list[str], dim: int) -> np.ndarray:
    ids_file = cache.with_suffix(".ids.txt")
    cached_ids = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.is_file() else []
    emb = np.load(cache)
    if cached_ids != doc_ids or emb.shape != (len(doc_ids), dim):
        raise SystemExit(
            f"--cache {cache} (shape {emb.shape}, ids {ids_file}) does not match this corpus "
            f"and model ({len(doc_ids)} x {dim}): delete it or name another file"
        )
    return np.asarray(emb, dtype=np.float32)


def _write_cache(cache: Path, doc_ids: list[str], emb: np.ndarray) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, emb)
    cache.with_suffix(".ids.txt").write_text("\n".join(doc_ids) + "\n", encoding="utf-8")
    os.replace(tmp, cache)  # the .npy appears last, whole


def corpus_embeddings(
    model: DualEncoder, docs: dict[str, Document], cache: Path | None, batch_size: int
) -> np.ndarray:
    """``(N, D)`` document embeddings, read from ``cache`` when it exists, else encoded.

    The cache is checked against the document ids and the model's dim only: delete it after
    changing the model.
    """
    doc_ids = list(docs)
    if cache is not None and cache.is_file():
        return _read_cache(cache, doc_ids, model.dim)
    texts = [doc.full_text for doc in docs.values()]
    emb = model.encode(texts, "document", batch_size, True)  # (N, D)
    if cache is not None:
        _write_cache(cache, doc_ids, emb)
    return emb


def make_search(emb: np.ndarray, args: argparse.Namespace, metric: str) -> SearchFn:
    """``queries (Q, D) -> (scores, ids)`` with the funnel, the prefix dims or all dims."""
    try:
        if args.funnel:
            stages = parse_funnel_spec(args.funnel)
            funnel = Funnel(
                emb, stages, factory=args.index_factory, metric=metric, params=args.index_params
            )

            def by_funnel(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                result = funnel.search(q)
                return result.scores[:, : args.k], result.ids[:, : args.k]

            return by_funnel
        dims = args.dims or emb.shape[1]
        prefix = prepare(emb, dims=dims, name="corpus")  # (N, dims)
        index = build_index(prefix, args.index_factory, metric, params=args.index_params)
    except ValueError as err:
        raise SystemExit(f"search: {err}") from None
    return lambda q: index.search(q[:, :dims], args.k)


def print_results(
    queries: list[str],
    scores: np.ndarray,
    ids: np.ndarray,
    docs: dict[str, Document],
    out: TextIO,
) -> None:
    """Each query, then its ranked documents: rank, id, score and title (or text start)."""
    doc_list = list(docs.values())
    for text, row_s, row_i in zip(queries, scores, ids):
        print(f"query: {text}", file=out)
        for rank, (s, i) in enumerate(zip(row_s.tolist(), row_i.tolist()), start=1):
            if i < 0:
                continue
            doc = doc_list[i]
            title = doc.title or (doc.text[:77] + "..." if len(doc.text) > 80 else doc.text)
            print(f"{rank:>4}. {doc.id}\t{s:.4f}\t{title}", file=out)
        print(file=out)


def iter_query_batches(path: str | None, stdin: TextIO) -> Iterator[list[str]]:
    """All queries of a file as one batch, or one batch per non-empty line of stdin."""
    if path is not None:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        yield [line.strip() for line in lines if line.strip()]
        return
    interactive = stdin.isatty()
    while True:
        if interactive:
            print("query> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            return
        if line.strip():
            yield [line.strip()]


def run(args: argparse.Namespace) -> int:
    """Encode (or read) the corpus, then answer each query."""
    if args.k < 1:
        raise SystemExit(f"--k must be >= 1, got {args.k}")
    model = load_model(args.model, max_seq_length=args.max_length)
    docs = load_documents(Path(args.corpus), args.skip_bad)
    cache = Path(args.cache) if args.cache else None
    emb = corpus_embeddings(model, docs, cache, args.batch_size)  # (N, D)
    metric = "cos" if model.query_encoder.normalize else "ip"
    search = make_search(emb, args, metric)
    for batch in iter_query_batches(args.queries, sys.stdin):
        if not batch:
            continue
        q = model.encode(batch, "query", args.batch_size)  # (B, D)
        scores, ids = search(q)  # (B, k), (B, k)
        print_results(batch, scores, ids, docs, sys.stdout)
    return 0
