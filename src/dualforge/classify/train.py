"""Encode texts once with a frozen encoder, train Matryoshka heads on the embeddings, save/load them.

The encoder is never updated: texts are embedded once (query side, eval mode, batched) and the
heads train on those fixed ``(N, D)`` vectors with AdamW, so training takes seconds on a CPU.
Embeddings can be cached in a safetensors file keyed by a fingerprint of the model and the texts.

A saved head folder holds ``heads.safetensors`` (the parameters) and ``heads.json`` (kind, dims,
labels, normalisation and whatever else the caller adds, e.g. the encoder name and thresholds).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dualforge.classify.heads import MatryoshkaHeads, build_heads, matryoshka_cross_entropy
from dualforge.modeling import DualEncoder

HEADS_WEIGHTS = "heads.safetensors"
HEADS_META = "heads.json"


@dataclass(frozen=True)
class HeadTrainConfig:
    """How to train the heads.

    Attributes:
        epochs: Passes over the training embeddings.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Minibatch size; None trains full-batch (one step per epoch).
        dim_weights: ``c_m`` per dim in the loss (default all 1).
        seed: Seed of the head initialisation and of the minibatch order.
        threads: Torch intra-op threads while training (restored afterwards); None leaves the
            setting alone. The matmuls are tiny, so extra threads only add synchronisation (on a
            busy 2-core machine, 2 threads made training ten times slower than 1).
    """

    epochs: int = 100
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int | None = 256
    dim_weights: tuple[float, ...] | None = None
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        """Validate the values."""
        if self.epochs < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need epochs >= 1, lr > 0, weight_decay >= 0; got {self}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch intra-op threads (None: unchanged), then restore them."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fingerprint(model_name: str, texts: Sequence[str], extra: str = "") -> str:
    """A sha256 hex digest identifying (model, texts, extra) for the embedding cache."""
    h = hashlib.sha256(f"{model_name}\0{extra}\0{len(texts)}\0".encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def encode_texts(
    model: DualEncoder,
    texts: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = True,
    cache: str | Path | None = None,
    model_name: str = "",
) -> torch.Tensor:
    """``(N, D)`` float32 query-side embeddings of ``texts``, read from ``cache`` when it matches.

    Args:
        model: The (frozen) encoder.
        texts: The texts.
        batch_size: Texts per encoder batch.
        show_progress: Show a progress bar.
        cache: A safetensors file; reused when its fingerprint matches, else (re)written.
        model_name: Name of the model, part of the cache fingerprint.

    Returns:
        The embeddings.
    """
    from safetensors.torch import load_file, save_file

    key = fingerprint(model_name, texts, f"{model.query_prefix}\0{model.max_seq_length}")
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("fingerprint")
        if stored == key:
            return load_file(str(path))["embeddings"]
    emb = torch.from_numpy(
        model.encode(texts, side="query", batch_size=batch_size, show_progress=show_progress)
    )  # (N, D)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": emb.contiguous()}, str(path), metadata={"fingerprint": key})
    return emb


def init_heads(
    kind: str, dims: Sequence[int], num_classes: int, normalize: bool, seed: int
) -> MatryoshkaHeads:
    """Heads (see :func:`~dualforge.classify.heads.build_heads`) initialised from ``seed``.

    The global RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_heads(kind, dims, num_classes, normalize)


def train_heads(
    heads: MatryoshkaHeads,
    emb: torch.Tensor,
    targets: torch.Tensor,
    cfg: HeadTrainConfig,
    show_progress: bool = True,
) -> list[float]:
    """Train ``heads`` in place on fixed embeddings.

    Args:
        heads: The heads (on the device of ``emb``).
        emb: ``(N, D)`` embeddings.
        targets: ``(N,)`` class ids in ``0..C-1``.
        cfg: Optimisation settings.
        show_progress: Show a progress bar over epochs.

    Returns:
        The mean training loss of each epoch.

    Raises:
        ValueError: Shapes disagree or a target is outside ``0..C-1``.
    """
    if emb.dim() != 2 or targets.shape != emb.shape[:1]:
        raise ValueError(f"need emb (N, D) and targets (N,), got {emb.shape} and {targets.shape}")
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= heads.num_classes):
        raise ValueError(f"training targets must lie in 0..{heads.num_classes - 1}")
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(targets)
    size = n if cfg.batch_size is None else min(cfg.batch_size, n)
    history: list[float] = []
    heads.train()
    with num_threads(cfg.threads):
        for _ in tqdm(range(cfg.epochs), desc="train heads", disable=not show_progress, unit="ep"):
            order = torch.randperm(n, generator=gen) if size < n else torch.arange(n)
            total = 0.0
            for start in range(0, n, size):
                rows = order[start : start + size].to(emb.device)  # (b,)
                loss = matryoshka_cross_entropy(heads(emb[rows]), targets[rows], cfg.dim_weights)
                opt.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                opt.step()
                total += float(loss.detach()) * len(rows)
            history.append(total / n)
    heads.eval()
    return history


@torch.no_grad()
def head_logits(heads: MatryoshkaHeads, emb: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``(M, N, C)`` logits of ``heads`` (eval mode, no graph) for ``(N, D)`` embeddings."""
    heads.eval()
    parts = [heads(emb[i : i + batch_size]) for i in range(0, len(emb), batch_size)]
    return torch.cat(parts, dim=1)  # (M, N, C)


def save_heads(
    folder: str | Path,
    heads: MatryoshkaHeads,
    labels: Sequence[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``heads.safetensors`` and ``heads.json`` under ``folder``.

    Args:
        folder: Output folder (created).
        heads: Trained heads.
        labels: Class names, ``labels[i]`` for class ``i``.
        extra: More JSON-serialisable fields for ``heads.json`` (model name, thresholds, ...).

    Returns:
        The folder.

    Raises:
        ValueError: ``labels`` does not have one name per class.
    """
    from safetensors.torch import save_file

    if len(labels) != heads.num_classes:
        raise ValueError(f"{len(labels)} labels for {heads.num_classes} classes")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(out / HEADS_WEIGHTS))
    meta = {
        "kind": heads.kind,
        "dims": list(heads.dims),
        "normalize": heads.normalize,
        "labels": list(labels),
        **(extra or {}),
    }
    (out / HEADS_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_heads(folder: str | Path) -> tuple[MatryoshkaHeads, dict[str, Any]]:
    """Heads saved by :func:`save_heads`, in eval mode, and their ``heads.json``.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: ``heads.json`` is invalid or does not match the weights.
    """
    from safetensors.torch import load_file

    src = Path(folder)
    for name in (HEADS_META, HEADS_WEIGHTS):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} not found (is {src} a classify head folder?)")
    try:
        meta = json.loads((src / HEADS_META).read_text(encoding="utf-8"))
        heads = build_heads(meta["kind"], meta["dims"], len(meta["labels"]), meta["normalize"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{src / HEADS_META}: invalid head description ({err!r})") from err
    try:
        heads.load_state_dict(load_file(str(src / HEADS_WEIGHTS)))
    except RuntimeError as err:
        raise ValueError(f"{src / HEADS_WEIGHTS} does not match {HEADS_META}: {err}") from err
    heads.eval()
    return heads, meta
