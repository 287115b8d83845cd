"""Model cards: front matter, the evaluation table by dim, usage, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dualforge.config import Config, load_config
from dualforge.modeling import load_model
from dualforge.modeling.late_io import build_late_model
from dualforge.modeling.model_card import (
    RunFacts,
    evaluations_from_report,
    hub_name,
    metric_label,
    model_card,
    run_facts,
    write_model_card,
)
from dualforge.train.report import write_report

BEFORE = {
    "metrics": {"ndcg@10": 0.6, "recall@100": 0.9, "mrr@10": 0.5},
    "metrics_by_dim": {
        "32": {"ndcg@10": 0.4, "recall@100": 0.7, "mrr@10": 0.3},
        "128": {"ndcg@10": 0.6, "recall@100": 0.9, "mrr@10": 0.5},
        "64": {"ndcg@10": 0.5, "recall@100": 0.8, "mrr@10": 0.4},
    },
}
AFTER = {
    "metrics": {"ndcg@10": 0.7, "recall@100": 0.95, "mrr@10": 0.6},
    "metrics_by_dim": {
        "32": {"ndcg@10": 0.55, "recall@100": 0.85, "mrr@10": 0.45},
        "64": {"ndcg@10": 0.65, "recall@100": 0.9, "mrr@10": 0.55},
        "128": {"ndcg@10": 0.7, "recall@100": 0.95, "mrr@10": 0.6},
    },
    "num_queries": 300,
    "embedding_dim": 128,
}
MRL = [
    "loss.matryoshka.dims=[32,64,128]",
    "loss.matryoshka.weights=[1,1,2]",
    "eval.dims=[32,64,128]",
]


def config(*overrides: str) -> dict[str, Any]:
    out: dict[str, Any] = load_config(None, list(overrides)).to_dict()
    return out


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    header: dict[str, Any] = yaml.safe_load(card.split("---\n")[1])
    return header


def table_rows(card: str) -> list[list[str]]:
    """The rows of the evaluation table (header first)."""
    section = card.split("## Evaluation")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1
    ]


def test_matryoshka_card_has_front_matter_and_the_table_by_dim() -> None:
    prompts = {"query": "query: ", "document": ""}
    run = RunFacts(num_examples=809, steps=21, prompts=prompts, resolved={"precision": "fp32"})
    card = model_card(config(*MRL), BEFORE, AFTER, run)
    header = front_matter(card)
    assert header["library_name"] == "sentence-transformers"
    assert header["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "feature-extraction", "dualforge", "matryoshka"} <= set(
        header["tags"]
    )
    assert header["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert header["datasets"] == ["BeIR/scifact"]
    assert table_rows(card) == [
        ["dim", "nDCG@10 before", "nDCG@10 after", "R@100 before", "R@100 after"],
        ["32", "0.4000", "0.5500", "0.7000", "0.8500"],
        ["64", "0.5000", "0.6500", "0.8000", "0.9000"],
        ["128", "0.6000", "0.7000", "0.9000", "0.9500"],
    ]
    assert "split `test`, 300 queries" in card
    assert "| 128 | 2 |" in card  # Matryoshka dims and weights
    assert "Training examples (query, positive): 809" in card and "21 steps" in card
    assert "| chunk_size | 16 |" in card and "auto (ran as fp32)" in card
    assert 'SentenceTransformer("path/to/this/model", truncate_dim=64)' in card
    assert 'prompt_name="query"' in card and 'prompt_name="document"' not in card
    config_yaml = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_yaml) == config(*MRL)
    assert card.count("<details>") == 1 and card.endswith("</details>\n")


def test_late_interaction_card_uses_pylate() -> None:
    cfg = config(
        "model.kind=late_interaction", "model.token_dim=96", "loss.matryoshka.dims=[32,96]"
    )
    after = {"metrics": {"ndcg@10": 0.7}, "metrics_by_dim": {"32": {"ndcg@10": 0.5}}}
    card = model_card(cfg, None, after, model_path="me/colbert")
    header = front_matter(card)
    assert header["library_name"] == "PyLate"
    assert {"ColBERT", "PyLate", "sentence-transformers", "matryoshka"} <= set(header["tags"])
    assert 'models.ColBERT(model_name_or_path="me/colbert")' in card
    assert "is_query=True" in card and "rank.rerank(" in card
    assert "SentenceTransformer(" not in card
    assert table_rows(card) == [["token dim", "nDCG@10"], ["32", "0.5000"]]
    assert "96 per token" in card and "# Matryoshka token dims 32, 96" in card


def test_card_without_evaluations_has_no_table() -> None:
    cfg = config("model.name=./runs/x/final", "data.path=/data/mine", "mining.strategy=dynamic")
    card = model_card(cfg)
    assert "## Evaluation" not in card and "| dim |" not in card
    header = front_matter(card)
    assert (
        "base_model" not in header
        and "datasets" not in header
        and "matryoshka" not in header["tags"]
    )
    assert "`./runs/x/final`" in card and "not recorded" in card
    assert "| strategy | dynamic |" in card and "| landmarks | 0.05 |" in card
    assert "truncate_dim" not in card and "prompt_name" not in card
    assert model_card(cfg, BEFORE, {"metrics": {}}).count("## Evaluation") == 0


def test_full_dim_table_without_dims_and_untied_towers() -> None:
    after = {"metrics": {"ndcg@10": 0.7, "map@100": 0.4}, "embedding_dim": 384}
    card = model_card(config("model.tied=false"), None, after, metrics=["map@100"])
    assert table_rows(card) == [["dim", "MAP@100"], ["384", "0.4000"]]
    assert 'SentenceTransformer("path/to/this/model/query")' in card
    assert "document_model.encode(" in card


def test_card_from_a_report_json(tmp_path: Path) -> None:
    cfg = load_config(None, MRL)
    write_report(tmp_path, cfg, BEFORE, AFTER, 12, 3.0, {"precision": "bf16"})
    report = json.loads((tmp_path / "report.json").read_text())
    before, after = evaluations_from_report(report)
    assert before is not None and after is not None
    assert after["metrics_by_dim"] == AFTER["metrics_by_dim"]
    run = RunFacts(steps=report["steps"], resolved=report["resolved"])
    card = model_card(report["config"], before, after, run)
    assert ["64", "0.5000", "0.6500", "0.8000", "0.9000"] in table_rows(card)
    assert evaluations_from_report({"metrics": {}, "before": None}) == (None, None)
    assert "## Evaluation" not in model_card(Config().to_dict(), *evaluations_from_report({}))


def test_write_model_card_is_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "final"
    path = write_model_card(folder, "old\n")
    assert write_model_card(folder, "new\n") == path == folder / "README.md"
    assert path.read_text() == "new\n" and [p.name for p in folder.iterdir()] == ["README.md"]


def test_names() -> None:
    assert hub_name("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert hub_name("runs/a/final") is None and hub_name("/abs/model") is None
    assert hub_name("./model") is None
    assert [metric_label(m) for m in ("ndcg@10", "recall@100", "mrr@10", "p@5")] == [
        "nDCG@10", "R@100", "MRR@10", "p@5",
    ]  # fmt: skip


def test_run_facts_read_the_trained_model(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir), query_prefix="q: ", doc_prefix="")
    facts = run_facts(model, num_examples=5, steps=2, resolved={"precision": "fp32"})
    assert facts == RunFacts(5, 2, model.dim, "mean", True, {"query": "q: ", "document": ""},
                             {"precision": "fp32"})  # fmt: skip
    card = model_card(config(f"model.name={tiny_model_dir}"), None, None, facts)
    assert "mean pooling, unit-length" in card and f"| Output dimension | {model.dim} |" in card
    assert 'prompt_name="query"' in card and "q: " in card
    late = build_late_model(str(tiny_model_dir), dim=16, query_max_length=8, doc_max_length=16)
    assert run_facts(late, steps=3) == RunFacts(steps=3, output_dim=16)
