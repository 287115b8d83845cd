"""What a run reads back and writes out: resume from the newest whole checkpoint, checkpoints
with every rank's state, the model as a sentence-transformers folder (written whole).

:func:`resume_or_start` is part of driving the loop yourself (see :mod:`dualforge.train.loop`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dualforge.files import atomic_folder
from dualforge.modeling import DualEncoder
from dualforge.modeling.rotation import rotate_model
from dualforge.train.checkpoint import ModelWeights, TrainerState, resume_from, save_checkpoint
from dualforge.train.components import build_model, projection_texts
from dualforge.train.distributed import barrier, gather_objects
from dualforge.train.parts import Parts
from dualforge.train.run_folder import CHECKPOINTS
from dualforge.train.state import GlobalRng


def resume_or_start(p: Parts) -> TrainerState:
    """With ``run.resume``, load the newest checkpoint that reads whole (what was skipped is
    printed); without one, or with none written yet, start at step 0 (said on the console).

    Raises:
        CorruptCheckpointError: Checkpoints exist but none reads whole.
    """
    folder = p.run_dir / CHECKPOINTS
    resumed = resume_from(folder, p.restore_components()) if p.cfg.run.resume else None
    if resumed is None:
        if p.cfg.run.resume:
            say(p, f"note: nothing to resume under {folder}: starting at step 0")
        start_projection(p)
        return TrainerState(step=0)
    for skipped in resumed.skipped:
        say(p, f"warning: skipped {skipped}")
    say(p, f"resumed from step {resumed.state.step} ({resumed.path})")
    p.log.write(
        "resume", step=resumed.state.step, checkpoint=str(resumed.path), processes=p.proc.world,
        skipped=list(resumed.skipped),
    )  # fmt: skip
    return resumed.state


def say(p: Parts, line: str) -> None:
    """Print ``line`` on the console (stderr) from rank 0."""
    if p.proc.main:
        print(line, file=sys.stderr, flush=True)


def start_projection(p: Parts) -> None:
    """Fit the ``model.projection=pca`` rotation on sampled documents (fresh runs only; a
    resumed run gets its projection from the checkpoint)."""
    cfg = p.cfg.model
    if cfg.projection != "pca":
        return
    if not isinstance(p.model, DualEncoder):  # late interaction: the config refuses a projection
        return
    texts = projection_texts(p.data.corpus, p.data.examples, cfg.projection_docs, p.cfg.run.seed)
    rotate_model(p.model, texts, max_length=cfg.doc_max_length, show_progress=p.cfg.run.progress)
    p.log.write("projection", kind="pca", documents=len(texts))


def checkpoint(p: Parts, state: TrainerState) -> None:
    """Rank 0 writes the checkpoint with every rank's RNG state; under FSDP2 every rank takes
    part in gathering the full states; the others wait for it."""
    rngs = gather_objects(GlobalRng().state_dict(), p.proc) if p.proc.world > 1 else None
    if p.proc.main or p.replicas.sharded:  # other DDP ranks hold copies rank 0 already has
        states = {name: Captured(c.state_dict()) for name, c in p.components(rngs).items()}
        if p.proc.main:
            save_checkpoint(p.run_dir / CHECKPOINTS, state, states, p.cfg.run.keep_checkpoints)
    barrier()


class Captured:
    """A state read already, handed to :func:`save_checkpoint` as a component."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        """The captured state."""
        return self.state

    def load_state_dict(self, state: Any) -> None:
        """Never loaded (it only carries a state to be written)."""
        raise TypeError("a captured state is only written")


def export(p: Parts, folder: Path) -> None:
    """Save the model as a sentence-transformers folder (rank 0). Sharded weights are gathered
    first (every rank must call this) and written through a fresh copy of the model."""
    adapter = p.cfg.model.lora.adapter_export
    if not p.replicas.sharded:
        if p.proc.main:
            with atomic_folder(folder) as tmp:
                p.kind.save(p.model, tmp, adapter)
        return
    state = p.replicas.model_state()
    if p.proc.main:
        full = build_model(p.cfg.model)
        ModelWeights(full).load_state_dict(state)
        with atomic_folder(folder) as tmp:
            p.kind.save(full, tmp, adapter)
