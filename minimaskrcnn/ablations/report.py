"""The ablations' report: per arm the mean and spread over seeds, next to the paper's row.

:func:`write_report` reads the ``result.json`` files of a sweep and writes one markdown table
per table -- per arm the mean and spread over seeds of mask / box AP, AP50, AP75 and the DSB
score, next to the paper's row -- between markers in ``docs/ablations.md``, leaving the rest of
the page as written, and their summary (``docs/results/ablations.json``) that the chapters read
back (:func:`read_summary`, :func:`compare_table`). :func:`describe` lists the arms and the cost
of a sweep.
"""

from __future__ import annotations

import glob
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence

from minimaskrcnn._atomic import write_atomic
from minimaskrcnn.ablations.sweep import RESULT_FILE, read_json, read_result, write_json
from minimaskrcnn.ablations.tables import TABLES, Schedule, Table, get_schedule, get_table

__all__ = ["METRIC_KEYS", "compare_table", "describe", "format_table", "load_results",
           "read_summary", "summarize", "table_results", "write_report"]

METRIC_KEYS = (("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"),
               ("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("dsb_score", None))
"""The metrics the report shows, as ``(key, subkey)`` into ``evaluate_model``'s metrics."""


def load_results(sweep_dir: str, table: str | None = None) -> list[dict]:
    """Every ``<sweep_dir>/<table>/<arm>/seed<k>/result.json`` (of ``table`` only if given),
    sorted by table, arm and seed.

    Raises:
        ValueError: an unreadable result file (named).
    """
    pattern = os.path.join(sweep_dir, table or "*", "*", "seed*", RESULT_FILE)
    results = []
    for path in glob.glob(pattern):
        r = read_result(path)
        try:
            for key, sub in METRIC_KEYS:
                _metric(r, key, sub)
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{path}: not a result file (no number at metrics.{key}"
                             f"{'' if sub is None else '.' + sub}); delete it to run that run "
                             "again") from None
        results.append(r)
    return sorted(results, key=lambda r: (str(r.get("table")), str(r.get("arm")),
                                          int(r.get("seed", 0))))


def table_results(table: str | Table, results: Sequence[dict]) -> list[dict]:
    """The results of ``table``'s arms among ``results``: its own, and for an arm that is
    another table's (``Arm.same_as``) that arm's results, relabelled as this table's arm."""
    tab = get_table(table) if isinstance(table, str) else table
    out = [r for r in results if r.get("table") == tab.name]
    for arm in tab.arms:
        if arm.same_as is not None:
            out += [{**r, "table": tab.name, "arm": arm.name, "label": arm.label,
                     "same_as": list(arm.same_as)}
                    for r in results if (r.get("table"), r.get("arm")) == tuple(arm.same_as)]
    return out


def _metric(result: dict, key: str, sub: str | None) -> float:
    m = result["metrics"][key]
    return float(m if sub is None else m[sub])


def summarize(results: Sequence[dict]) -> dict[str, dict]:
    """Per arm: ``{"n", "seeds", "iterations", "train_seconds" (mean), "wall_seconds" (mean),
    "<key>[.<sub>]": {"mean", "std" (sample, ddof 1; 0 for one seed), "min", "max",
    "values"}}`` over the seeds, for each of :data:`METRIC_KEYS` (``"segm.AP"``, ...,
    ``"dsb_score"``). Values are fractions as stored.

    Raises:
        ValueError: results of one arm from several tables mixed in.
    """
    by_arm: dict[str, list[dict]] = {}
    tables = {r.get("table") for r in results}
    if len(tables) > 1:
        raise ValueError(f"results of several tables mixed: {sorted(map(str, tables))}")
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in by_arm.items():
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        s = {"n": len(rs), "seeds": [int(r["seed"]) for r in rs],
             "iterations": sorted({int(r.get("iterations", 0)) for r in rs}),
             "train_seconds": statistics.fmean(float(r.get("train_seconds") or 0) for r in rs),
             "wall_seconds": statistics.fmean(float(r.get("wall_seconds") or 0) for r in rs),
             "schedules": sorted({str(r.get("schedule")) for r in rs})}
        for key, sub in METRIC_KEYS:
            values = [_metric(r, key, sub) for r in rs]
            s[key if sub is None else f"{key}.{sub}"] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "values": values}
        out[arm] = s
    return out


def _pts(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{round(100 * x, 1) + 0.0:.1f}"


def _paper_cell(triple) -> str:
    if triple is None:
        return "-"
    return " / ".join("-" if not math.isfinite(v) else f"{v:.1f}" for v in triple)


def _ranking(points: Mapping[str, float]) -> str:
    """``"a > b = c"``: names by decreasing AP points, ``=`` where the values shown (0.1 points)
    tie."""
    order = sorted(points, key=lambda n: -points[n])
    out = order[0]
    for prev, name in zip(order, order[1:], strict=False):
        out += (" = " if round(points[prev], 1) == round(points[name], 1) else " > ") + name
    return out


def format_table(table: str | Table, results: Sequence[dict]) -> str:
    """The markdown of one table: a row per arm (in the paper's order) with, over the seeds,
    mask AP / AP50 / AP75, box AP / AP50 / AP75 and the DSB score as ``mean ± std`` in AP points
    (x100), the mask AP's min-max, the number of seeds, the mask AP's difference to the
    reference arm (ours, and the paper's), and the paper's mask (and box, where given) row;
    arms without results say "not run", unavailable arms say why. Ends with the ranking by
    mask AP, ours and the paper's, and the schedule and cost of the runs.
    """
    tab = get_table(table) if isinstance(table, str) else table
    results = table_results(tab, results)
    summary = summarize(results)
    ref = summary.get(tab.reference)
    ref_paper = next((a.paper for a in tab.arms if a.name == tab.reference), None)
    head = ("| arm | seeds | mask AP | mask AP50 | mask AP75 | box AP | box AP50 | box AP75 | "
            "DSB score | mask AP min-max | Δ mask AP (ours / paper) | paper mask AP / AP50 / AP75 "
            "| paper box AP / AP50 / AP75 |")
    lines = [head, "| " + " | ".join(["---"] * 13) + " |"]
    notes = []
    for arm in tab.arms:
        s = summary.get(arm.name)
        paper_mask = _paper_cell(arm.paper.get("segm") if arm.paper else None)
        paper_box = _paper_cell(arm.paper.get("bbox") if arm.paper else None)
        if arm.paper and ref_paper and arm.name != tab.reference:
            paper_delta = arm.paper["segm"][0] - ref_paper["segm"][0]
            paper_delta = f"{paper_delta:+.1f}" if math.isfinite(paper_delta) else "-"
        else:
            paper_delta = "-" if arm.name != tab.reference else "(reference)"
        if s is None:
            why = f"not available yet: {arm.unavailable}" if arm.unavailable else "not run yet"
            delta = paper_delta if arm.name == tab.reference else f"- / {paper_delta}"
            row = [arm.label, "0", why, *[""] * 6, "-", delta, paper_mask, paper_box]
            lines.append("| " + " | ".join(row) + " |")
            continue
        cells = []
        for key, sub in METRIC_KEYS:
            m = s[key if sub is None else f"{key}.{sub}"]
            cells.append(f"{_pts(m['mean'])} ± {_pts(m['std'])}")
        ap = s["segm.AP"]
        if ref is not None and arm.name != tab.reference:
            ours_delta = f"{round(100 * (ap['mean'] - ref['segm.AP']['mean']), 1) + 0.0:+.1f}"
        else:
            ours_delta = "(reference)" if arm.name == tab.reference else "-"
        delta = (f"{ours_delta} / {paper_delta}" if arm.name != tab.reference
                 else "(reference)")
        lines.append(f"| {arm.label} | {s['n']} | " + " | ".join(cells)
                     + f" | {_pts(ap['min'])}-{_pts(ap['max'])} | {delta} | {paper_mask} | "
                       f"{paper_box} |")
        if len(s["iterations"]) > 1 or len(s["schedules"]) > 1:
            notes.append(f"{arm.label}: runs of different lengths {s['iterations']} / schedules "
                         f"{s['schedules']} mixed")
    ran = [a for a in tab.arms if a.name in summary]
    if ran:
        lines.append("")
        lines.append("Ranking by mask AP, ours: " + _ranking(
            {a.name: 100 * summary[a.name]["segm.AP"]["mean"] for a in ran}) + ".")
        with_paper = [a for a in ran if a.paper and math.isfinite(a.paper["segm"][0])]
        if with_paper:
            lines.append("The paper's (same arms): " + _ranking(
                {a.name: a.paper["segm"][0] for a in with_paper}) + ".")
        rs = results
        iters = sorted({int(r.get("iterations", 0)) for r in rs})
        per_it = [r["seconds_per_iteration"] for r in rs if r.get("seconds_per_iteration")]
        # a run's cost from its median iteration (robust to a run paused or sharing the
        # machine for a while) plus its evaluation
        walls = [(int(r.get("iterations", 0)) * float(r["seconds_per_iteration"])
                  if r.get("seconds_per_iteration") else float(r.get("train_seconds") or 0))
                 + float(r.get("eval_seconds") or 0) for r in rs]
        ws = sorted({int(r.get("world_size", 1)) for r in rs})
        lines.append(
            f"{len(rs)} runs of {'/'.join(map(str, iters))} iterations on {'/'.join(map(str, ws))}"
            f" MPI rank(s): median {statistics.median(per_it) if per_it else float('nan'):.2f} "
            f"s/iteration, {statistics.fmean(walls) / 60:.1f} minutes a run (iterations x "
            f"median s/iteration + evaluation), {sum(walls) / 3600:.1f} hours in all.")
    for n in notes:
        lines.append(f"Warning: {n}.")
    return "\n".join(lines)


_BEGIN = "<!-- ablations:{} begin (written by `minimaskrcnn ablate --report`; edits inside are lost) -->"
_END = "<!-- ablations:{} end -->"


def write_report(sweep_dir: str, path: str, tables: Sequence[str] = tuple(TABLES), *,
                 summary_path: str | None = None) -> str:
    """Write (or update) the markdown page ``path`` with :func:`format_table` of each table.

    Each table goes between its markers (``<!-- ablations:2c begin ... -->`` and
    ``<!-- ablations:2c end -->``): where the page has them, only the text between is replaced,
    so the hand-written rest of the page stays; a table without markers is appended under a
    heading; a missing page is created.

    If ``summary_path`` is given, also write there (JSON) ``{table: {arm: summarize(...)[arm]}}``
    for the tables with results, keeping the other tables the file already holds: what the
    chapters read (``docs/results/ablations.json``).

    Returns:
        The page's new text.

    Raises:
        ValueError: an unknown table, an unreadable result file, a sweep folder without any
            result (nothing is written then: the page's measured rows stay).
    """
    results = load_results(sweep_dir)
    if not results:
        raise ValueError(f"{sweep_dir}: no finished run in it (no <table>/<arm>/seed<k>/"
                         f"{RESULT_FILE}); {path} left as it is")
    if summary_path is not None:
        summary = read_summary(summary_path)
        for name in tables:
            of_table = table_results(name, results)
            if of_table:
                summary[name] = summarize(of_table)
        if summary:
            os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
            write_json(summary_path, summary)
    text = "# Ablations: the paper's Table 2 in miniature\n"
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    for name in tables:
        tab = get_table(name)
        block = (_BEGIN.format(name) + "\n" + format_table(tab, results) + "\n"
                 + _END.format(name))
        pattern = re.compile(re.escape(_BEGIN.format(name)) + r".*?" + re.escape(_END.format(name)),
                             re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=block: b, text, count=1)
        else:
            text = (text.rstrip("\n") + f"\n\n## Table {name}: {tab.title}\n\n" + block + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, text)
    return text


def describe(tables: Sequence[str] = tuple(TABLES), seeds: int = 3,
             schedule: Schedule | str | None = None) -> str:
    """A text listing of the tables' arms (what each overrides, or why it cannot run yet) and
    the runs and estimated time of a sweep of ``seeds`` seeds (``schedule``: default each
    table's). An arm that is another table's arm (``same_as``) costs nothing more."""
    lines = []
    for name in tables:
        tab = get_table(name)
        sched = get_schedule(schedule if schedule is not None else tab.schedule)
        lines.append(f"Table {tab.name}: {tab.title} (paper: {tab.paper_setting}; ours: "
                     f"{tab.ours})")
        for a in tab.arms:
            what = (f"not available yet: {a.unavailable}" if a.unavailable else
                    ", ".join(f"{k}={v!r}" for k, v in a.overrides.items()) or "the default")
            if a.same_as:
                what += f" (the runs of {a.same_as[0]}/{a.same_as[1]})"
            lines.append(f"  {a.name:14s} {a.label}: {what}")
        runs = sum(1 for a in tab.arms if not a.unavailable and not a.same_as) * seeds
        if runs:
            cost = (tab.run_seconds if tab.run_seconds and sched.name == tab.schedule
                    else sched.run_seconds())
            lines.append(f"  {runs} runs ({seeds} seeds) of schedule {sched.name!r} "
                         f"({sched.iterations} iterations of batch {sched.batch_size}, preset "
                         f"{tab.preset})"
                         + (f": about {cost / 60:.0f} minutes each, {runs * cost / 3600:.1f} "
                            "hours in all with 2 MPI ranks on the 2-core machine" if cost else ""))
    return "\n".join(lines)


def read_summary(path: str) -> dict:
    """The summary JSON :func:`write_report` writes (``{table: {arm: summarize(...)[arm]}}``);
    ``{}`` when the file does not exist (no run finished yet).

    Raises:
        ValueError: the file exists but is not such a summary (named).
    """
    if not os.path.isfile(path):
        return {}
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: not an ablation summary ({{table: {{arm: ...}}}})")
    return data


def compare_table(table: str, summary: Mapping[str, Mapping]) -> str:
    """A plain-text table for the chapters: per arm of ``table``, the paper's mask AP / AP50 /
    AP75 and ours (mean over the seeds, ± sample std of the mask AP, the number of seeds) from a
    :func:`read_summary` dict; "-" where the paper has no figure or no run has finished."""
    tab = get_table(table)
    ours = summary.get(tab.name, {})
    width = max(len(a.label) for a in tab.arms)
    lines = [f"Table {tab.name}: {tab.title}",
             f"  paper: {tab.paper_setting}; ours: {tab.ours}",
             f"  {'arm':{width}s}  {'paper mask AP / AP50 / AP75':>28s}   ours (mask AP ± std / "
             "AP50 / AP75, seeds)"]
    for arm in tab.arms:
        paper = _paper_cell(arm.paper.get("segm") if arm.paper else None)
        s = ours.get(arm.name)
        if s and "segm.AP" in s:
            ap = s["segm.AP"]
            n = s.get("n", len(ap["values"]))
            mine = (f"{_pts(ap['mean'])} ± {_pts(ap['std'])} / {_pts(s['segm.AP50']['mean'])} / "
                    f"{_pts(s['segm.AP75']['mean'])}  ({n} seed{'s' if n != 1 else ''})")
        else:
            mine = "-"
        lines.append(f"  {arm.label:{width}s}  {paper:>28s}   {mine}")
    return "\n".join(lines)
