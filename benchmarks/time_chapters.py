"""Time every chapter notebook top to bottom, in full mode (as a learner runs it) or quick mode.

    python benchmarks/time_chapters.py                      # every chapter, full mode, one at a time
    python benchmarks/time_chapters.py --jobs 2 05 07 08    # three chapters, two at once
    python benchmarks/time_chapters.py --quick              # CI's quick mode (MINIMASKRCNN_QUICK=1)

Each chapter runs in a fresh ``python3`` kernel of this interpreter from ``notebooks/`` (as
``tests/test_notebooks.py`` runs them), with ``MPLBACKEND=Agg``; the thread settings of the
environment are passed on (set ``NUMBA_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` to pin them).
Prints a table (chapter, mode, seconds, status) and, with ``--json FILE``, writes it as JSON.
Nothing is written into the notebooks. Numba compiles on first call and caches to disk
(``cache=True``): the first run after an install includes the compile; run twice to time a
warm cache. The times of README's chapter table come from this script (the paragraph under
the table says how they were measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def run_chapter(path: Path, quick: bool) -> dict:
    """Execute one notebook; return ``{"chapter", "mode", "seconds", "status"}``."""
    env = dict(os.environ)
    env.pop("MINIMASKRCNN_QUICK", None)
    if quick:
        env["MINIMASKRCNN_QUICK"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=None, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
        status = "ok"
    except nbclient.exceptions.CellExecutionError as e:
        status = "failed: " + str(e).strip().splitlines()[-1][:200]
    seconds = time.perf_counter() - t0
    return {"chapter": path.stem, "mode": "quick" if quick else "full",
            "seconds": round(seconds, 1), "status": status}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chapters", nargs="*", help="chapter numbers (05) or names; default: all")
    p.add_argument("--quick", action="store_true", help="quick mode (MINIMASKRCNN_QUICK=1)")
    p.add_argument("--jobs", type=int, default=1, help="chapters run at once (default 1)")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        wanted = [c.zfill(2) if c.isdigit() else c for c in args.chapters]
        paths = [q for q in paths if any(q.stem == w or q.stem.startswith(w + "_") for w in wanted)]
        if not paths:
            p.error(f"no chapter matches {args.chapters}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = []
        for row in pool.map(lambda q: run_chapter(q, args.quick), paths):
            print(f"{row['chapter']:<32} {row['mode']:<6} {row['seconds']:>8.1f} s  {row['status']}",
                  flush=True)
            rows.append(row)
    print(f"{'total':<32} {'':<6} {sum(r['seconds'] for r in rows):>8.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jobs": args.jobs, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
