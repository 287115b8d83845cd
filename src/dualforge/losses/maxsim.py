"""Late interaction (ColBERT MaxSim) as a deep distance function over token representations.

Token representations are ``(B, T, D + 1)`` tensors: vectors and, in the last channel, the token
mask (:mod:`dualforge.tokens`). Masks are applied exactly: a masked document token can never be a maximum
(``-inf``), a masked query token adds nothing to the sum (it is never "scored as 0").

    score(q, d) = sum over scored query tokens i of  max over scored document tokens j  <q_i, d_j>

:func:`maxsim` bounds memory: the ``(b_q, T_q, b_d, T_d)`` similarities are computed in blocks of
queries and documents holding at most ``budget`` elements each (2**24 by default, 64 MiB in
fp32) and dropped at once: a block keeps only its ``(b_q, T_q, b_d)`` argmax indices, and its
backward gathers the winning document tokens instead of materialising the similarities again
(``O(b_q T_q b_d D)`` work instead of ``O(b_q T_q b_d T_d D)``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from dualforge.losses.contrastive import contrastive_loss
from dualforge.matryoshka import check_dim
from dualforge.tokens import join_tokens, split_tokens

BUDGET = 2**24


def maxsim(q: torch.Tensor, d: torch.Tensor, budget: int = BUDGET) -> torch.Tensor:
    """``(B_q, B_d)`` MaxSim scores of token representations ``(B_q, T_q, D + 1)`` and
    ``(B_d, T_d, D + 1)`` (see the module docstring), in memory-bounded blocks.

    Raises:
        ValueError: A document with no scored token, or mismatched dims.
    """
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)
    if qv.shape[-1] != dv.shape[-1]:
        raise ValueError(f"query dim {qv.shape[-1]} != document dim {dv.shape[-1]}")
    if not bool(dm.any(dim=1).all()):
        raise ValueError("every document needs at least one scored token")
    tq, td = qv.shape[1], dv.shape[1]
    per_doc = max(tq * max(td, qv.shape[-1]), 1)  # the similarities, or the backward's gathers
    docs = max(min(budget // per_doc, dv.shape[0]), 1)
    queries = max(min(budget // (per_doc * docs), qv.shape[0]), 1)
    rows = []
    for a in range(0, qv.shape[0], queries):
        qa, ma = qv[a : a + queries], qm[a : a + queries]
        cols = [
            _block(qa, ma, dv[b : b + docs], dm[b : b + docs]) for b in range(0, dv.shape[0], docs)
        ]
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)  # (B_q, B_d)


def _block(qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = BlockMaxSim.apply(qv, qm, dv, dm)  # type: ignore[no-untyped-call]
    return out


class BlockMaxSim(torch.autograd.Function):
    """MaxSim of one block, ``(b_q, T_q, D)`` x ``(b_d, T_d, D)`` -> ``(b_q, b_d)``, with masks.

    The backward routes each query token's gradient to its best document token only (what
    autograd does for ``max``), from the saved argmax indices.
    """

    @staticmethod
    def forward(
        ctx: Any, qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor
    ) -> torch.Tensor:
        """Scores of the block (``qm``, ``dm``: boolean token masks)."""
        a, i, dim = qv.shape
        b, j = dv.shape[:2]
        sim = (qv.reshape(a * i, dim) @ dv.reshape(b * j, dim).T).view(a, i, b, j)
        sim.masked_fill_(~dm.view(1, 1, b, j), float("-inf"))  # never a maximum
        best, idx = sim.max(dim=-1)  # (a, i, b)
        best = best.masked_fill(~qm[:, :, None], 0.0)  # masked query tokens add nothing
        ctx.save_for_backward(qv, qm, dv, idx)
        return best.sum(dim=1)  # (a, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        """Gradients of the token vectors (none for the masks)."""
        qv, qm, dv, idx = ctx.saved_tensors
        b, j, dim = dv.shape
        g = grad[:, None, :] * qm[:, :, None].to(grad.dtype)  # (a, i, b)
        rows = torch.arange(b, device=idx.device) * j + idx  # (a, i, b): rows of dv as (b*j, D)
        flat = dv.reshape(b * j, dim)
        d_q = torch.einsum("aib,aibd->aid", g, flat[rows].to(g.dtype))  # (a, i, D)
        parts = (g[..., None] * qv[:, :, None, :].to(g.dtype)).reshape(-1, dim)  # (a*i*b, D)
        d_d = torch.zeros(b * j, dim, dtype=g.dtype, device=g.device)
        d_d.index_add_(0, rows.reshape(-1), parts)
        return d_q.to(qv.dtype), None, d_d.view(b, j, dim).to(dv.dtype), None


def maxsim_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    false_negatives: torch.Tensor | None = None,
    query_rows: slice | None = None,
    budget: int = BUDGET,
) -> torch.Tensor:
    """InfoNCE over MaxSim scores of token representations (arguments as
    :func:`~dualforge.losses.info_nce`; documents grouped by query, ``B * (1 + K)`` rows)."""
    return contrastive_loss(
        partial(maxsim, budget=budget), q, d, temperature=temperature, symmetric=symmetric,
        false_negatives=false_negatives, query_rows=query_rows,
    )  # fmt: skip


def token_prefix(reps: torch.Tensor, dim: int, renormalize: bool) -> torch.Tensor:
    """The first ``dim`` channels of every token vector (renormalised when asked), mask kept:
    the Matryoshka prefix of token representations (``MatryoshkaLoss(truncate=token_prefix)``)."""
    vectors, mask = split_tokens(reps)
    check_dim(dim, vectors.shape[-1])
    part = vectors[..., :dim]  # (B, T, dim)
    if renormalize:
        part = F.normalize(part, p=2.0, dim=-1)
    return join_tokens(part, mask)
