"""The in-loop teacher: each kind scores like the model it loads, pairs are cached, and a run
distils from a teacher folder with mined negatives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dualforge.config import ConfigError, load_config
from dualforge.data import TEACHER_SCORES, Batch
from dualforge.losses import maxsim
from dualforge.modeling import load_model
from dualforge.modeling.late_io import load_late_model, save_late_model
from dualforge.tokens import join_tokens
from dualforge.train.inputs import check_inputs
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from dualforge.train.teacher import QrelsTeacher, Teacher, load_teacher
from tests.conftest import make_tiny_bert
from tests.modeling.test_late_interaction import late_model
from tests.train.helpers import tiny_overrides

CPU = torch.device("cpu")


def _batch() -> Batch:
    return Batch(
        queries=["heart risk", "sleep memory", "heart risk"],
        positives=["blood pressure", "dreams", "blood pressure"],
        negatives=[["diet", "drug"], ["vitamin", "diet"], ["sleep", "diet"]],
        query_ids=[None] * 3,
        positive_ids=[None] * 3,
        negative_ids=[[None, None]] * 3,
    )


def test_pairs_are_scored_once_and_cached() -> None:
    calls: list[tuple[list[str], list[list[str]]]] = []

    def score(queries: Any, candidates: Any) -> list[list[float]]:
        calls.append((list(queries), [list(c) for c in candidates]))
        return [[float(len(q) + len(c)) for c in row] for q, row in zip(queries, candidates)]

    teacher = Teacher(score, "fake", capacity=100)
    got = teacher.annotate(_batch())
    assert got.extras[TEACHER_SCORES].per_candidate
    assert got.extras[TEACHER_SCORES].values[0] == [24.0, 14.0, 14.0]
    # "heart risk" asked for once, with its 4 distinct candidates; 7 pairs scored of 9
    assert calls[0][0] == ["heart risk", "sleep memory"]
    assert calls[0][1][0] == ["blood pressure", "diet", "drug", "sleep"]
    assert teacher.last["teacher_pairs"] == 9 and teacher.last["teacher_scored"] == 7
    teacher.annotate(_batch())
    assert len(calls) == 1 and teacher.last["teacher_scored"] == 0  # all cached
    small = Teacher(score, "fake", capacity=2)
    small.annotate(_batch())
    assert len(small.cache) == 2


def test_a_bi_encoder_teacher_scores_dot_products(tiny_model_dir: Path) -> None:
    teacher = load_teacher(str(tiny_model_dir), CPU, batch_size=2)
    assert teacher.kind == "single_vector"
    got = teacher.annotate(_batch()).extras[TEACHER_SCORES].values
    model = load_model(str(tiny_model_dir))
    q = model.encode(["sleep memory"], "query")
    d = model.encode(["dreams", "vitamin", "diet"], "document")
    assert np.allclose(got[1], (q @ d.T)[0], atol=1e-5)


def test_a_late_interaction_teacher_scores_maxsim(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = save_late_model(late_model(tokenizer), tmp_path / "late")
    teacher = load_teacher(str(folder), CPU)
    assert teacher.kind == "late_interaction"
    got = teacher.annotate(_batch()).extras[TEACHER_SCORES].values
    late = load_late_model(str(folder)).eval()
    q = late.encode(["heart risk"], "query")[0]
    docs = late.encode(["blood pressure", "diet", "drug"], "document")
    for j, d in enumerate(docs):
        qt = join_tokens(torch.tensor(q)[None], torch.ones(1, len(q), dtype=torch.bool))
        dt = join_tokens(torch.tensor(d)[None], torch.ones(1, len(d), dtype=torch.bool))
        assert got[0][j] == pytest.approx(float(maxsim(qt, dt)[0, 0]), rel=1e-4)


def test_a_cross_encoder_teacher_scores_its_logit(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification

    bert = make_tiny_bert(len(tokenizer))
    config = BertConfig(**{**bert.config.to_dict(), "num_labels": 1})
    torch.manual_seed(0)
    cross = BertForSequenceClassification(config).eval()
    cross.save_pretrained(tmp_path / "ce")
    tokenizer.save_pretrained(tmp_path / "ce")
    teacher = load_teacher(str(tmp_path / "ce"), CPU)
    assert teacher.kind == "cross_encoder"
    got = teacher.annotate(_batch()).extras[TEACHER_SCORES].values
    enc = tokenizer(["sleep memory"] * 3, ["dreams", "vitamin", "diet"], padding=True,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        want = cross(**enc).logits[:, 0].tolist()
    assert np.allclose(got[1], want, atol=1e-5)
    config2 = BertConfig(**{**bert.config.to_dict(), "num_labels": 2})
    BertForSequenceClassification(config2).save_pretrained(tmp_path / "two")
    tokenizer.save_pretrained(tmp_path / "two")
    with pytest.raises(Exception, match="needs one label"):
        load_teacher(str(tmp_path / "two"), CPU)


def test_a_run_distils_mined_negatives_scored_in_the_loop(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), "optim.max_steps=3",
        "eval.before=false", "mining.strategy=static", "mining.num_negatives=3",
        "mining.branching=4", "mining.leaf_size=4", "loss.name=kl",
        f"loss.distill.teacher={tiny_model_dir}", "loss.distill.normalize=zscore",
    ]  # fmt: skip
    result = train(load_config(None, overrides))
    rows = read_metrics_log(result.run_dir / "metrics.jsonl")
    start = next(r for r in rows if r["event"] == "start")
    assert start["teacher_model"] == "single_vector"
    steps = [r for r in rows if r["event"] == "train"]
    assert len(steps) == 3 and all(r["teacher_pairs"] == 8 * 4 for r in steps)
    assert all(r["teacher_seconds"] > 0 and "distill" in r for r in steps)


def test_a_missing_teacher_is_caught_before_anything_loads(tmp_path: Path) -> None:
    cfg = load_config(None, ["loss.name=kl", f"loss.distill.teacher={tmp_path / 'nope'}",
                             f"run.output_dir={tmp_path}", "data.num_negatives=1"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"^loss.distill.teacher='.*nope': "):
        check_inputs(cfg)


def test_qrels_grades_as_teacher_scores(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), "optim.max_steps=2",
        "eval.before=false", "mining.strategy=static", "mining.num_negatives=2",
        "mining.branching=4", "mining.leaf_size=4", "loss.name=kl", "loss.distill.teacher=qrels",
        "loss.distill.teacher_temperature=0.5",
    ]  # fmt: skip
    seen: list[list[list[float]]] = []
    result = train(
        load_config(None, overrides),
        hooks=[lambda p, s, info: seen.append(info.batch.extras[TEACHER_SCORES].values)],
    )
    assert result.steps == 2 and len(seen) == 2
    for rows in seen:  # the positive carries its grade (>= 1), mined negatives are unjudged: 0
        assert all(r[0] >= 1 and r[1:] == [0.0, 0.0] for r in rows), rows
    with pytest.raises(ConfigError, match=r"data\.format must be 'beir'"):
        load_config(None, ["loss.name=kl", "loss.distill.teacher=qrels", "data.format=jsonl",
                           "data.num_negatives=1"])  # fmt: skip


def test_in_batch_scores_every_document_of_the_batch(tiny_model_dir: Path) -> None:
    teacher = load_teacher(str(tiny_model_dir), CPU, in_batch=True)
    got = teacher.annotate(_batch()).extras[TEACHER_SCORES].values
    assert [len(r) for r in got] == [9, 9, 9]
    own = load_teacher(str(tiny_model_dir), CPU).annotate(_batch()).extras[TEACHER_SCORES].values
    assert np.allclose(got[1][3:6], own[1], atol=1e-6)  # its own candidates, where they sit
    grades = QrelsTeacher({"q0": {"d1": 2, "d4": 1}}, in_batch=True)
    b = _batch()
    b = Batch(b.queries, b.positives, b.negatives, ["q0", "q1", None], ["d0", "d2", "d4"],
              [["d1", None], ["d3", "d1"], ["d5", "d6"]])  # fmt: skip
    rows = grades.annotate(b).extras[TEACHER_SCORES].values
    assert rows[0] == [0, 2, 0, 0, 0, 2, 1, 0, 0] and rows[1] == [0.0] * 9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.distill.in_batch=true"], "needs loss.distill.teacher"),
        (["loss.distill.in_batch=true", "loss.distill.teacher=x", "loss.name=margin_mse"],
         "loss.name='kl'"),
    ],
)  # fmt: skip
def test_in_batch_needs_a_teacher_and_kl(overrides: list[str], message: str) -> None:
    base = ["loss.name=kl", "data.format=jsonl", "data.num_negatives=1"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])
