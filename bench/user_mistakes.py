"""Reproduce each finding of issue 23 (user mistakes, kills, full disks) through the real CLI.

Every case runs ``python -m dualforge.cli.main ...`` in a subprocess with ``PYTHONPATH=<src>``
and its working directory in a temporary folder; nothing of dualforge is imported or patched
here. The fixtures are built with transformers alone by ``bench/_cli_harness.py`` (which also
holds the CLI harness and run-folder reads this script uses): a tiny random BERT (2 layers,
hidden 32, the packaged MiniLM tokenizer) written as a sentence-transformers folder, a tiny BEIR
folder (40 documents, 24 train / 8 test queries) and a minimal YAML config.

For each case it records the exit status, whether stderr holds a traceback, the last stderr line
and a case-specific check, classifies it (``one-line error``: exit 2, one ``error:`` line, no
traceback; ``traceback``; ``silent (exit 0)``; ``data lost``; or what else happened) and prints a
Markdown table ``| case | what happened |``; the JSON goes to ``--output``.

Run (about 10 minutes on 2 cores)::

    python bench/user_mistakes.py                                   # the repository's src/
    git clone -q . /tmp/before && git -C /tmp/before checkout -q c0bdd82
    python bench/user_mistakes.py --src /tmp/before/src --output /tmp/before.json
    python bench/user_mistakes.py --only 1a,5,9                     # some cases only

The full-disk case mounts a small tmpfs when run as root (where ``mount`` works), otherwise it
limits the file size with ``RLIMIT_FSIZE``. As root, the unwritable output dir is a path whose
parent is a file (root ignores ``chmod 555``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _cli_harness import (
    HIDDEN,
    ROOT,
    TIMEOUT,
    WEIGHTS,
    WORDS,
    Bench,
    Call,
    Row,
    beir_variant,
    classify,
    describe_src,
    events,
    file_size_limit,
    first_trained_step,
    last_session,
    latest_state,
    listing,
    not_reproduced,
    resumed_from,
    says_resumed,
    sha256,
    small_tmpfs,
    step_folders,
    tmp_folders,
    tree_bytes,
    trim,
    truncate_half,
    wait_for,
    write_jsonl,
)

# --------------------------------------------------------------------------- cases 1-3


def case_rerun(b: Bench) -> list[Row]:
    """1: the same run name twice without --resume."""
    d = b.case_dir("1a")
    run = d / "runs" / "rerun"
    first = b.train(d, "optim.max_steps=12", "run.save_every=1", "run.name=rerun")
    old = sha256(run / "final" / WEIGHTS)
    if first.rc != 0 or old is None:
        return [not_reproduced("1a rerun", "first run failed", first)]
    second = b.train(d, "optim.max_steps=3", "run.save_every=1", "run.name=rerun")
    name, exists = latest_state(run)
    export = b.cli(d, "export", str(run), "--output", str(d / "exported"))
    kept = sha256(run / "final" / WEIGHTS) == old
    checks = {
        "first run's final/model.safetensors unchanged": "yes" if kept else "no",
        "latest": f"{name} (exists: {'yes' if exists else 'no'})",
        "step folders left": step_folders(run),
        "export afterwards": f"exit {export.rc} `{trim(export.last_line, 80)}`",
    }
    kind = f"data lost ({classify(second)})" if not kept or not exists else classify(second)
    return [Row("1a rerun", kind, second, checks, {"first": first, "export": export})]


def case_dangling(b: Bench) -> list[Row]:
    """2: ``latest`` names a checkpoint the user deleted; --resume."""
    d = b.case_dir("2")
    run = d / "runs" / "dangle"
    first = b.train(d, "optim.max_steps=4", "run.save_every=1", "run.name=dangle")
    name, exists = latest_state(run)
    if first.rc != 0 or name is None or not exists:
        return [not_reproduced("2 dangling latest", "no checkpoint written", first)]
    shutil.rmtree(run / "checkpoints" / name)
    left = step_folders(run)
    second = b.train(d, "optim.max_steps=6", "run.save_every=1", "run.name=dangle", resume=True)
    evs = last_session(run)
    start = resumed_from(evs)
    after = step_folders(run)
    checks = {
        "deleted": name,
        "left before resume": left,
        "resumed": f"from step {start}" if start is not None else "no (restarted)",
        "first step trained": first_trained_step(evs),
        "checkpoints afterwards": after,
        "console says resumed": says_resumed(second),
    }
    lost = start is None and any(s not in after for s in left)
    kind = f"data lost ({classify(second)})" if lost else classify(second)
    return [Row("2 dangling latest", kind, second, checks, {"first": first})]


def case_concurrent(b: Bench) -> list[Row]:
    """3: two runs on one run folder at once."""
    d = b.case_dir("3")
    run = d / "runs" / "shared"
    args = ("train", "y.yaml", "optim.max_steps=20", "run.save_every=1", "run.name=shared")
    procs = [b.start(d, f"run{i}", *args) for i in range(2)]
    calls = [p.wait() for p in procs]
    evs = events(run)
    kinds = [e.get("event") for e in evs]
    starts = [i for i, k in enumerate(kinds) if k == "start"]
    done = kinds.index("done") if "done" in kinds else len(kinds)
    checks = {
        "exit codes": [c.rc for c in calls],
        "start events in one metrics.jsonl": len(starts),
        "both logged at once": "yes" if len(starts) > 1 and starts[1] < done else "no",
        "last stderr lines": [trim(c.last_line, 70) for c in calls],
    }
    main = calls[1] if calls[0].rc == 0 else calls[0]
    locked = any(w in main.stderr.lower() for w in ("lock", "pid", "in use"))
    checks["failure names a lock / holder"] = "yes" if locked else "no"
    if all(c.rc == 0 for c in calls):
        kind = "data lost (both exit 0)"
    else:
        kind = classify(main) if locked else f"race, no lock ({classify(main)})"
    return [Row("3 concurrent", kind, main, checks, {"run0": calls[0], "run1": calls[1]})]


# --------------------------------------------------------------------------- case 4


def case_full_disk(b: Bench) -> list[Row]:
    """4: the disk fills up while final/ is written (``run.save_every=0``)."""
    d = b.case_dir("4")
    probe = b.train(d, "run.name=probe")
    final = d / "runs" / "probe" / "final"
    if probe.rc != 0 or not (final / WEIGHTS).is_file():
        return [not_reproduced("4 full disk", "probe run failed", probe)]
    before_final = tree_bytes(d / "runs" / "probe") - tree_bytes(final)
    weights = (final / WEIGHTS).stat().st_size
    size = (before_final + 256 * 1024 + 4095) // 4096 * 4096
    mnt = d / "mnt"
    with small_tmpfs(mnt, size) as mounted:
        over = ["run.name=full", f"run.output_dir={mnt}"]
        if mounted:
            call, how = b.train(d, *over), f"tmpfs of {size} B (weights {weights} B)"
        else:
            call = b.cli(d, "train", "y.yaml", *over, preexec=file_size_limit(weights // 2))
            how = f"RLIMIT_FSIZE {weights // 2} B (no tmpfs)"
        held = listing(mnt / "full" / "final")
        ckpts = step_folders(mnt / "full")
    checks = {"disk": how, "final/ afterwards": held, "checkpoints": ckpts or "none"}
    lost = f"{WEIGHTS} ({weights} B)" not in held and not ckpts
    kind = f"data lost ({classify(call)})" if lost else classify(call)
    return [Row("4 full disk", kind, call, checks, {"probe": probe})]


# --------------------------------------------------------------------------- case 5


def case_truncated(b: Bench) -> list[Row]:
    """5: the newest checkpoint's model.safetensors or optimizer.pt cut in half; --resume."""
    d = b.case_dir("5")
    first = b.train(d, "optim.max_steps=4", "run.save_every=1", "run.name=trunc")
    name, exists = latest_state(d / "runs" / "trunc")
    if first.rc != 0 or name is None or not exists:
        return [not_reproduced("5 truncated", "no checkpoint written", first)]
    rows = []
    for file in (WEIGHTS, "optimizer.pt"):
        case = f"5 truncated {file}"
        copy = d / "runs" / f"trunc-{file.split('.')[0]}"
        shutil.copytree(d / "runs" / "trunc", copy)
        target = copy / "checkpoints" / name / file
        if not target.is_file():
            rows.append(not_reproduced(case, f"{name} holds no {file}"))
            continue
        truncate_half(target)
        over = ("optim.max_steps=6", "run.save_every=1", f"run.name={copy.name}")
        call = b.train(d, *over, resume=True)
        start = resumed_from(last_session(copy))
        checks = {
            "newest": name,
            "message names the file": "yes" if file in call.stderr else "no",
            "resumed": f"from step {start}" if start is not None else "no",
        }
        rows.append(Row(case, classify(call), call, checks, {"first": first}))
    return rows


# --------------------------------------------------------------------------- case 6


def case_big_dims(b: Bench) -> list[Row]:
    """6: ``eval.dims`` / ``--dims`` larger than the model's dim (32)."""
    d = b.case_dir("6")
    dims = "eval.dims=[16,1000]"
    valid = b.cli(d, "validate", "y.yaml", dims)
    run = d / "runs" / "dims"
    trained = b.train(d, dims, "optim.max_steps=2", "run.name=dims")
    steps = [int(e["step"]) for e in events(run) if e.get("event") == "train"]
    (d / "q.txt").write_text("protein cell\ngene virus\n")
    ev = b.cli(d, "eval", "--model", str(b.model), "--data", str(b.beir), "--dims", "16,1000")
    search = b.cli(
        d, "search", "--model", str(b.model), "--corpus", str(b.beir), "--dims", "1000",
        "--queries", "q.txt",
    )  # fmt: skip
    train_checks = {
        "steps trained": max(steps) if steps else 0,
        "report.json": "yes" if (run / "report.json").is_file() else "no",
    }
    return [
        Row("6 validate eval.dims=[16,1000]", classify(valid), valid),
        Row("6 train eval.dims=[16,1000]", classify(trained), trained, train_checks),
        Row("6 eval --dims 16,1000", classify(ev), ev),
        Row("6 search --dims 1000 (control)", classify(search), search),
    ]


# --------------------------------------------------------------------------- case 7


def case_too_few(b: Bench) -> list[Row]:
    """7: fewer training examples than one batch."""
    d = b.case_dir("7")
    (d / "empty.jsonl").write_text("")
    pairs = [{"query": f"{w} question", "positive": f"{w} answer text"} for w in WORDS[:5]]
    write_jsonl(d / "five.jsonl", pairs)
    header = "query-id\tcorpus-id\tscore\n"
    no_corpus = beir_variant(b, d / "empty-corpus", **{"corpus.jsonl": "", "qrels_train": header})
    zeros = "".join(f"q{i}\td{i}\t0\n" for i in range(24))
    score0 = beir_variant(b, d / "score0", qrels_train=header + zeros)
    jsonl = ("data.format=jsonl", f"data.path={b.beir}")
    cases = {
        "7 empty train JSONL": (*jsonl, f"data.train_file={d / 'empty.jsonl'}"),
        "7 empty corpus (+ empty train qrels)": (f"data.path={no_corpus}", "data.test_split=null"),
        "7 qrels only score 0": (f"data.path={score0}",),
        "7 5 pairs, batch 8": (*jsonl, f"data.train_file={d / 'five.jsonl'}"),
    }
    rows: list[Row] = []
    for case, over in cases.items():
        call = b.train(d, *over, f"run.name=r{len(rows)}")
        rows.append(Row(case, classify(call), call))
    return rows


# --------------------------------------------------------------------------- case 8


def case_encode_dim(b: Bench) -> list[Row]:
    """8: ``encode --dim`` outside 1..D."""
    import numpy as np

    d = b.case_dir("8")
    (d / "texts.txt").write_text("protein cell gene\nvirus brain heart\nblood drug dose\n")
    rows = []
    for dim in ("1000", "0"):
        out = d / f"out{dim}.npy"
        call = b.cli(
            d, "encode", "--model", str(b.model), "--input", "texts.txt", "--output", str(out),
            "--dim", dim,
        )  # fmt: skip
        shape = tuple(np.load(out).shape) if out.is_file() else None
        full = shape is not None and shape[-1] == HIDDEN
        checks = {"output shape": shape, f"every dim ({HIDDEN}) written": "yes" if full else "no"}
        rows.append(Row(f"8 encode --dim {dim}", classify(call), call, checks))
    return rows


# --------------------------------------------------------------------------- case 9


def case_unwritable(b: Bench) -> list[Row]:
    """9: an output dir that cannot be created."""
    d = b.case_dir("9-unwritable")
    if os.geteuid() == 0:
        (d / "afile").write_text("a file, not a folder\n")
        out, how = d / "afile" / "runs", "parent is a file (running as root)"
    else:
        (d / "locked").mkdir()
        (d / "locked").chmod(0o555)
        out, how = d / "locked" / "runs", "parent is mode 555"
    valid = b.cli(d, "validate", "y.yaml", f"run.output_dir={out}")
    call = b.train(d, f"run.output_dir={out}")
    if os.geteuid() != 0:
        (d / "locked").chmod(0o755)
    checks = {"how": how, "validate": f"exit {valid.rc} ({classify(valid)})"}
    return [Row("9 unwritable output dir", classify(call), call, checks, {"validate": valid})]


def case_nan(b: Bench) -> list[Row]:
    """9: a loss that turns NaN (``optim.lr=1e30``)."""
    d = b.case_dir("9-nan")
    call = b.train(
        d, "optim.lr=1e30", "optim.warmup_ratio=0", "optim.max_steps=8", "run.save_every=1",
        "run.name=nan",
    )  # fmt: skip
    nonfinite = "nan" in call.stderr.lower() or "inf" in call.stderr.lower()
    checks = {
        "message about the loss": "yes" if nonfinite else "no",
        "checkpoints kept": step_folders(d / "runs" / "nan"),
    }
    return [Row("9 NaN loss", classify(call), call, checks)]


def case_ctrl_c(b: Bench) -> list[Row]:
    """9: SIGINT after the first checkpoint."""
    d = b.case_dir("9-sigint")
    run = d / "runs" / "sigint"
    bg = b.start(d, "sigint", "train", "y.yaml", "optim.max_steps=400", "run.save_every=1",
                 "run.name=sigint")  # fmt: skip
    seen = wait_for(lambda: (run / "checkpoints" / "latest").is_file(), bg.proc, TIMEOUT - 20)
    if seen:
        bg.proc.send_signal(signal.SIGINT)
    call = bg.wait()
    if not seen:
        return [not_reproduced("9 Ctrl-C", "no checkpoint appeared before the run ended", call)]
    text = call.stdout + call.stderr
    checks = {
        "says resume with --resume": "yes" if "--resume" in text else "no",
        "checkpoints kept": step_folders(run),
    }
    return [Row("9 Ctrl-C", classify(call), call, checks)]


def case_no_weights(b: Bench) -> list[Row]:
    """9: a model folder without its weights file."""
    d = b.case_dir("9-noweights")
    folder = d / "model-without-weights"
    shutil.copytree(b.model, folder)
    (folder / WEIGHTS).unlink()
    call = b.train(d, f"model.name={folder}")
    return [Row("9 model folder without weights", classify(call), call)]


def case_export_onto_file(b: Bench) -> list[Row]:
    """9: ``export --output`` naming an existing file."""
    d = b.case_dir("9-export")
    first = b.train(d, "optim.max_steps=2", "run.save_every=1", "run.name=exp")
    if first.rc != 0:
        return [not_reproduced("9 export onto a file", "training failed", first)]
    (d / "taken.txt").write_text("keep me\n")
    call = b.cli(d, "export", str(d / "runs" / "exp"), "--output", "taken.txt")
    intact = (d / "taken.txt").is_file() and (d / "taken.txt").read_text() == "keep me\n"
    checks = {"file left intact": "yes" if intact else "no"}
    return [Row("9 export onto an existing file", classify(call), call, checks)]


# --------------------------------------------------------------------------- case 10


def kill_during_save(b: Bench, d: Path, attempt: int, full: bool) -> tuple[Call, list[str]]:
    """Start a run, SIGKILL it while a ``.tmp-step-*`` folder exists (holding a file when
    ``full``); return the temp names."""
    run = d / "runs" / "kill"

    def writing() -> bool:
        found = [run / "checkpoints" / t for t in tmp_folders(run)]
        return any(any(t.iterdir()) for t in found) if full else bool(found)

    bg = b.start(d, f"kill{attempt}", "train", "y.yaml", "optim.max_steps=300",
                 "run.save_every=1", "run.keep_checkpoints=1", "run.name=kill")  # fmt: skip
    if wait_for(writing, bg.proc, TIMEOUT - 20):
        bg.proc.send_signal(signal.SIGKILL)
    return bg.wait(), tmp_folders(run)


def case_stale_tmp(b: Bench) -> list[Row]:
    """10: SIGKILL while a checkpoint is written, then --resume; count ``.tmp-*`` left."""
    d = b.case_dir("10")
    run = d / "runs" / "kill"
    killed: Call | None = None
    left: list[str] = []
    tries = 0
    for tries in range(1, 5):
        killed, left = kill_during_save(b, d, tries, full=tries < 4)
        if left:
            break
    if not left:
        return [
            not_reproduced("10 stale tmp", f"no kill landed mid-write in {tries} tries", killed)
        ]
    name, _ = latest_state(run)
    steps = int(name.split("-")[-1]) + 2 if name else 2
    call = b.train(d, f"optim.max_steps={steps}", "run.save_every=1", "run.keep_checkpoints=1",
                   "run.name=kill", resume=True)  # fmt: skip
    after = tmp_folders(run)
    checks = {
        "kills until one landed mid-write": tries,
        "tmp folders after the kill": left,
        "stale .tmp folders left after --resume": len(after),
        "their size": f"{sum(tree_bytes(run / 'checkpoints' / t) for t in after)} B",
    }
    kind = f"{len(after)} stale tmp left" if after else classify(call)
    return [Row("10 stale tmp", kind, call, checks, {"killed": killed} if killed else {})]


# --------------------------------------------------------------------------- case 11


def case_messages_data(b: Bench) -> list[Row]:
    """11: empty corpus.jsonl / queries.jsonl."""
    d = b.case_dir("11-data")
    rows = []
    for file in ("corpus.jsonl", "queries.jsonl"):
        folder = beir_variant(b, d / file.split(".")[0], **{file: ""})
        call = b.train(d, f"data.path={folder}")
        rows.append(Row(f"11 empty {file}", classify(call), call))
    return rows


def case_messages_search(b: Bench) -> list[Row]:
    """11: a junk ``--cache`` file; ``--queries`` checked only after encoding the corpus."""
    d = b.case_dir("11-search")
    (d / "junk.npy").write_bytes(b"this is not a numpy file\n" * 4)
    (d / "q.txt").write_text("protein cell\n")
    base = ("search", "--model", str(b.model), "--corpus", str(b.beir))
    junk = b.cli(d, *base, "--queries", "q.txt", "--cache", "junk.npy")
    late = b.cli(d, *base, "--queries", "missing.txt", "--cache", "fresh.npy")
    encoded = "yes" if (d / "fresh.npy").is_file() else "no"
    pickle = "yes" if "pickle" in junk.stderr else "no"
    return [
        Row("11 junk search --cache", classify(junk), junk, {"mentions pickle": pickle}),
        Row("11 search --queries missing", classify(late), late, {"corpus encoded first": encoded}),
    ]


def case_messages_run(b: Bench) -> list[Row]:
    """11: a run folder as model.name; ``export`` of a run without checkpoints."""
    d = b.case_dir("11-run")
    run = d / "runs" / "plain"
    first = b.train(d, "optim.max_steps=1", "run.name=plain")
    if first.rc != 0:
        return [not_reproduced("11 run folder", "training failed", first)]
    as_model = b.train(d, f"model.name={run}", "run.name=second")
    export = b.cli(d, "export", str(run), "--output", str(d / "exported"))
    hint = "yes" if "final" in export.stderr else "no"
    return [
        Row("11 run folder as model.name", classify(as_model), as_model),
        Row("11 export without checkpoints", classify(export), export, {"points to final/": hint}),
    ]


def case_messages_eval_output(b: Bench) -> list[Row]:
    """11: ``eval --output`` into a folder that is missing (created?) or cannot be made."""
    d = b.case_dir("11-eval")
    (d / "afile").write_text("a file, not a folder\n")
    base = ("eval", "--model", str(b.model), "--data", str(b.beir), "--output")
    missing = b.cli(d, *base, str(d / "missing" / "dir" / "x.json"))
    blocked = b.cli(d, *base, str(d / "afile" / "dir" / "x.json"))
    made = "yes" if (d / "missing" / "dir" / "x.json").is_file() else "no"
    printed = "yes" if "ndcg" in blocked.stdout.lower() else "no"
    return [
        Row("11 eval --output missing/dir/x.json", classify(missing), missing,
            {"folder created, report written": made}),
        Row("11 eval --output uncreatable dir (parent is a file)", classify(blocked), blocked,
            {"metrics printed": printed, "seconds": round(blocked.seconds)}),
    ]  # fmt: skip


# --------------------------------------------------------------------------- case 12


def case_tsv_header(b: Bench) -> list[Row]:
    """12: a TSV training file with a header row."""
    d = b.case_dir("12-tsv")
    rows = [f"{w} question\t{w} answer text\t{v} other text" for w, v in itertools.pairwise(WORDS)]
    (d / "train.tsv").write_text("query\tpositive\tnegative\n" + "\n".join(rows) + "\n")
    call = b.train(d, "data.format=tsv", f"data.train_file={d / 'train.tsv'}", "run.name=tsv")
    starts = [e for e in events(d / "runs" / "tsv") if e.get("event") == "start"]
    n = starts[-1].get("examples") if starts else None
    checks = {
        "data rows": len(rows),
        "examples in start event": n,
        "header trained on": "yes" if n == len(rows) + 1 else "no",
    }
    kind = "silent (exit 0), header trained on" if call.rc == 0 and n == len(rows) + 1 else None
    return [Row("12 TSV header row", kind or classify(call), call, checks)]


def case_resume_messages(b: Bench) -> list[Row]:
    """12: --resume with nothing to resume; the console on a real resume; weights file mode."""
    d = b.case_dir("12-console")
    fresh = b.train(d, "optim.max_steps=2", "run.name=fresh", resume=True)
    first = b.train(d, "optim.max_steps=2", "run.save_every=1", "run.name=again")
    again = b.train(d, "optim.max_steps=4", "run.save_every=1", "run.name=again", resume=True)
    start = resumed_from(last_session(d / "runs" / "again"))
    weights = d / "runs" / "again" / "final" / WEIGHTS
    mode = oct(weights.stat().st_mode & 0o777) if weights.is_file() else "missing"
    others = sorted({oct(p.stat().st_mode & 0o777) for p in weights.parent.glob("*.json")})
    return [
        Row("12 --resume on a fresh run", classify(fresh), fresh,
            {"console mentions resume": says_resumed(fresh)}),
        Row("12 resume message", classify(again), again,
            {"resume event in metrics.jsonl": f"step {start}",
             "console says resumed": says_resumed(again)}, {"first": first}),
        Row("12 weights file mode", "silent (exit 0)" if first.rc == 0 else classify(first),
            None, {"final/model.safetensors": mode, "final/*.json": others}),
    ]  # fmt: skip


# --------------------------------------------------------------------------- driver

CASES: dict[str, Callable[[Bench], list[Row]]] = {
    "1a": case_rerun,
    "2": case_dangling,
    "3": case_concurrent,
    "4": case_full_disk,
    "5": case_truncated,
    "6": case_big_dims,
    "7": case_too_few,
    "8": case_encode_dim,
    "9-unwritable": case_unwritable,
    "9-nan": case_nan,
    "9-sigint": case_ctrl_c,
    "9-noweights": case_no_weights,
    "9-export": case_export_onto_file,
    "10": case_stale_tmp,
    "11-data": case_messages_data,
    "11-search": case_messages_search,
    "11-run": case_messages_run,
    "11-eval": case_messages_eval_output,
    "12-tsv": case_tsv_header,
    "12-console": case_resume_messages,
}


def run_case(b: Bench, key: str) -> list[Row]:
    """Run one case; a harness error becomes a row instead of stopping the script."""
    start = time.perf_counter()
    try:
        rows = CASES[key](b)
    except Exception as err:  # the table must still come out
        rows = [Row(key, "harness error", None, {"error": trim(f"{type(err).__name__}: {err}")})]
    print(f"[{key}] {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    """The Markdown table."""
    lines = ["| case | what happened |", "| --- | --- |"]
    lines += [f"| {r.case} | {r.text()} |" for r in rows]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, default=ROOT / "src", help="dualforge's src/ to test")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "user_mistakes.json")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--only", default="", help=f"comma-separated case keys of {list(CASES)}")
    return p.parse_args()


def main() -> int:
    """Build the fixtures, run the cases, print the table, write the JSON."""
    args = parse_args()
    keys = [k for k in args.only.split(",") if k] or list(CASES)
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        sys.exit(f"error: unknown cases {unknown}; choose from {list(CASES)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="user_mistakes-"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(args.src.resolve(), work.resolve())
    started = time.perf_counter()
    try:
        b.build()
        info = describe_src(b)
        print(f"testing {info}", file=sys.stderr, flush=True)
        rows = [row for key in keys for row in run_case(b, key)]
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    result = {**info, "seconds": round(time.perf_counter() - started), "cases": rows}
    result["cases"] = [r.to_dict() for r in rows]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
