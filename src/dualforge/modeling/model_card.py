"""Model cards: the ``README.md`` of a saved model folder, as Hub and library users expect it.

:func:`model_card` builds it from plain values: the run's config as ``Config.to_dict()`` gives
it, evaluations as ``RetrievalReport.to_dict()`` gives them (``{"metrics": {name: value},
"metrics_by_dim": {str(dim): {name: value}}}``; :func:`evaluations_from_report` reads them from a
``report.json``) and :class:`RunFacts`, what the config does not hold. The card: YAML front
matter (``library_name: sentence-transformers``, or ``PyLate`` for late interaction as PyLate's
own cards say; ``pipeline_tag: sentence-similarity``; tags; ``base_model`` when the base is a Hub
name; ``datasets`` when known), the model, its training data, the training settings (Gradient
Cache, Matryoshka, mining), the before/after evaluation table by dim, usage
(``SentenceTransformer`` or PyLate's ``models.ColBERT``) and the whole config, collapsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from dualforge.files import write_text_atomic
from dualforge.matryoshka import nesting_dims
from dualforge.modeling.encoder import DualEncoder
from dualforge.modeling.late_interaction import LateInteractionModel
from dualforge.modeling.model_card_sections import (
    METRIC_LABELS,
    PYLATE_USAGE,
    SETTING,
    CardFacts,
    RunFacts,
    _base_link,
    _section,
    config_block,
    description,
    evaluation,
    gradcache_section,
    matryoshka_section,
    metric_label,
    mining_section,
    training,
    training_data,
    usage,
)

__all__ = [
    "BEIR_NAMES",
    "CARD_FILE",
    "HUB_NAMES",
    "INTRODUCTIONS",
    "METRIC_LABELS",
    "MODEL_PATH",
    "PYLATE_USAGE",
    "SETTING",
    "TABLE_METRICS",
    "CardFacts",
    "RunFacts",
    "card_facts",
    "config_block",
    "description",
    "evaluation",
    "evaluations_from_report",
    "front_matter",
    "gradcache_section",
    "hub_name",
    "known_datasets",
    "matryoshka_section",
    "metric_label",
    "mining_section",
    "model_card",
    "run_facts",
    "training",
    "training_data",
    "usage",
    "write_model_card",
]

CARD_FILE = "README.md"
MODEL_PATH = "path/to/this/model"
"""What the usage snippet loads when no name is given."""
TABLE_METRICS = ("ndcg@10", "recall@100")
HUB_NAMES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
"""Hub names of the packaged models."""
BEIR_NAMES = frozenset({
    "arguana", "bioasq", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa",
    "hotpotqa", "msmarco", "nfcorpus", "nq", "quora", "robust04", "scidocs", "scifact",
    "signal1m", "trec-covid", "trec-news", "webis-touche2020",
})  # fmt: skip
"""BEIR data sets: a ``beir`` folder of one of these names is listed as ``BeIR/<name>``."""
INTRODUCTIONS = {
    False: "This is a [sentence-transformers](https://www.sbert.net) model fine-tuned from {base} "
    "with dualforge. It maps queries and documents to {size} vectors for retrieval and semantic "
    "search.",
    True: "This is a [PyLate](https://github.com/lightonai/pylate) ColBERT model fine-tuned from "
    "{base} with dualforge. It maps queries and documents to sequences of {size} token vectors, "
    "scored with MaxSim (late interaction).",
}


def run_facts(
    model: DualEncoder | LateInteractionModel,
    *,
    num_examples: int | None = None,
    steps: int | None = None,
    resolved: Mapping[str, Any] | None = None,
) -> RunFacts:
    """:class:`RunFacts` of a trained model: its dim and, for one vector per text, its pooling,
    normalisation and stored prompts (as saved: ``{task}`` filled in)."""
    facts = RunFacts(num_examples, steps, model.dim, resolved=dict(resolved or {}))
    if not isinstance(model, DualEncoder):
        return facts
    tower = model.query_encoder
    prompts = {"query": model.query_prefix, "document": model.doc_prefix}
    return replace(facts, pooling=tower.pooling, normalize=tower.normalize, prompts=prompts)


def model_card(
    config: Mapping[str, Any],
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    run: RunFacts | None = None,
    *,
    datasets: Sequence[str] | None = None,
    model_path: str = MODEL_PATH,
    metrics: Sequence[str] = TABLE_METRICS,
) -> str:
    """The Markdown model card of a trained model.

    Args:
        config: The run's config, as ``Config.to_dict()`` (sections ``model``, ``data``, ...).
        before: Test evaluation of the base model (``RetrievalReport.to_dict()`` shape).
        after: Test evaluation of the trained model; without it the card has no table.
        run: Facts beyond the config (examples, steps, output dim, prompts, ...).
        datasets: Hub data set names for the front matter (default: ``BeIR/<name>`` for a known
            BEIR folder); empty for none.
        model_path: Name or folder the usage snippet loads.
        metrics: Metrics of the evaluation table, those the evaluation holds (all of them when
            it holds none of these).

    Returns:
        The card's text, front matter first, ending in a newline.
    """
    facts = card_facts(config, after, run or RunFacts())
    size = f"{facts.dim}-dimensional" if facts.dim else "dense"
    intro = INTRODUCTIONS[facts.late].format(base=_base_link(facts), size=size)
    sections = [
        front_matter(facts, config, datasets),
        f"# {_section(config, 'run').get('name') or 'model'}\n\n{intro}",
        description(facts),
        training_data(config, facts.run.num_examples),
        training(config, facts),
        evaluation(config, facts, before, after, metrics),
        usage(facts, model_path),
        config_block(config),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def card_facts(
    config: Mapping[str, Any], after: Mapping[str, Any] | None, run: RunFacts
) -> CardFacts:
    """The facts the card's sections share (see :func:`model_card` for the arguments)."""
    model = _section(config, "model")
    late = model.get("kind") == "late_interaction"
    dim = run.output_dim or (after or {}).get("embedding_dim") or None
    if dim is None and late:
        dim = model.get("token_dim")
    prompts: Mapping[str, Any] | None = run.prompts
    if prompts is None and not late:
        prompts = {"query": model.get("query_prefix"), "document": model.get("doc_prefix")}
    mrl = _section(_section(config, "loss"), "matryoshka")
    dims: tuple[int, ...] = tuple(mrl.get("dims") or ())
    if not dims and mrl.get("enabled") and dim:
        dims = nesting_dims(int(dim))
    weights = tuple(float(w) for w in mrl.get("weights") or ()) or (1.0,) * len(dims)
    base = str(model.get("name", ""))
    kept = {k: v for k, v in (prompts or {}).items() if v}
    dim = int(dim) if dim else None
    return CardFacts(model, late, base, hub_name(base), dim, kept, dims, weights, run)


def hub_name(name: str) -> str | None:
    """The Hub name of ``model.name``: a packaged model's, or the name itself when it reads as
    one (``name`` or ``owner/name``, not absolute, not ``.``/``~``); None for a folder."""
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    local = Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    return None if local or not name else name


def evaluations_from_report(
    report: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(before, after)`` in ``RetrievalReport.to_dict()`` shape from a ``report.json``."""
    after = before = None
    if report.get("metrics"):
        after = {"metrics": report["metrics"], "metrics_by_dim": report.get("metrics_by_dim") or {}}
    if report.get("before"):
        before = {"metrics": report["before"], "metrics_by_dim": report.get("before_by_dim") or {}}
    return before, after


def front_matter(
    facts: CardFacts, config: Mapping[str, Any], datasets: Sequence[str] | None
) -> str:
    """The YAML header the Hub reads: library, pipeline, tags, base model, data sets."""
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dualforge"]
    if facts.late:
        tags = ["ColBERT", "PyLate", "late-interaction", *tags]
    if facts.dims:
        tags.append("matryoshka")
    header: dict[str, Any] = {
        "library_name": "PyLate" if facts.late else "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": tags,
    }
    if facts.hub_base:
        header["base_model"] = facts.hub_base
    names = list(datasets) if datasets is not None else known_datasets(config)
    if names:
        header["datasets"] = names
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---"


def known_datasets(config: Mapping[str, Any]) -> list[str]:
    """``["BeIR/<name>"]`` when the training data is a BEIR folder of a known name."""
    data = _section(config, "data")
    name = Path(str(data.get("path", ""))).name.lower()
    return [f"BeIR/{name}"] if data.get("format") == "beir" and name in BEIR_NAMES else []


def write_model_card(folder: str | Path, text: str) -> Path:
    """Write ``text`` as ``folder/README.md`` atomically (a temporary file, then a rename).

    Returns:
        The card's path.
    """
    return write_text_atomic(Path(folder) / CARD_FILE, text)
