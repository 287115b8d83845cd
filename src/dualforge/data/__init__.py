"""Data: BEIR folders, JSONL / TSV training examples, and resumable batch sampling."""

from dualforge.data.beir import (
    BeirDataset,
    Document,
    available_splits,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from dualforge.data.errors import BadRecords, DataError
from dualforge.data.examples import (
    TrainingExample,
    examples_from_beir,
    iter_jsonl_examples,
    iter_tsv_triples,
    load_jsonl_examples,
    load_tsv_triples,
)
from dualforge.data.sampler import Batch, EpochBatchSampler

__all__ = [
    "BadRecords",
    "Batch",
    "BeirDataset",
    "DataError",
    "Document",
    "EpochBatchSampler",
    "TrainingExample",
    "available_splits",
    "examples_from_beir",
    "iter_jsonl_examples",
    "iter_tsv_triples",
    "load_beir",
    "load_corpus",
    "load_jsonl_examples",
    "load_qrels",
    "load_queries",
    "load_tsv_triples",
]
