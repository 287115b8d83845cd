"""The sections of a model card, each built from :class:`CardFacts` and the run's config.

:func:`~dualforge.modeling.model_card.model_card` joins them: the model, its training data, the
training settings (Gradient Cache, Matryoshka, mining), the before/after evaluation table by dim,
usage and the whole config, collapsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

SETTING = ("setting", "value")
METRIC_LABELS = {"ndcg": "nDCG", "recall": "R", "precision": "P", "mrr": "MRR", "map": "MAP"}
PYLATE_USAGE = """from pylate import models, rank

model = models.ColBERT(model_name_or_path="{path}")
queries_embeddings = model.encode(["what causes tides?"], is_query=True)
documents = [["Tides are caused by the moon.", "Rain falls from clouds."]]  # candidates per query
documents_embeddings = model.encode(documents, is_query=False)
reranked = rank.rerank(
    documents_ids=[["d1", "d2"]],
    queries_embeddings=queries_embeddings,
    documents_embeddings=documents_embeddings,
)"""


@dataclass(frozen=True)
class RunFacts:
    """What the caller knows of the trained model and its run beyond the config (all optional).

    Attributes:
        num_examples: Training examples (query, positive) the run read.
        steps: Optimizer steps run.
        output_dim: Embedding size (default: the evaluation's ``embedding_dim``, then
            ``model.token_dim`` for late interaction).
        pooling: The saved model's pooling (default: ``model.pooling``).
        normalize: Whether it outputs unit vectors (default: ``model.normalize``).
        prompts: Prompts stored in the folder by name, ``query`` / ``document`` (default: the
            config's prefixes; pass the model's when they hold a ``{task}``).
        resolved: Choices made from ``auto`` settings (``report.json``'s ``resolved``).
    """

    num_examples: int | None = None
    steps: int | None = None
    output_dim: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    prompts: Mapping[str, str] | None = None
    resolved: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CardFacts:
    """What the sections share: the ``model`` section, ``late`` (ColBERT), the configured
    ``base`` and its Hub name (None for a folder), the output ``dim`` (per token when late; None:
    unknown), non-empty ``prompts``, Matryoshka ``dims`` (empty: off, or defaults of an unknown
    dim) and their ``weights``, and the caller's ``run`` facts."""

    model: Mapping[str, Any]
    late: bool
    base: str
    hub_base: str | None
    dim: int | None
    prompts: dict[str, str]
    dims: tuple[int, ...]
    weights: tuple[float, ...]
    run: RunFacts


def description(facts: CardFacts) -> str:
    """The model: base, kind, output dim, lengths, towers, projection, LoRA, prompts, dims."""
    model = facts.model
    rows = [
        ("Base model", _base_link(facts)),
        ("Model kind", _kind_text(facts)),
        ("Output dimension", f"{facts.dim or 'unknown'}{' per token' if facts.late else ''}"),
        ("Max query length", f"{model.get('query_max_length')} tokens"),
        ("Max document length", f"{model.get('doc_max_length')} tokens"),
    ]
    if not facts.late:
        tied = model.get("tied", True)
        rows.append(("Towers", "one, shared" if tied else "two: `query/` and `document/`"))
    if model.get("projection"):
        rows.append(("Projection", f"`{model['projection']}` (a trained linear layer)"))
    lora = _section(model, "lora")
    if lora.get("enabled"):
        export = "adapters alone (a peft folder)" if lora.get("export") == "adapter" else "merged"
        rows.append(("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}; saved {export}"))
    if facts.prompts:
        rows.append(("Prompts", "; ".join(f"{k}: `{v!r}`" for k, v in facts.prompts.items())))
    if facts.dims:
        rows.append(("Matryoshka dims", ", ".join(map(str, facts.dims))))
    return "## Model description\n\n" + _table(("property", "value"), rows)


def _kind_text(facts: CardFacts) -> str:
    if facts.late:
        augment = (
            ", queries padded with [MASK] tokens" if facts.model.get("augment_queries") else ""
        )
        return f"late interaction (ColBERT): one vector per token, MaxSim scores{augment}"
    pooling = facts.run.pooling or facts.model.get("pooling")
    normalize = facts.model.get("normalize") if facts.run.normalize is None else facts.run.normalize
    norm = {True: "unit-length", False: "unnormalised", None: "normalised as the base"}[normalize]
    return f"single vector: {f'{pooling} pooling' if pooling else 'the base pooling'}, {norm}"


def training_data(config: Mapping[str, Any], num_examples: int | None) -> str:
    """Where the training data came from and how much there was."""
    data = _section(config, "data")
    fmt = str(data.get("format", "beir"))
    if fmt == "beir":
        source = f"a BEIR folder (split `{data.get('train_split', 'train')}`)"
    else:
        source = f"{fmt.upper()} file `{data.get('train_file')}`"
    lines = [
        f"- Data: `{data.get('path')}`, {source}",
        f"- Training examples (query, positive): {num_examples or 'not recorded'}",
        f"- Positives per query: {data.get('positives', 'sample')}",
    ]
    if data.get("num_negatives"):
        lines.append(f"- Hard negatives from the data: {data['num_negatives']} per query")
    dev, fraction = data.get("dev_split"), data.get("dev_fraction") or 0
    if dev or fraction:
        held = f"split `{dev}`" if dev else f"{100 * fraction:g}% of the training queries"
        lines.append(f"- Dev set (model selection): {held}")
    if data.get("test_split"):
        lines.append(f"- Test set: split `{data['test_split']}`")
    return "## Training data\n\n" + "\n".join(lines)


def training(config: Mapping[str, Any], facts: CardFacts) -> str:
    """Loss, optimizer, Gradient Cache, Matryoshka and mining settings."""
    loss, optim = _section(config, "loss"), _section(config, "optim")
    masked = ", in-batch false negatives masked" if loss.get("mask_false_negatives") else ""
    symmetric = ", symmetric" if loss.get("symmetric") else ""
    steps = facts.run.steps or optim.get("max_steps")
    length = f"{steps} steps" if steps else f"{optim.get('epochs')} epoch(s)"
    lines = [
        f"- Loss: `{loss.get('name')}`, temperature {loss.get('temperature')}, "
        f"{loss.get('similarity')} scores{symmetric}{masked}",
        f"- Optimizer: AdamW, lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
        f"warmup {optim.get('warmup_ratio')} of the steps then linear decay, gradient norm "
        f"clipped at {optim.get('max_grad_norm')}; {length}",
    ]
    resolved = facts.run.resolved
    parts = ["## Training", "\n".join(lines), gradcache_section(config, resolved)]
    parts += [distillation_section(config, resolved), matryoshka_section(config, facts)]
    parts.append(mining_section(config, resolved))
    return "\n\n".join(p for p in parts if p)


def distillation_section(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> str:
    """Where the teacher scores came from and how they were read (empty without distillation)."""
    distill = _section(_section(config, "loss"), "distill")
    if not distill:
        return ""
    teacher = distill.get("teacher")
    source = (
        f"teacher model `{teacher}`, scoring in the loop" if teacher else "stored with the data"
    )
    rows = [
        ("teacher scores", source),
        ("normalisation (per query)", str(distill.get("normalize"))),
        ("teacher temperature", str(distill.get("teacher_temperature"))),
        ("InfoNCE weight", str(distill.get("weight"))),
    ]
    stats = resolved.get("teacher")
    if isinstance(stats, Mapping):
        rows.append(
            ("stored score range", f"{_number(stats.get('low'))} .. {_number(stats.get('high'))}")
        )
        if stats.get("looks_normalized"):
            rows.append(("stored scores look", f"{stats['looks_normalized']}-normalised already"))
    return f"### Distillation\n\n{_table(SETTING, rows)}"


def gradcache_section(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> str:
    """Gradient Cache: the (exact) batch size, chunking and precision."""
    gc, optim = _section(config, "gradcache"), _section(config, "optim")
    precision = str(gc.get("precision"))
    if resolved.get("precision") and precision == "auto":
        precision += f" (ran as {resolved['precision']})"
    rows = [
        ("batch_size", f"{optim.get('batch_size')} (exact full-batch gradient)"),
        *((key, str(gc.get(key))) for key in ("chunk_size", "token_budget")),
        ("precision", precision),
        *((key, str(gc.get(key))) for key in ("sort_by_length", "keep_graphs")),
    ]
    if int(resolved.get("processes", 1)) > 1:
        rows.append(("processes", str(resolved["processes"])))
    intro = "Contrastive batches larger than memory, with exact gradients (Gao et al., 2021)."
    return f"### Gradient Cache\n\n{intro}\n\n{_table(SETTING, rows)}"


def matryoshka_section(config: Mapping[str, Any], facts: CardFacts) -> str:
    """Matryoshka dims and weights (empty when Matryoshka is off)."""
    mrl = _section(_section(config, "loss"), "matryoshka")
    if not (mrl.get("enabled") or mrl.get("dims")):
        return ""
    what = "token vectors" if facts.late else "embeddings"
    text = f"Prefixes of the {what} are trained as {what} of their own (Kusupati et al., 2022)."
    if not facts.dims:
        return f"### Matryoshka\n\n{text} Dims: powers of two from 32 below the model dim, then it."
    if mrl.get("sample_dims"):
        text += f" {mrl['sample_dims']} of the dims are sampled at each step."
    if mrl.get("renormalize") is not None:
        text += f" Prefixes renormalised: {mrl['renormalize']}."
    rows = [(str(d), f"{w:g}") for d, w in zip(facts.dims, facts.weights)]
    return f"### Matryoshka\n\n{text}\n\n" + _table(("dim", "loss weight"), rows)


def mining_section(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> str:
    """The negative-mining strategy and its settings."""
    mining = _section(config, "mining")
    strategy = str(mining.get("strategy", "in_batch"))
    if strategy == "in_batch":
        return "### Negatives\n\nIn-batch negatives (no mining)."
    keys = ["mode", "num_negatives"]
    keys.append("temperature" if mining.get("mode") == "softmax" else "skip_first")
    if strategy in ("refresh", "dynamic"):
        keys.append("refresh_every")
    if strategy == "dynamic":
        keys += ["landmarks", "correction", "kernel"]
    rows = [("strategy", strategy), *((k, str(mining.get(k))) for k in keys)]
    if resolved.get("mining_backend"):
        rows.append(("backend", str(resolved["mining_backend"])))
    intro = "Hard negatives mined from the corpus during training (Monath et al., 2023)."
    return f"### Negative mining\n\n{intro}\n\n{_table(SETTING, rows)}"


def evaluation(
    config: Mapping[str, Any],
    facts: CardFacts,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    metrics: Sequence[str],
) -> str:
    """The before/after table by dim; empty without an evaluation of the trained model."""
    if not after or not after.get("metrics"):
        return ""
    names = [m for m in metrics if m in after["metrics"]] or list(after["metrics"])
    new = _by_dim(after, facts.dim)
    old = _by_dim(before, facts.dim) if before and before.get("metrics") else None
    header = ["token dim" if facts.late else "dim"]
    rows = [[dim] for dim in new]
    for name in names:
        label = metric_label(name)
        if old is not None:
            header.append(f"{label} before")
            for row in rows:
                row.append(_number(old.get(row[0], {}).get(name)))
        header.append(f"{label} after" if old is not None else label)
        for row in rows:
            row.append(_number(new[row[0]].get(name)))
    data = _section(config, "data")
    queries = f", {after['num_queries']} queries" if after.get("num_queries") else ""
    note = "before: the base model; after: this model" if old is not None else "this model"
    where = f"`{data.get('path')}`, split `{data.get('test_split')}`{queries}"
    table = _table(tuple(header), [tuple(row) for row in rows])
    return f"## Evaluation\n\nRetrieval on {where} ({note}).\n\n{table}"


def metric_label(name: str) -> str:
    """``ndcg@10`` -> ``nDCG@10``, ``recall@100`` -> ``R@100`` (others unchanged)."""
    kind, sep, k = name.partition("@")
    return f"{METRIC_LABELS.get(kind, kind)}{sep}{k}"


def _by_dim(evaluation: Mapping[str, Any] | None, dim: int | None) -> dict[str, dict[str, Any]]:
    """``{dim label: {metric: value}}``: the evaluated prefix dims ascending, or the full dim."""
    per_dim = (evaluation or {}).get("metrics_by_dim") or {}
    if per_dim:
        return {str(d): dict(per_dim[d]) for d in sorted(per_dim, key=int)}
    return {str(dim or "full"): dict((evaluation or {}).get("metrics") or {})}


def usage(facts: CardFacts, path: str) -> str:
    """How to load and use the folder: PyLate for late interaction, else sentence-transformers
    (``truncate_dim`` with Matryoshka, ``prompt_name`` for stored prompts, two towers apart)."""
    if facts.late:
        dims = ", ".join(map(str, facts.dims))
        note = f"# Matryoshka token dims {dims}: keep each token vector's first k, renormalised\n"
        code = (note if facts.dims else "") + PYLATE_USAGE.replace("{path}", path)
        return f"## Usage\n\n```python\n{code}\n```"
    load, truncate = "", ""
    if facts.dims:
        load = f"# Matryoshka: truncate_dim may be any of {', '.join(map(str, facts.dims))}\n"
        truncate = f", truncate_dim={facts.dims[(len(facts.dims) - 1) // 2]}"
    query = ', prompt_name="query"' if "query" in facts.prompts else ""
    doc = ', prompt_name="document"' if "document" in facts.prompts else ""
    q_model, d_model = "model", "model"
    if facts.model.get("tied", True):
        load += f'model = SentenceTransformer("{path}"{truncate})'
    else:
        q_model, d_model = "query_model", "document_model"
        load += f'query_model = SentenceTransformer("{path}/query"{truncate})\n'
        load += f'document_model = SentenceTransformer("{path}/document"{truncate})'
    return (
        "## Usage\n\n```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        f"{load}\n"
        f'queries = {q_model}.encode(["what causes tides?"]{query})\n'
        f'documents = {d_model}.encode(["Tides are caused by the moon."]{doc})\n'
        f"scores = {q_model}.similarity(queries, documents)\n```"
    )


def config_block(config: Mapping[str, Any]) -> str:
    """The whole run config as YAML, collapsed."""
    text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False).rstrip()
    return (
        "## Training config\n\n<details>\n<summary>The run's config (dualforge)</summary>\n\n"
        f"```yaml\n{text}\n```\n\n</details>"
    )


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}


def _base_link(facts: CardFacts) -> str:
    if facts.hub_base:
        return f"[{facts.hub_base}](https://huggingface.co/{facts.hub_base})"
    return f"`{facts.base}`"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
