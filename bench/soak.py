"""Kill and resume a tiny training run at random points; its final weights must equal an
uninterrupted run's, bit for bit (issue 23, Deliver 8: the longer soak).

Run (about 5 minutes on 2 cores for 20 kills of a 12-step run)::

    python bench/soak.py --kills 20 --seed 0 --steps 12                # bench/out/soak.json
    python bench/soak.py --kills 4 --steps 8 --output /tmp/soak.json   # a quick check
    python bench/soak.py --src /tmp/before/src                         # another checkout's src/

Every run goes through the real CLI (``python -m dualforge.cli.main train``) in a subprocess with
``PYTHONPATH=<src>``, on the fixtures of ``bench/_cli_harness.py``: a random 2-layer BERT
(hidden 32, dropout 0.1, so the RNG state must come back exactly) and a tiny BEIR folder, with
``run.threads=1``, ``gradcache.precision=fp32``, ``eval.before=false``, ``run.save_every=1``.

1. Reference: one uninterrupted ``train y.yaml run.name=reference optim.max_steps=S``.
2. Soak (``run.name=soak``): start ``train ... --resume``; pick a target step uniformly in
   (newest checkpoint's step + 1 .. S) (seeded: ``random.Random(--seed)``); wait until
   ``checkpoints/step-<target>`` exists (polled every 5 ms, bounded by the harness' ``TIMEOUT``);
   sleep U(0, 0.4) s; SIGKILL the process if it is still alive. Each kill records the target,
   whether the process was still alive ("landed mid-run"), the step it resumed from, the newest
   checkpoint afterwards and the ``.tmp-*`` / ``.old-*`` entries left at that moment.
3. A round ends when the newest checkpoint is step S (every kill moves the run on by at least
   one step, so one run absorbs at most S kills): ``train ... --resume`` runs to completion
   without a kill, ``runs/soak/final/model.safetensors`` is compared with the reference's (every
   tensor ``torch.equal``, and the file's sha256), no ``.tmp-*`` entry may remain anywhere under
   ``runs/soak`` and ``checkpoints/latest`` must name an existing folder; then ``runs/soak`` is
   cleared and the next round starts. After ``--kills`` kills the last round is finished the same
   way.

What it proves: resuming from whatever checkpoint a SIGKILL left (mid-step, mid-checkpoint-write,
mid-final-save) continues the exact same computation (weights, optimizer, schedule, data order,
RNG) and leaves no temporary folder behind. The kill points depend on timing, so a rerun with the
same seed draws the same targets and sleeps but may land elsewhere; the JSON records every kill.

Prints a Markdown summary and a last line ``soak: N kills (M landed mid-run) in R rounds, final
weights equal to the uninterrupted run: yes``; writes the JSON to ``--output``; exits 1 when any
round's weights differ (the differing tensors are listed) or any other check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _cli_harness import (
    ROOT,
    TIMEOUT,
    WEIGHTS,
    Bench,
    Call,
    base_config,
    describe_src,
    latest_state,
    step_folders,
    trim,
    write_json,
)
from _common import OUT

POLL = 0.005  # seconds between looks for the target checkpoint
SLEEP_MAX = 0.4  # most seconds between the target checkpoint appearing and the kill


@dataclass
class Kill:
    """One start of ``train --resume`` ended by SIGKILL (or by itself)."""

    index: int
    round: int
    newest_before: int
    target: int
    resumed_from: int | None
    reached: bool
    sleep: float
    alive: bool
    rc: int | None
    newest_after: int
    latest_after: str | None
    final_after: bool
    temps_left: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def resume_ok(self) -> bool:
        """Whether it resumed from the newest checkpoint (none: started at step 0)."""
        expected = self.newest_before or None
        return self.resumed_from == expected


@dataclass
class Round:
    """One soaked run, finished with ``--resume`` and compared with the reference."""

    index: int
    kills: int
    finish_rc: int | None
    finish_resumed_from: int | None
    tensors_equal: bool
    differing: list[str]
    sha256_equal: bool
    temps_left: list[str]
    latest: str | None
    latest_exists: bool
    finish_last_line: str
    finish_notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Weights equal, nothing temporary left, ``latest`` sound, finish exit 0."""
        sound = self.finish_rc == 0 and not self.temps_left and self.latest_exists
        return self.tensors_equal and self.sha256_equal and sound


# --------------------------------------------------------------------------- run-folder reads


def newest_step(run: Path) -> int:
    """The step of the newest ``step-*`` checkpoint folder, 0 when there is none."""
    steps = [int(name.split("-")[-1]) for name in step_folders(run)]
    return max(steps, default=0)


def temp_entries(run: Path) -> list[str]:
    """``.tmp-*`` and ``.old-*`` files or folders anywhere under ``run`` (relative paths)."""
    if not run.is_dir():
        return []
    found = [p for p in run.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]
    return sorted(str(p.relative_to(run)) for p in found)


def console_resume(call: Call) -> int | None:
    """The step of the console's ``resumed from step N`` line, if any."""
    found = re.search(r"resumed from step (\d+)", call.stdout + "\n" + call.stderr)
    return int(found.group(1)) if found else None


def notes(call: Call) -> list[str]:
    """The ``note:`` / ``warning:`` / ``error:`` lines of the call's stderr (trimmed)."""
    heads = ("note", "warning", "error")
    return [trim(line, 140) for line in call.lines() if line.lower().startswith(heads)]


def sha256_file(path: Path) -> str:
    """The file's full SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_weights(got: Path, want: Path) -> tuple[bool, list[str], bool]:
    """Whether every tensor of ``got`` equals ``want``'s (``torch.equal``), the differing names
    (with the largest absolute difference), and whether the files' sha256 match."""
    import torch
    from safetensors.torch import load_file

    if not got.is_file():
        return False, [f"{got} missing"], False
    a, b = load_file(str(got)), load_file(str(want))
    differing = [f"{k}: only in one file" for k in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            differing.append(f"{name}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
        elif not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item()
            differing.append(f"{name}: max abs diff {diff:.3g}")
    return not differing, differing, sha256_file(got) == sha256_file(want)


# --------------------------------------------------------------------------- the soak


class Soak:
    """The reference run, the killed and resumed runs, and their records."""

    def __init__(self, b: Bench, steps: int, rng: random.Random, wait_limit: float) -> None:
        self.b = b
        self.steps = steps
        self.rng = rng
        self.wait_limit = wait_limit
        self.folder = b.case_dir("soak")
        self.run = self.folder / "runs" / "soak"
        self.reference = self.folder / "runs" / "reference" / "final" / WEIGHTS
        self.kills: list[Kill] = []
        self.rounds: list[Round] = []
        self.write_config()

    def write_config(self) -> None:
        """``y.yaml``: the harness' base config with every setting the soak relies on spelled
        out (one thread, fp32, no evaluation before training, a checkpoint every step)."""
        cfg = base_config(self.b.model, self.b.beir, self.folder / "runs")
        cfg["gradcache"]["precision"] = "fp32"
        cfg["eval"]["before"] = False
        cfg["optim"]["max_steps"] = self.steps
        cfg["run"].update(threads=1, save_every=1)
        write_json(self.folder / "y.yaml", cfg)

    def overrides(self, name: str) -> list[str]:
        """The command-line overrides of every training call."""
        return [f"run.name={name}", f"optim.max_steps={self.steps}", "run.save_every=1"]

    def train_reference(self) -> Call:
        """The uninterrupted run."""
        return self.b.train(self.folder, *self.overrides("reference"))

    def kill_once(self) -> Kill:
        """Start ``--resume``, wait for the target checkpoint, sleep, SIGKILL; record it."""
        before = newest_step(self.run)
        target = self.rng.randint(before + 1, self.steps)
        sleep = self.rng.uniform(0.0, SLEEP_MAX)
        tag = f"kill{len(self.kills) + 1:03d}"
        args = ("train", "y.yaml", *self.overrides("soak"), "--resume")
        bg = self.b.start(self.folder, tag, *args)
        path = self.run / "checkpoints" / f"step-{target:07d}"
        reached = wait_path(path, bg.proc, self.wait_limit)
        if reached:
            time.sleep(sleep)
        alive = bg.proc.poll() is None
        if alive:
            bg.proc.send_signal(signal.SIGKILL)
        call = bg.wait()
        latest, _ = latest_state(self.run)
        return Kill(
            index=len(self.kills) + 1, round=len(self.rounds) + 1, newest_before=before,
            target=target, resumed_from=console_resume(call), reached=reached,
            sleep=round(sleep, 3), alive=alive and reached, rc=call.rc,
            newest_after=newest_step(self.run), latest_after=latest,
            final_after=(self.run / "final").is_dir(),
            temps_left=temp_entries(self.run), seconds=round(call.seconds, 1), notes=notes(call),
        )  # fmt: skip

    def finish_round(self, kills: int, keep: bool) -> Round:
        """Run ``--resume`` to completion, compare with the reference, clear ``runs/soak``."""
        call = self.b.train(self.folder, *self.overrides("soak"), resume=True)
        equal, differing, same_bytes = compare_weights(self.run / "final" / WEIGHTS, self.reference)
        latest, exists = latest_state(self.run)
        result = Round(
            len(self.rounds) + 1, kills, call.rc, console_resume(call), equal, differing,
            same_bytes, temp_entries(self.run), latest, exists, call.last_line, notes(call),
        )  # fmt: skip
        if keep:
            self.run.rename(self.run.with_name(f"soak-round{result.index}"))
        else:
            shutil.rmtree(self.run)
        return result

    def soak(self, n_kills: int, keep: bool) -> None:
        """``n_kills`` kills, a round finished whenever the run's newest checkpoint is the
        last step, and the last round finished after the last kill."""
        in_round = 0
        while len(self.kills) < n_kills:
            kill = self.kill_once()
            self.kills.append(kill)
            in_round += 1
            print(f"[kill {kill.index}] {describe_kill(kill)}", file=sys.stderr, flush=True)
            if not kill.reached and kill.rc != 0:
                return  # the run failed or hung before its target: report it, do not go on
            if kill.newest_after >= self.steps or len(self.kills) == n_kills:
                self.rounds.append(self.finish_round(in_round, keep))
                print(f"[round {len(self.rounds)}] {describe_round(self.rounds[-1])}",
                      file=sys.stderr, flush=True)  # fmt: skip
                in_round = 0


def wait_path(path: Path, proc: subprocess.Popen[bytes], limit: float) -> bool:
    """Poll every ``POLL`` s until ``path`` exists; False when the process ends first or
    ``limit`` s pass."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(POLL)
    return False


# --------------------------------------------------------------------------- report


def describe_kill(k: Kill) -> str:
    """One line about a kill, for the progress log."""
    how = "killed mid-run" if k.alive else f"ended by itself (exit {k.rc})"
    if not k.reached:
        how = f"target never appeared (exit {k.rc}; {'; '.join(k.notes[-1:])})"
    return (
        f"round {k.round}: from step {k.newest_before}, target {k.target}, "
        f"+{k.sleep:.3f} s: {how}; newest now {k.newest_after}; temps {k.temps_left or 'none'}"
    )


def describe_round(r: Round) -> str:
    """One line about a finished round."""
    return (
        f"{r.kills} kills; finish exit {r.finish_rc} (resumed from {r.finish_resumed_from}); "
        f"tensors equal {yes(r.tensors_equal)}, sha256 equal {yes(r.sha256_equal)}; "
        f"temps left {r.temps_left or 'none'}; latest {r.latest} (exists {yes(r.latest_exists)})"
    )


def yes(flag: bool) -> str:
    """``yes`` / ``no``."""
    return "yes" if flag else "no"


KILL_COLUMNS = (
    "kill", "round", "from step", "target", "sleep s", "resumed from", "landed mid-run",
    "newest after", "final/ after", "temps left at the kill",
)  # fmt: skip
ROUND_COLUMNS = (
    "round", "kills", "finish exit", "tensors equal", "sha256 equal", "temps left", "latest",
    "differing tensors",
)  # fmt: skip


def markdown(columns: tuple[str, ...], rows: list[list[object]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def summary(s: Soak) -> str:
    """The Markdown tables of kills and rounds."""
    kills: list[list[object]] = []
    for k in s.kills:
        landed = "yes" if k.alive else ("no (target never appeared)" if not k.reached else "no")
        kills.append([
            k.index, k.round, k.newest_before, k.target, f"{k.sleep:.3f}", k.resumed_from,
            landed, k.newest_after, yes(k.final_after), ", ".join(k.temps_left) or "none",
        ])  # fmt: skip
    rounds: list[list[object]] = []
    for r in s.rounds:
        rounds.append([
            r.index, r.kills, r.finish_rc, yes(r.tensors_equal), yes(r.sha256_equal),
            ", ".join(r.temps_left) or "none",
            f"{r.latest} ({'exists' if r.latest_exists else 'MISSING'})",
            "; ".join(r.differing[:6]) or "none",
        ])  # fmt: skip
    return "\n".join([*markdown(KILL_COLUMNS, kills), "", *markdown(ROUND_COLUMNS, rounds)])


def verdict(s: Soak) -> tuple[bool, str]:
    """Whether the soak passed, and its last line."""
    landed = sum(k.alive for k in s.kills)
    equal = bool(s.rounds) and all(r.tensors_equal and r.sha256_equal for r in s.rounds)
    problems = [f"round {r.index} failed a check" for r in s.rounds if not r.ok and equal]
    problems += [f"kill {k.index} resumed from {k.resumed_from}, not {k.newest_before or None}"
                 for k in s.kills if k.reached and not k.resume_ok]  # fmt: skip
    problems += [f"kill {k.index}: exit {k.rc} before step {k.target} appeared"
                 for k in s.kills if not k.reached and k.rc != 0]  # fmt: skip
    line = (
        f"soak: {len(s.kills)} kills ({landed} landed mid-run) in {len(s.rounds)} rounds, "
        f"final weights equal to the uninterrupted run: {yes(equal)}"
    )
    if problems:
        line += f" (but: {'; '.join(problems)})"
    return equal and not problems, line


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets and sleeps")
    p.add_argument("--steps", type=int, default=12, help="optim.max_steps of every run")
    p.add_argument("--src", type=Path, default=ROOT / "src", help="dualforge's src/ to test")
    p.add_argument("--output", type=Path, default=OUT / "soak.json")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder and the rounds")
    args = p.parse_args(argv)
    if args.kills < 1 or args.steps < 1:
        p.error("--kills and --steps must be >= 1")
    return args


def run_soak(args: argparse.Namespace, work: Path) -> tuple[Soak, dict[str, Any]]:
    """Fixtures, the reference run, then the soak."""
    b = Bench(args.src.resolve(), work.resolve())
    b.build()
    info = describe_src(b)
    print(f"testing {info}", file=sys.stderr, flush=True)
    s = Soak(b, args.steps, random.Random(args.seed), TIMEOUT)
    ref = s.train_reference()
    if ref.rc != 0 or not s.reference.is_file():
        sys.exit(f"error: the reference run failed (exit {ref.rc}): {ref.last_line}")
    info["reference_seconds"] = round(ref.seconds, 1)
    s.soak(args.kills, args.keep)
    return s, info


def main() -> int:
    """Run the soak, print the summary and the verdict, write the JSON."""
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        s, info = run_soak(args, work)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    passed, line = verdict(s)
    print(summary(s) + "\n\n" + line)
    result = {
        **info, "kills_asked": args.kills, "seed": args.seed, "steps": args.steps,
        "seconds": round(time.perf_counter() - started), "passed": passed, "verdict": line,
        "kills": [asdict(k) for k in s.kills],
        "rounds": [{**asdict(r), "ok": r.ok} for r in s.rounds],
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
