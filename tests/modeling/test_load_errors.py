"""A model name or folder that cannot be loaded raises ModelLoadError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualforge.errors import UserError
from dualforge.modeling import load_model
from dualforge.modeling.names import ModelLoadError, check_model_name


def test_a_missing_folder_fails_before_transformers_is_asked(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "model"
    with pytest.raises(ModelLoadError, match=r"no such folder$") as info:
        load_model(str(missing))
    assert info.value.name == str(missing)
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)


def test_a_folder_without_a_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert (
        message.startswith(f"model {str(tmp_path)!r}: cannot be loaded: ") and "\n" not in message
    )


@pytest.mark.parametrize("name", ["minilm", "owner/name", "name"])
def test_hub_names_are_left_to_loading(name: str) -> None:
    check_model_name(name)


@pytest.mark.parametrize("name", ["/abs/x", "./x", "../x", "~/x", "runs/x/final"])
def test_names_meant_as_folders_must_exist(name: str) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        check_model_name(name)
