"""LoRA adapters (through ``peft``, the ``lora`` extra) and gradient checkpointing on the towers.

:func:`add_lora` wraps every tower's transformer in a peft model: base weights frozen, only the
adapter matrices (and a projection head, if the tower has one) train, so only they reach the
optimizer and the checkpoints. A folder is exported either merged (:func:`merged_copy`: the
adapters folded into the base weights, a plain sentence-transformers folder) or as the adapter
alone (:func:`save_adapter`, a peft folder beside a ``dualforge_adapter.json``;
:mod:`dualforge.modeling.io` reads it back).

:func:`enable_checkpointing` turns on non-reentrant activation checkpointing inside each
transformer layer: a Gradient Cache chunk then keeps one layer's activations during its backward
instead of all of them; the recomputation restores the RNG state, so dropout masks (LoRA's too)
are the ones of the forward.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dualforge.errors import UserError

ALL_LINEAR = "all-linear"
ADAPTER_FILE = "adapter_config.json"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (peft's names in brackets).

    Attributes:
        r: Rank of the update matrices (``r``).
        alpha: Scale numerator (``lora_alpha``; the update is scaled by ``alpha / r``).
        dropout: Dropout on the adapter input (``lora_dropout``).
        target_modules: Module names to adapt; empty adapts every linear layer but the output
            head (peft's ``"all-linear"``).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise UserError("LoRA needs peft: pip install 'dualforge[lora]'") from err
    return peft


def towers(model: nn.Module) -> list[nn.Module]:
    """The distinct towers of a dual-encoder or late-interaction model (one when tied)."""
    found: Any = [model.query_encoder, model.doc_encoder]
    return [found[0]] if found[0] is found[1] else found


def add_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Wrap every tower's ``transformer`` in a peft LoRA model (base weights frozen)."""
    peft = _peft()
    targets: Any = list(settings.target_modules) or ALL_LINEAR
    for tower in towers(model):
        config = peft.LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=targets, bias="none",
        )  # fmt: skip
        tower.transformer = peft.get_peft_model(tower.transformer, config)


def has_adapters(module: nn.Module) -> bool:
    """Whether any tower of ``module`` holds a peft model."""
    return any(is_peft(m) for m in module.modules())


def is_peft(module: nn.Module) -> bool:
    """Whether ``module`` is a peft model (without importing peft when it is absent)."""
    return type(module).__module__.startswith("peft.") and hasattr(module, "merge_and_unload")


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose adapters are folded into the base weights."""
    out = copy.deepcopy(model)
    for tower in towers(out):
        transformer: Any = tower.transformer
        if is_peft(transformer):
            tower.transformer = transformer.merge_and_unload()
    return out


def save_adapter(transformer: nn.Module, folder: Path) -> None:
    """Write a tower's adapter as a peft folder (``adapter_config.json`` + weights)."""
    save: Any = transformer.save_pretrained
    save(str(folder), safe_serialization=True)


def load_adapter(transformer: nn.Module, folder: Path, trainable: bool = False) -> nn.Module:
    """``transformer`` with the peft adapter of ``folder`` on it."""
    peft = _peft()
    out: nn.Module = peft.PeftModel.from_pretrained(
        transformer, str(folder), is_trainable=trainable
    )
    return out


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing in every tower's transformer layers.

    Raises:
        ValueError: A transformer without Hugging Face's gradient-checkpointing support.
    """
    for tower in towers(model):
        transformer: Any = tower.transformer
        base = transformer.get_base_model() if is_peft(transformer) else transformer
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"{type(base).__name__} does not support gradient checkpointing "
                "(gradcache.checkpointing)"
            )
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def trainable_names(module: nn.Module) -> Sequence[str]:
    """Names of the parameters that train."""
    return [name for name, p in module.named_parameters() if p.requires_grad]
