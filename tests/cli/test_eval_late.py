"""``dualforge eval`` on a late-interaction folder: exhaustive MaxSim, storage, candidate stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.cli.main import main
from dualforge.errors import UsageError
from dualforge.modeling.late_io import save_late_model
from tests.cli.test_search_eval_cli import eval_args, run_cli
from tests.modeling.test_late_interaction import late_model


@pytest.fixture(scope="module")
def late_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return save_late_model(late_model(tokenizer), tmp_path_factory.mktemp("late") / "model")


def test_eval_of_a_late_interaction_folder(
    late_dir: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With every token as a candidate the reranked metrics are the exhaustive ones."""
    extra = ["--dims", "8,16", "--candidates", "--k-token", "100000", "--candidate-dim", "8"]
    assert run_cli(eval_args(late_dir, tiny_beir, *extra)) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics_by_dim"]) == {"8", "16"}
    assert report["candidates"]["recall_of_exhaustive@100"] == 1.0
    assert report["candidates"]["metrics"] == pytest.approx(report["metrics"])
    assert report["bytes_per_doc"]["16"]["fp32"] == report["tokens_per_doc"] * 16 * 4
    with pytest.raises(UsageError, match="--funnel is for single-vector models"):
        run_cli(eval_args(late_dir, tiny_beir, "--funnel", "8:10,16:5"))


def _search(late_dir: Path, corpus: Path, queries: Path, *extra: str) -> list[list[str]]:
    """Ranked document ids per query printed by ``dualforge search``."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(["search", "--model", str(late_dir), "--corpus", str(corpus),
                        "--queries", str(queries), "--k", "5", *extra]) == 0  # fmt: skip
    ranked: list[list[str]] = []
    for line in out.getvalue().splitlines():
        if line.startswith("query: "):
            ranked.append([])
        elif line.strip() and ranked:
            ranked[-1].append(line.split("\t")[0].split(". ", 1)[1])
    return ranked


def test_search_with_a_late_interaction_folder(
    late_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """Exhaustive MaxSim search equals the candidate stage when every token is a candidate; a
    query copied from a document finds that document first."""
    from dualforge.data import load_corpus

    doc = next(iter(load_corpus(tiny_beir / "corpus.jsonl").values()))
    queries = tmp_path / "q.txt"
    queries.write_text(f"{doc.full_text}\ngene therapy\n")
    exhaustive = _search(late_dir, tiny_beir, queries)
    assert len(exhaustive) == 2 and all(len(r) == 5 for r in exhaustive)
    assert exhaustive[0][0] == doc.id
    shortlisted = _search(late_dir, tiny_beir, queries, "--candidates", "--k-token", "100000")
    assert shortlisted == exhaustive
    assert len(_search(late_dir, tiny_beir, queries, "--dims", "8")) == 2
    with pytest.raises(UsageError, match="single-vector"):
        _search(late_dir, tiny_beir, queries, "--funnel", "8:10,16:5")


def test_encode_refuses_a_late_interaction_folder(
    late_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pooling its tokens into one vector would be silently wrong: the command says what to use."""
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha\n")
    out = tmp_path / "x.npy"
    args = ["encode", "--model", str(late_dir), "--input", str(texts), "--output", str(out)]
    assert main(args) == 2
    assert "token matrices, not one vector each; search with it" in capsys.readouterr().err
    assert not out.exists()
