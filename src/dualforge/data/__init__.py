"""Data: BEIR folders, evaluation sets, JSONL / TSV training examples, resumable batch sampling.

Every loader takes ``skip_bad``: by default the first bad record raises a :class:`DataError`
naming file, line and field; with ``skip_bad=True`` bad records are skipped, counted (pass a
:class:`BadRecordCounter` as ``counter`` to read the count; ``BeirDataset.skipped`` for
:func:`load_beir`) and reported in one logged warning.
"""

from dualforge.data.batch import TEACHER_SCORES, Batch, Column
from dualforge.data.beir import (
    BeirDataset,
    Document,
    QrelsRow,
    available_splits,
    corpus_file,
    iter_corpus,
    iter_qrels,
    load_beir,
    load_beir_splits,
    load_corpus,
    load_qrels,
    load_queries,
)
from dualforge.data.errors import BadRecordCounter, BadRecords, DataError
from dualforge.data.eval_set import (
    EvalSet,
    SplitsLoader,
    corpus_texts,
    eval_set,
    load_eval_set,
    load_eval_sets,
)
from dualforge.data.examples import (
    TrainingExample,
    examples_from_beir,
    iter_jsonl_examples,
    iter_tsv_triples,
    load_jsonl_examples,
    load_tsv_triples,
)
from dualforge.data.hf import hf_num_rows, iter_hf_examples, load_hf_examples
from dualforge.data.sampler import EpochBatchSampler, TooFewExamplesError
from dualforge.data.streaming import BatchSampler, StreamingBatchSampler
from dualforge.data.texts import read_texts

__all__ = [
    "TEACHER_SCORES",
    "BadRecordCounter",
    "BadRecords",
    "Batch",
    "BatchSampler",
    "BeirDataset",
    "Column",
    "DataError",
    "Document",
    "EpochBatchSampler",
    "EvalSet",
    "QrelsRow",
    "SplitsLoader",
    "StreamingBatchSampler",
    "TooFewExamplesError",
    "TrainingExample",
    "available_splits",
    "corpus_file",
    "corpus_texts",
    "eval_set",
    "examples_from_beir",
    "hf_num_rows",
    "iter_corpus",
    "iter_hf_examples",
    "iter_jsonl_examples",
    "iter_qrels",
    "iter_tsv_triples",
    "load_beir",
    "load_beir_splits",
    "load_corpus",
    "load_eval_set",
    "load_eval_sets",
    "load_hf_examples",
    "load_jsonl_examples",
    "load_qrels",
    "load_queries",
    "load_tsv_triples",
    "read_texts",
]
