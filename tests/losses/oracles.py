"""Dense oracles written here, independent of the tiled losses: the whole score matrix, a dense
mask, ``F.cross_entropy``; and the double loop that built false-negative masks before codes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from dualforge.losses import token_prefix
from dualforge.tokens import split_tokens

Scores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loop_mask(doc_ids: Sequence[str | None], positives: Sequence[Sequence[str]]) -> torch.Tensor:
    """``(B, N)`` bool: document ``j`` is a known positive of query ``i`` (the old Python loop)."""
    mask = torch.zeros(len(positives), len(doc_ids), dtype=torch.bool)
    for i, pos in enumerate(positives):
        wanted = set(pos)
        for j, doc in enumerate(doc_ids):
            if doc is not None and doc in wanted:
                mask[i, j] = True
    return mask


def dot(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return q @ d.mT


def cos(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T


def dense_maxsim(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """MaxSim with the whole ``(B_q, B_d, T_q, T_d)`` similarity tensor (plain autograd)."""
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)
    sim = torch.einsum("aid,bjd->abij", qv, dv).masked_fill(~dm[None, :, None, :], float("-inf"))
    return sim.max(dim=-1).values.masked_fill(~qm[:, None, :], 0.0).sum(dim=-1)


def dense_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    score: Scores = dot,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """InfoNCE of queries ``rows`` (their share, divided by the full B) from the dense matrix."""
    B = q.shape[0]
    n = d.shape[0] // B
    mine = torch.arange(B)[rows if rows is not None else slice(0, B)]
    target = mine * n
    logits = score(q[mine], d) / temperature  # (b, B*n)
    if mask is not None:
        m = mask[mine].clone()
        m[torch.arange(len(mine)), target] = False
        logits = logits.masked_fill(m, float("-inf"))
    loss = F.cross_entropy(logits, target, reduction="sum") / B
    if not symmetric:
        return loss
    back = score(q, d[target]).T / temperature  # (b, B)
    if mask is not None:
        m = mask[:, target].T.clone()
        m[torch.arange(len(mine)), mine] = False
        back = back.masked_fill(m, float("-inf"))
    return (loss + F.cross_entropy(back, mine, reduction="sum") / B) / 2


def dense_nested(
    q: torch.Tensor,
    d: torch.Tensor,
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    tokens: bool = False,
    **kwargs: object,
) -> torch.Tensor:
    """``(M,)`` :func:`dense_nce` of the prefixes at every dim (renormalised when asked)."""
    if tokens:
        kwargs.setdefault("score", dense_maxsim)
    out = []
    for m in dims:
        if tokens:
            qm, dm = token_prefix(q, m, renormalize), token_prefix(d, m, renormalize)
        else:
            qm, dm = q[:, :m], d[:, :m]
            if renormalize:
                qm, dm = F.normalize(qm, dim=-1), F.normalize(dm, dim=-1)
        out.append(dense_nce(qm, dm, **kwargs))  # type: ignore[arg-type]
    return torch.stack(out)
