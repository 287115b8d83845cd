"""``dualforge search``: search a corpus with a model, exactly, by prefix dims or by a funnel.

The corpus embeddings can be cached in a ``.npy`` file (see
:mod:`dualforge.eval.retrieval.search`), so repeated searches encode only the queries. The cache
holds the full embeddings: any ``--dims`` or ``--funnel`` can reuse it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from dualforge.cli.flags import check_prefix_dims, retrieval_kind
from dualforge.data import Document, load_corpus
from dualforge.errors import UsageError
from dualforge.eval.late_search import late_searcher
from dualforge.eval.retrieval.funnel import check_stages, parse_funnel_spec
from dualforge.eval.retrieval.search import corpus_embeddings, make_search
from dualforge.hardware import resolve_device
from dualforge.modeling import load_model
from dualforge.modeling.encoder import search_metric
from dualforge.modeling.late_io import load_late_model


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
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.add_argument("--max-length", type=int, default=None, help="override max_seq_length")
    late = p.add_argument_group("late-interaction models (--dims: token dims of exhaustive MaxSim)")
    late.add_argument(
        "--candidates", action="store_true",
        help="token-level candidates from --index-factory, reranked by exact MaxSim",
    )  # fmt: skip
    late.add_argument("--k-token", type=int, default=64, help="candidates: tokens per query token")
    late.add_argument(
        "--candidate-dim", type=int, default=None, help="candidates: token dims of the index"
    )
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    p.set_defaults(func=run)


def load_documents(path: Path, skip_bad: bool) -> dict[str, Document]:
    """The documents of a BEIR folder (its ``corpus.jsonl``) or of a corpus file."""
    file = path / "corpus.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"--corpus: no such corpus file {file}")
    docs = load_corpus(file, skip_bad=skip_bad)
    if not docs:
        raise UsageError(f"--corpus: {file} has no document")
    return docs


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
        raise UsageError(f"--k must be >= 1, got {args.k}")
    if retrieval_kind(args.model).tokens:
        return run_late(args)
    if args.candidates:
        raise UsageError("--candidates is for late-interaction models (a folder of one)")
    model = load_model(args.model, max_seq_length=args.max_length).to(
        resolve_device(args.device, "--device")
    )
    check_search_args(args, model.dim)
    docs = load_documents(Path(args.corpus), args.skip_bad)
    cache = Path(args.cache) if args.cache else None

    def encode_docs(texts: list[str]) -> np.ndarray:
        return model.encode(texts, "document", args.batch_size, True)  # (N, D)

    texts = [doc.full_text for doc in docs.values()]
    try:
        emb = corpus_embeddings(encode_docs, list(docs), texts, model.dim, cache)  # (N, D)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        search = make_search(
            emb, args.k, search_metric(model), funnel=args.funnel, dims=args.dims,
            factory=args.index_factory, params=args.index_params,
        )  # fmt: skip
    except ValueError as err:
        raise UsageError(f"search: {err}") from None
    for batch in iter_query_batches(args.queries, sys.stdin):
        if not batch:
            continue
        q = model.encode(batch, "query", args.batch_size)  # (B, D)
        scores, ids = search(q)  # (B, k), (B, k)
        print_results(batch, scores, ids, docs, sys.stdout)
    return 0


def check_search_args(args: argparse.Namespace, dim: int) -> None:
    """What can be checked before the corpus is encoded: the queries file, ``--dims`` and
    ``--funnel`` against the model's ``dim``.

    Raises:
        UsageError: Naming the flag.
    """
    if args.queries is not None and not Path(args.queries).is_file():
        raise UsageError(f"--queries {args.queries}: no such file")
    if args.dims is not None:
        check_prefix_dims("--dims", [args.dims], dim)
    if args.funnel:
        try:
            check_stages(parse_funnel_spec(args.funnel), dim)
        except ValueError as err:
            raise UsageError(f"--funnel {args.funnel}: {err}") from None


def run_late(args: argparse.Namespace) -> int:
    """A late-interaction folder: encode the corpus tokens, answer each query by MaxSim."""
    if args.funnel or args.cache:
        raise UsageError("--funnel and --cache are for single-vector models")
    model = load_late_model(args.model).to(resolve_device(args.device, "--device"))
    check_search_args(args, model.dim)
    docs = load_documents(Path(args.corpus), args.skip_bad)
    texts = [doc.full_text for doc in docs.values()]
    tokens = model.encode(texts, "document", args.batch_size, True, args.max_length)
    try:
        search = late_searcher(
            tokens, args.k, dim=args.dims, params=args.index_params, k_token=args.k_token,
            factory=args.index_factory if args.candidates else None,
            candidate_dim=args.candidate_dim,
        )  # fmt: skip
    except ValueError as err:
        raise UsageError(f"search: {err}") from None
    for batch in iter_query_batches(args.queries, sys.stdin):
        if batch:
            scores, ids = search(model.encode(batch, "query", args.batch_size))
            print_results(batch, scores, ids, docs, sys.stdout)
    return 0
