"""Matryoshka adaptive classification (Kusupati et al. 2022): heads over fixed embeddings.

- :mod:`~dualforge.classify.data`: labelled JSONL files, label vocabulary, stratified split;
- :mod:`~dualforge.classify.heads`: MRL (one linear head per nesting dim) and MRL-E (one shared
  weight whose first ``m`` columns serve dim ``m``), and their summed cross-entropy;
- :mod:`~dualforge.classify.train`: encode once with a frozen encoder, train heads, save/load;
- :mod:`~dualforge.classify.cascade`: the adaptive cascade, threshold fitting, the oracle;
- :mod:`~dualforge.classify.pipeline`: fit heads + thresholds, score a saved classifier;
- :mod:`~dualforge.classify.report`: JSON-ready report, Markdown table, PNG plot.
"""

from dualforge.classify.cascade import (
    DEFAULT_TOLERANCES,
    NEVER,
    CascadeResult,
    OperatingPoint,
    OracleResult,
    cascade_evaluate,
    cascade_predict,
    cascade_stops,
    confidences,
    fit_sweep,
    fit_thresholds,
    fixed_dim_accuracy,
    oracle,
)
from dualforge.classify.data import (
    LabelledSet,
    build_vocab,
    encode_labels,
    load_labelled,
    stratified_split,
)
from dualforge.classify.heads import (
    MatryoshkaHeads,
    MRLEHead,
    MRLHeads,
    build_heads,
    matryoshka_cross_entropy,
)
from dualforge.classify.pipeline import (
    FitConfig,
    FittedClassifier,
    evaluate_classifier,
    fit_classifier,
)
from dualforge.classify.report import build_report, markdown_table, plot_report
from dualforge.classify.train import (
    HeadTrainConfig,
    encode_texts,
    head_logits,
    load_heads,
    save_heads,
    train_heads,
)
from dualforge.matryoshka import nesting_dims

__all__ = [
    "DEFAULT_TOLERANCES",
    "NEVER",
    "CascadeResult",
    "FitConfig",
    "FittedClassifier",
    "HeadTrainConfig",
    "LabelledSet",
    "MRLEHead",
    "MRLHeads",
    "MatryoshkaHeads",
    "OperatingPoint",
    "OracleResult",
    "build_heads",
    "build_report",
    "build_vocab",
    "cascade_evaluate",
    "cascade_predict",
    "cascade_stops",
    "confidences",
    "encode_labels",
    "encode_texts",
    "evaluate_classifier",
    "fit_classifier",
    "fit_sweep",
    "fit_thresholds",
    "fixed_dim_accuracy",
    "head_logits",
    "load_heads",
    "load_labelled",
    "markdown_table",
    "matryoshka_cross_entropy",
    "nesting_dims",
    "oracle",
    "plot_report",
    "save_heads",
    "stratified_split",
    "train_heads",
]
