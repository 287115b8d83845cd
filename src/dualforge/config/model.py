"""The ``model:`` section: which encoder to fine-tune, how it reads text, its adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dualforge.config.checks import ConfigError, _validate
from dualforge.modeling.decoder import PaddingSide
from dualforge.modeling.pooling import Pooling

Projection = Literal["identity", "pca"]
ModelKind = Literal["single_vector", "late_interaction"]
AdapterExport = Literal["merged", "adapter"]
TASK_FIELD = "{task}"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the transformer (peft; the ``lora`` extra): base weights frozen, only the
    adapters (and a projection head) train and are checkpointed.

    ``target_modules`` empty adapts every linear layer (peft's ``all-linear``). ``export``: what
    final/, best/ and ``dualforge export`` write: ``merged`` (the adapters folded into the base
    weights, a plain sentence-transformers folder) or ``adapter`` (the adapters alone, a peft
    folder that names its base model; single-vector models only).
    """

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()
    export: AdapterExport = "merged"

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        _validate(
            self,
            "model.lora",
            [
                (self.r >= 1, "r", ">= 1"),
                (self.alpha > 0, "alpha", "> 0"),
                (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            ],
        )

    @property
    def adapter_export(self) -> bool:
        """Whether exported folders hold the adapters alone."""
        return self.enabled and self.export == "adapter"


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder to fine-tune and how it reads text.

    ``name``: an encoder (BERT-style) or a decoder LLM (Llama, Qwen2/3, Mistral, Gemma, ...;
    pooled ``last`` by default, with EOS appended: ``append_eos`` null means "when pooling is
    ``last``"; ``padding_side`` null keeps the tokenizer's; docs/decoders.md).
    ``query_prefix`` / ``doc_prefix``: prompts put before every query / document and stored in
    the saved folder (sentence-transformers' ``prompts``); ``{task}`` in ``query_prefix`` is
    replaced by ``task``, e.g. ``"Instruct: {task}\\nQuery: "``.
    ``projection``: None keeps the model's own output map; ``"identity"`` adds a trainable
    ``(D, D)`` linear layer after pooling; ``"pca"`` adds it initialised to the principal axes of
    ``projection_docs`` sampled training documents (an orthogonal rotation: full-dim scores are
    unchanged at step 0, and the leading coordinates hold the most; the start Matryoshka wants).
    ``kind``: ``single_vector`` (one pooled vector per text) or ``late_interaction`` (ColBERT:
    ``token_dim`` vectors per token, MaxSim; queries padded with scored ``[MASK]`` tokens to
    ``query_max_length`` when ``augment_queries``; ``skiplist`` null skips punctuation in
    documents; docs/late_interaction.md). ``lora``: :class:`LoraConfig`.
    """

    name: str = "minilm"
    tied: bool = True
    pooling: Pooling | None = None
    normalize: bool | None = None
    query_max_length: int = 64
    doc_max_length: int = 256
    query_prefix: str | None = None
    doc_prefix: str | None = None
    task: str | None = None
    append_eos: bool | None = None
    padding_side: PaddingSide | None = None
    attention_dropout: float | None = None
    projection: Projection | None = None
    projection_docs: int = 2048
    kind: ModelKind = "single_vector"
    token_dim: int = 128
    augment_queries: bool = True
    attend_to_expansion: bool = False
    skiplist: tuple[str, ...] | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        self._check_late()
        self._check_task()
        dropout = self.attention_dropout
        _validate(
            self,
            "model",
            [
                (bool(self.name), "name", "a model name or folder"),
                (self.query_max_length >= 1, "query_max_length", ">= 1"),
                (self.doc_max_length >= 1, "doc_max_length", ">= 1"),
                (dropout is None or 0 <= dropout < 1, "attention_dropout", "in [0, 1) or null"),
                (self.projection_docs >= 2, "projection_docs", ">= 2"),
                (self.token_dim >= 1, "token_dim", ">= 1"),
            ],
        )

    def _check_late(self) -> None:
        if self.kind != "late_interaction":
            return
        if not self.tied or self.projection or self.pooling:
            raise ConfigError(
                "model.kind='late_interaction' has one tied tower, its own token projection "
                "(model.token_dim) and no pooling: leave model.tied, model.projection and "
                "model.pooling at their defaults"
            )
        if self.lora.adapter_export:
            raise ConfigError(
                "model.lora.export='adapter' is for single-vector models; late-interaction "
                "folders are exported merged (model.lora.export=merged)"
            )

    def _check_task(self) -> None:
        templated = TASK_FIELD in (self.query_prefix or "")
        if templated and not self.task:
            raise ConfigError(f"model.query_prefix holds {TASK_FIELD}: set model.task")
        if self.task and not templated:
            raise ConfigError(
                f"model.task={self.task!r} is used only through {TASK_FIELD} in "
                'model.query_prefix (e.g. "Instruct: {task}\\nQuery: ")'
            )

    @property
    def query_prompt(self) -> str | None:
        """``query_prefix`` with ``{task}`` filled in (None: the folder's own prompt)."""
        if self.query_prefix is None:
            return None
        return self.query_prefix.replace(TASK_FIELD, self.task or "")
