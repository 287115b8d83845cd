"""Frozen dataclass configs, loaded from YAML with ``key.sub=value`` overrides.

Every section (``sections.py``) is a frozen dataclass that checks its own values in
``__post_init__`` (``checks.py``): choices are ``Literal`` types (each defined once, next to the
code that uses it, or in ``sections.py`` when only the training run uses it), numbers are checked
against their domain, and cross-field rules hold. Unknown keys, wrong types and bad values are
:class:`ConfigError` s that name the key, e.g. ``loss.similarity='l2': must be one of ['dot',
'cos']`` (``loading.py``). Classes of the library never see a config: the training loop reads it
and passes plain values.
"""

from dualforge.config.checks import ConfigError
from dualforge.config.loading import apply_override, from_dict, load_config, save_config
from dualforge.config.loss import (
    BUILTIN_LOSSES,
    DistillConfig,
    DistillLossConfig,
    InfoNceConfig,
    KlConfig,
    LossConfig,
    MarginMseConfig,
    MatryoshkaConfig,
)
from dualforge.config.mining import Correction, MiningConfig, Strategy
from dualforge.config.model import LoraConfig, ModelConfig, Projection
from dualforge.config.sections import (
    Config,
    DataConfig,
    DataFormat,
    EvalConfig,
    GradCacheConfig,
    OptimConfig,
    RunConfig,
)
from dualforge.hardware import Precision

__all__ = [
    "BUILTIN_LOSSES",
    "Config",
    "ConfigError",
    "Correction",
    "DataConfig",
    "DataFormat",
    "DistillConfig",
    "DistillLossConfig",
    "EvalConfig",
    "GradCacheConfig",
    "InfoNceConfig",
    "KlConfig",
    "LoraConfig",
    "LossConfig",
    "MarginMseConfig",
    "MatryoshkaConfig",
    "MiningConfig",
    "ModelConfig",
    "OptimConfig",
    "Precision",
    "Projection",
    "RunConfig",
    "Strategy",
    "apply_override",
    "from_dict",
    "load_config",
    "save_config",
]
