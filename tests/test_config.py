"""Config loading: YAML + overrides, type checks that name the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualforge.config import Config, ConfigError, load_config, save_config

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
        ("optim.lrr=1", r"config\.optim: unknown key\(s\) \['lrr'\]"),
        ("optim.batch_size=big", r"config\.optim\.batch_size: expected an integer"),
        ("run.resume=1", r"config\.run\.resume: expected true/false"),
        ("optim.lr=fast", r"config\.optim\.lr: expected a number"),
        ("eval.dims=5", r"config\.eval\.dims: expected a list"),
        ("nokey", r"must look like key\.sub=value"),
        ("optim=3", r"config\.optim: expected a mapping"),
    ],
)
def test_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["eval.dims=[32,64]", "gradcache.token_budget=4096", "optim.max_steps=7"]
    )
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
