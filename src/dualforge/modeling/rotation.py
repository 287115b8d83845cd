"""Principal-axes rotation of an encoder's output: the leading coordinates carry the most.

A non-Matryoshka encoder spreads information evenly over its coordinates, so truncating its
vectors to the first ``m`` loses a lot. Rotating the output space onto its principal axes (the
eigenvectors of the second moment ``E[x xᵀ]`` of document vectors, by decreasing eigenvalue)
orders the coordinates by how much of the vectors they hold, while inner products at the full
dimension stay exactly what they were (the rotation is orthogonal). The rotation is stored as the
encoder's ``projection`` (a bias-free ``nn.Linear``, saved as a sentence-transformers ``Dense``
layer), so every consumer of the model sees rotated vectors.

Use it after training (``dualforge rotate``) or as the starting point of Matryoshka training
(``model.projection=pca``), where the Matryoshka loss then fine-tunes the projection along with
the transformer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dualforge.modeling.encoder import DualEncoder, Encoder


def principal_axes(vectors: np.ndarray | torch.Tensor, *, center: bool = False) -> torch.Tensor:
    """``(D, D)`` orthogonal matrix whose rows are the principal axes of ``vectors``.

    Args:
        vectors: ``(N, D)`` sample vectors (``N >= 2``).
        center: Subtract the mean first (covariance); the default uses the uncentered second
            moment, which is what inner products between the raw vectors see.

    Returns:
        float32 ``R`` with ``R @ R.T = I``; ``(R @ x)[:m]`` are the coordinates of ``x`` along
        the ``m`` axes of largest (uncentered) variance, largest first.

    Raises:
        ValueError: For a non-2D input, fewer than 2 vectors, or non-finite values.
    """
    x = torch.as_tensor(vectors).double()
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"principal_axes needs (N >= 2, D) vectors, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("principal_axes: vectors contain NaN or inf")
    if center:
        x = x - x.mean(0, keepdim=True)
    moment = x.T @ x / x.shape[0]  # (D, D)
    _, eigvecs = torch.linalg.eigh(moment)  # ascending eigenvalues, columns are axes
    axes: torch.Tensor = eigvecs.flip(1).T.contiguous().float()  # (D, D), largest first
    return axes


def add_rotation(encoder: Encoder, rotation: torch.Tensor) -> None:
    """Compose ``rotation`` after the encoder's output map, in place.

    A tower without a projection first gets an identity one. The weights are then updated in
    place, so an optimizer that already holds them keeps training the rotated layer.

    Args:
        encoder: The tower; its projection becomes ``rotation @ projection``.
        rotation: ``(D, D)`` matrix, ``D`` the encoder's current output width.

    Raises:
        ValueError: If the shape does not fit.
    """
    d = encoder.dim
    rot = torch.as_tensor(rotation, dtype=torch.float32)
    if tuple(rot.shape) != (d, d):
        raise ValueError(f"rotation must be ({d}, {d}), got {tuple(rot.shape)}")
    layer = _projection(encoder)
    with torch.no_grad():
        rot = rot.to(layer.weight.device)
        layer.weight.copy_(rot @ layer.weight)
        if layer.bias is not None:
            layer.bias.copy_(rot @ layer.bias)


def _projection(encoder: Encoder) -> nn.Linear:
    """The encoder's projection, created as a bias-free identity layer if it has none."""
    if encoder.projection is None:
        device = next(encoder.transformer.parameters()).device
        layer = nn.Linear(encoder.dim, encoder.dim, bias=False, device=device)
        nn.init.eye_(layer.weight)
        encoder.projection = layer
    return encoder.projection


def _towers(model: DualEncoder) -> list[Encoder]:
    """The model's distinct towers (one when tied)."""
    return [model.query_encoder] if model.tied else [model.query_encoder, model.doc_encoder]


def add_identity_projection(model: DualEncoder) -> None:
    """Give every tower without one an identity projection (a trainable ``(D, D)`` layer)."""
    for encoder in _towers(model):
        _projection(encoder)


def sample_texts(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` of ``texts``, drawn without replacement (seeded), in their original order."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in sorted(picks)]


def rotate_model(
    model: DualEncoder,
    documents: Sequence[str],
    *,
    center: bool = False,
    batch_size: int = 32,
    max_length: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Rotate ``model``'s output onto the principal axes of its document vectors, in place.

    Both towers get the same rotation, so query-document inner products at the full dimension
    are unchanged.

    Args:
        model: The dual encoder.
        documents: Sample texts (e.g. a few thousand corpus documents), encoded as documents.
        center: See :func:`principal_axes`.
        batch_size: Encoding batch size.
        max_length: Truncation length for the documents (None: the model's).
        show_progress: Show a progress bar while encoding.

    Returns:
        The ``(D, D)`` rotation applied.

    Raises:
        ValueError: With fewer than 2 documents.
    """
    if len(documents) < 2:
        raise ValueError(f"rotate_model needs at least 2 documents, got {len(documents)}")
    vectors = model.encode(documents, "document", batch_size, show_progress, max_length)
    rotation = principal_axes(vectors, center=center)  # (D, D)
    for encoder in _towers(model):
        add_rotation(encoder, rotation)
    return rotation
