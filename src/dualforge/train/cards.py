"""Model cards for the folders a run writes (``final/``, ``best/``), from the run's own facts."""

from __future__ import annotations

from typing import Any

from dualforge.modeling.model_card import model_card, run_facts, write_model_card
from dualforge.train.checkpoint import TrainerState
from dualforge.train.parts import Parts


def write_cards(
    p: Parts, state: TrainerState, before: dict[str, Any] | None, after: dict[str, Any]
) -> None:
    """A README.md in ``final/`` and ``best/`` (rank 0): the evaluation table goes in the folder
    the test evaluation scored (``best/`` after dev selection), the other gets none."""
    facts = run_facts(p.model, num_examples=p.data.size, steps=state.step, resolved=p.resolved())
    config = p.cfg.to_dict()
    selected = state.best_step is not None and (p.run_dir / "best").is_dir()
    scored, other = ("best", "final") if selected else ("final", "best")
    card = model_card(config, before, after or None, facts, model_path=str(p.run_dir / scored))
    write_model_card(p.run_dir / scored, card)
    if (p.run_dir / other).is_dir():
        plain = model_card(config, run=facts, model_path=str(p.run_dir / other))
        write_model_card(p.run_dir / other, plain)
