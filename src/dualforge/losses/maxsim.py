"""Late interaction (ColBERT MaxSim) as a deep distance function over token representations.

Token representations are ``(B, T, D + 1)`` tensors: vectors and, in the last channel, the token
mask (:mod:`dualforge.tokens`). Masks are applied exactly: a masked document token can never be a maximum
(``-inf``), a masked query token adds nothing to the sum (it is never "scored as 0").

    score(q, d) = sum over scored query tokens i of  max over scored document tokens j  <q_i, d_j>

:func:`maxsim` bounds memory: the ``(b_q, b_d, T_q, T_d)`` similarities are computed in blocks of
queries and documents holding at most ``budget`` elements each (2**24 by default, 64 MiB in
fp32); autograd keeps only the ``(b_q, b_d, T_q)`` argmax indices of each block.
"""

from __future__ import annotations

from functools import partial

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
    per_doc = max(tq * td, 1)
    docs = max(min(budget // per_doc, dv.shape[0]), 1)
    queries = max(min(budget // (per_doc * docs), qv.shape[0]), 1)
    rows = []
    for a in range(0, qv.shape[0], queries):
        cols = [
            _block(qv[a : a + queries], qm[a : a + queries], dv[b : b + docs], dm[b : b + docs])
            for b in range(0, dv.shape[0], docs)
        ]
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)  # (B_q, B_d)


def _block(qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    sim = torch.einsum("aid,bjd->abij", qv, dv)  # (b_q, b_d, T_q, T_d)
    sim = sim.masked_fill(~dm[None, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # (b_q, b_d, T_q): backward keeps only the indices
    best = best.masked_fill(~qm[:, None, :], 0.0)  # masked query tokens add nothing
    return best.sum(dim=-1)  # (b_q, b_d)


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
