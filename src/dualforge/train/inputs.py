"""Check what a run's config points at (data files, model folder, loss name) before loading it.

:func:`check_inputs` is cheap (it stats files, it reads none), so ``dualforge train`` and
``dualforge validate`` call it first: a wrong path fails in a second, naming the key, instead of
after the model has loaded. What cannot be known without loading (a hub name that does not
exist, a bad record in a file) still fails at load time, as a :class:`~dualforge.errors.UserError`.
"""

from __future__ import annotations

import importlib.util
from glob import glob
from pathlib import Path

from dualforge.config import Config, ConfigError, DataConfig, DistillLossConfig, RunConfig
from dualforge.config.loss import QRELS_TEACHER
from dualforge.data import available_splits, corpus_file
from dualforge.files import blocked
from dualforge.modeling.names import ModelLoadError, check_model_name
from dualforge.train.distributed import ProcessInfo
from dualforge.train.losses import LossRegistry, default_losses
from dualforge.train.run_folder import check_run_folder
from dualforge.train.tensorboard import summary_writer_class

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")


def check_inputs(cfg: Config, losses: LossRegistry | None = None) -> None:
    """Check that the loss is registered, that the data and model paths exist, and that the
    run folder can be written and is free (not in use, not holding another run).

    Args:
        cfg: A validated config.
        losses: The losses the run may use (default: dualforge's own).

    Raises:
        ConfigError: Naming the key and the path, e.g. ``data.path='/x': no such folder``.
        RunFolderError: The run folder is in use, or holds a run neither resumed nor replaced.
    """
    (losses or default_losses()).entry(cfg.loss)
    _check_output(cfg.run)
    _check_data(cfg.data)
    if cfg.mining.check_qrels is not None and not Path(cfg.mining.check_qrels).is_file():
        raise ConfigError(f"mining.check_qrels={cfg.mining.check_qrels!r}: no such file")
    try:
        check_model_name(cfg.model.name)
    except ModelLoadError as err:
        raise ConfigError(f"model.name={err.name!r}: {err.reason}") from err
    teacher = cfg.loss.distill.teacher if isinstance(cfg.loss, DistillLossConfig) else None
    if teacher is not None and teacher != QRELS_TEACHER:
        try:
            check_model_name(teacher)
        except ModelLoadError as err:
            raise ConfigError(f"loss.distill.teacher={err.name!r}: {err.reason}") from err
    _check_extras(cfg)


def _check_output(run: RunConfig) -> None:
    """The run folder can be created (its nearest existing parent is a writable folder) and
    :func:`~dualforge.train.run_folder.check_run_folder` accepts it."""
    run_dir = Path(run.output_dir) / run.name
    problem = blocked(run_dir)
    if problem is not None:
        raise ConfigError(f"run.output_dir={run.output_dir!r}: {problem}")
    check_run_folder(run_dir, run.resume, run.overwrite, probe=ProcessInfo.from_env().main)


def _check_extras(cfg: Config) -> None:
    """The optional packages the config needs are installed (each error names its extra)."""
    if "tensorboard" in cfg.run.loggers:
        summary_writer_class()
    if cfg.model.lora.enabled and importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora.enabled=true needs peft: pip install 'dualforge[lora]'")


def _check_data(cfg: DataConfig) -> None:
    """The training file, or the BEIR folder with its files and the train / dev qrels."""
    if cfg.format != "beir":
        if cfg.train_file is None:
            raise ConfigError(f"data.train_file=None: must be set for data.format={cfg.format!r}")
        found = Path(cfg.train_file).is_file() or (
            cfg.format == "hf" and (Path(cfg.train_file).is_dir() or bool(glob(cfg.train_file)))
        )
        if not found:
            what = "file, folder or glob match" if cfg.format == "hf" else "file"
            raise ConfigError(f"data.train_file={cfg.train_file!r}: no such {what}")
        if cfg.format == "hf" and importlib.util.find_spec("datasets") is None:
            raise ConfigError("data.format='hf' needs datasets: pip install 'dualforge[hf]'")
        if cfg.corpus is not None and not corpus_file(cfg.corpus).is_file():
            raise ConfigError(
                f"data.corpus={cfg.corpus!r}: no such corpus.jsonl (a file, or a BEIR folder)"
            )
        return
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise ConfigError(f"data.path={cfg.path!r}: no such folder")
    for name in BEIR_FILES:
        if not (folder / name).is_file():
            raise ConfigError(f"data.path={cfg.path!r}: no {name} in it (not a BEIR folder)")
    splits = available_splits(folder)
    for key, split in (("train_split", cfg.train_split), ("dev_split", cfg.dev_split)):
        if split is not None and split not in splits:
            raise ConfigError(
                f"data.{key}={split!r}: no qrels/{split}.tsv in {cfg.path} (splits: {splits})"
            )
