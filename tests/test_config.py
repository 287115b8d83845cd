"""Config loading: YAML + overrides; type, choice, range and cross-field checks that name the key."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, get_args

import pytest

from dualforge.config import (
    Config,
    ConfigError,
    Correction,
    DataConfig,
    DataFormat,
    EvalConfig,
    InfoNceConfig,
    MatryoshkaConfig,
    MiningConfig,
    ModelConfig,
    OptimConfig,
    Precision,
    Projection,
    Strategy,
    load_config,
    save_config,
)
from dualforge.data.sampler import PositiveMode
from dualforge.errors import UserError
from dualforge.hardware import Resolved
from dualforge.losses.contrastive import Similarity
from dualforge.mining import NystromKernel, SamplerBackend
from dualforge.mining.negatives import MODES, MiningMode
from dualforge.modeling.pooling import Pooling
from dualforge.train.components import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        assert "dualforge train" in path.read_text().splitlines()[1], (
            f"{path} lacks its command header"
        )


def test_overrides_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n  batch_size: 64\neval:\n  dims: [32, 64]\n")
    cfg = load_config(path, ["optim.lr=3e-5", "run.name=x", "model.query_prefix='q: '"])
    assert cfg.optim.lr == 3e-5 and cfg.optim.batch_size == 64
    assert cfg.eval.dims == (32, 64) and cfg.run.name == "x" and cfg.model.query_prefix == "q: "


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"^optim: unknown key\(s\) \['lrr'\]"),
        ("foo.bar=1", r"^config: unknown key\(s\) \['foo'\]"),
        ("optim.batch_size=big", r"^optim\.batch_size: expected an integer"),
        ("run.resume=1", r"^run\.resume: expected true/false"),
        ("optim.lr=fast", r"^optim\.lr: expected a number, got 'fast'"),
        ("eval.dims=5", r"^eval\.dims: expected a list"),
        ("nokey", r"must look like key\.sub=value"),
        ("optim.lr", r"^override 'optim\.lr' must look like key\.sub=value"),
        ("optim.lr=[", r"^override 'optim\.lr=\[': the value is not valid YAML"),
        ("optim=3", r"^optim: expected a mapping"),
    ],
)
def test_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_invalid_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1\n  batch_size: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4:1: invalid YAML: ") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_config_error_is_a_user_error_and_a_value_error() -> None:
    with pytest.raises(UserError):
        load_config(None, ["loss.similarity=l2"])
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("loss.similarity=l2", "loss.similarity", Similarity),
        ("data.format=csv", "data.format", DataFormat),
        ("data.positives=first", "data.positives", PositiveMode),
        ("model.pooling=max", "model.pooling", Pooling),
        ("model.projection=svd", "model.projection", Projection),
        ("gradcache.precision=fp8", "gradcache.precision", Precision),
        ("mining.strategy=ance", "mining.strategy", Strategy),
        ("mining.mode=greedy", "mining.mode", MiningMode),
        ("mining.correction=none", "mining.correction", Correction),
        ("mining.kernel=cubic", "mining.kernel", NystromKernel),
        ("mining.backend=gpu", "mining.backend", SamplerBackend),
    ],
)
def test_choices_name_the_key_and_the_allowed_values(override: str, key: str, allowed: Any) -> None:
    bad = override.partition("=")[2]
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == f"{key}={bad!r}: must be one of {list(get_args(allowed))}"


def test_a_choice_must_have_the_right_type_and_optional_choices_take_null() -> None:
    with pytest.raises(ConfigError, match=r"^gradcache\.precision=16: must be one of"):
        load_config(None, ["gradcache.precision=16"])
    cfg = load_config(None, ["model.pooling=null", "model.projection=pca", "model.pooling=cls"])
    assert (cfg.model.pooling, cfg.model.projection) == ("cls", "pca")
    assert load_config(None, ["model.projection=null"]).model.projection is None


def test_sections_validate_themselves_without_from_dict() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.similarity='l2'"):
        InfoNceConfig(similarity="l2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^optim\.lr=0: must be > 0"):
        OptimConfig(lr=0)
    with pytest.raises(ConfigError, match=r"^eval\.select_metric='mrr@10'"):
        EvalConfig(metrics=("ndcg@10",), select_metric="mrr@10")
    with pytest.raises(ConfigError, match=r"^loss\.matryoshka: .*strictly increasing"):
        MatryoshkaConfig(dims=(64, 32))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.name=''"],
        ["model.query_max_length=0"],
        ["model.doc_max_length=0"],
        ["model.attention_dropout=1.0"],
        ["model.attention_dropout=-0.1"],
        ["model.projection_docs=1"],
        ["data.dev_fraction=1"],
        ["data.dev_fraction=-0.1"],
        ["data.dev_corpus_size=-1"],
        ["data.num_negatives=-1"],
        ["loss.temperature=0"],
        ["loss.temperature=.nan"],
        ["loss.name=''"],
        ["loss.matryoshka.sample_dims=-1"],
        ["loss.matryoshka.dims=[16,32]", "loss.matryoshka.sample_dims=3"],
        ["gradcache.chunk_size=0"],
        ["gradcache.token_budget=0"],
        ["gradcache.chunk_size=null"],
        ["optim.batch_size=0"],
        ["optim.lr=0"],
        ["optim.lr=-1e-5"],
        ["optim.weight_decay=-0.1"],
        ["optim.warmup_ratio=1.5"],
        ["optim.max_grad_norm=-1"],
        ["optim.epochs=0"],
        ["optim.max_steps=0"],
        ["eval.k=0"],
        ["eval.batch_size=0"],
        ["eval.dims=[0,64]"],
        ["eval.every=-1"],
        ["run.name=''"],
        ["run.seed=-1"],
        [f"run.seed={2**32}"],
        ["run.save_every=-1"],
        ["run.keep_checkpoints=0"],
        ["run.log_every=0"],
        ["run.threads=-1"],
    ],
)
def test_numbers_out_of_range_name_the_key(overrides: list[str]) -> None:
    key = overrides[-1].partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.*: must be "):
        load_config(None, overrides)


def test_values_at_the_edge_of_their_range_are_valid() -> None:
    cfg = load_config(
        None,
        [
            "data.dev_fraction=0",
            "optim.warmup_ratio=1",
            "optim.max_grad_norm=0",
            "optim.weight_decay=0",
            "model.attention_dropout=0",
            "gradcache.chunk_size=null",
            "gradcache.token_budget=1",
            f"run.seed={2**32 - 1}",
            "run.save_every=0",
            "eval.every=0",
            "loss.matryoshka.dims=[16,32]",
            "loss.matryoshka.sample_dims=2",
        ],
    )
    assert cfg.gradcache.chunk_size is None and cfg.run.seed == 2**32 - 1


def test_matryoshka_dims_and_weights_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.matryoshka: 1 Matryoshka weights for 2 dims"):
        load_config(None, ["loss.matryoshka.dims=[16,32]", "loss.matryoshka.weights=[1]"])
    with pytest.raises(
        ConfigError, match=r"^loss\.matryoshka\.weights=\(1\.0, -1\.0\): must be >= 0"
    ):
        load_config(None, ["loss.matryoshka.dims=[16,32]", "loss.matryoshka.weights=[1,-1]"])
    with pytest.raises(ConfigError, match=r"^loss\.matryoshka\.weights=\(-1\.0,\): must be >= 0"):
        load_config(None, ["loss.matryoshka.enabled=true", "loss.matryoshka.weights=[-1]"])


def test_metric_names_must_parse_and_select_metric_must_be_listed() -> None:
    with pytest.raises(ConfigError, match=r"^eval\.metrics\[1\]='ndcg@x': unknown metric"):
        load_config(None, ["eval.metrics=[ndcg@10,ndcg@x]"])
    with pytest.raises(ConfigError, match=r"^eval\.metrics=\[\]: must name at least one"):
        load_config(None, ["eval.metrics=[]"])
    with pytest.raises(ConfigError) as info:
        load_config(None, ["eval.select_metric=ndcg@20"])
    assert str(info.value).startswith("eval.select_metric='ndcg@20': must be one of eval.metrics")
    assert "'recall@100'" in str(info.value)
    cfg = load_config(None, ["eval.metrics=[p@5,recall@100]", "eval.select_metric=recall@100"])
    assert cfg.eval.metrics == ("p@5", "recall@100") and cfg.eval.select_metric == "recall@100"


def test_mining_backend_is_a_plain_choice() -> None:
    assert MiningConfig().backend == "auto"
    assert load_config(None, ["mining.backend=numba"]).mining.backend == "numba"


def test_choices_have_one_definition() -> None:
    assert typing.get_type_hints(MiningConfig)["mode"] is MiningMode
    assert get_args(MiningMode) == MODES
    assert typing.get_type_hints(InfoNceConfig)["similarity"] is Similarity
    assert typing.get_type_hints(DataConfig)["positives"] is PositiveMode
    assert typing.get_type_hints(ModelConfig)["pooling"] == Pooling | None
    assert set(PRECISIONS) == set(get_args(Resolved))
    assert set(get_args(Precision)) == {"auto", *get_args(Resolved)}


def test_hardware_keys_default_to_auto_and_check_their_values() -> None:
    cfg = load_config(None, [])
    assert (cfg.run.device, cfg.gradcache.precision, cfg.gradcache.keep_graphs) == (
        "auto",
        "auto",
        1,
    )
    assert load_config(None, ["run.device=cuda:3"]).run.device == "cuda:3"
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(ConfigError, match=rf"^run\.device='{bad}': must be auto, cpu"):
            load_config(None, [f"run.device={bad}"])
    with pytest.raises(ConfigError, match=r"^gradcache\.keep_graphs=-1: must be >= 0"):
        load_config(None, ["gradcache.keep_graphs=-1"])
    with pytest.raises(
        ConfigError, match=r"^run\.strategy='zero3': must be one of \['ddp', 'fsdp'\]"
    ):
        load_config(None, ["run.strategy=zero3"])


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "eval.dims=[32,64]",
            "gradcache.token_budget=4096",
            "optim.max_steps=7",
            "model.projection=pca",
            "mining.backend=torch",
        ],
    )
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
