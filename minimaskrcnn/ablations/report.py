"""The ablations' report: per arm the mean and spread over seeds, next to the paper's row.

:func:`write_report` reads the ``result.json`` files of a sweep and writes one markdown table
per table -- per arm the mean and spread over seeds of the table's metrics (Table 2: mask / box
AP, AP50, AP75 and the DSB score; Table 3: box AP; Table 5: box, mask and keypoint AP; Table 6:
keypoint and box AP), next to the paper's row -- between markers in ``docs/ablations.md``,
leaving the rest of the page as written, and their summary (``docs/results/ablations.json``)
that the chapters read back (:func:`read_summary`, :func:`compare_table`). An arm whose network
has no mask head (no mask AP, no DSB score) or no keypoint head (no keypoint AP) shows ``-`` in
those columns. :func:`describe` lists the arms and the cost of a sweep.
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
from minimaskrcnn.ablations.tables import (
    TABLE2_METRICS,
    TABLES,
    Schedule,
    Table,
    get_schedule,
    get_table,
)

__all__ = ["ALL_METRIC_KEYS", "METRIC_KEYS", "compare_table", "describe", "expected_metrics",
           "format_table", "load_results", "read_summary", "summarize", "table_results",
           "write_report"]

METRIC_KEYS = TABLE2_METRICS
"""Table 2's metrics (its report's columns), as ``(key, subkey)`` into ``evaluate_model``'s
metrics; each table names its own (``Table.metrics``)."""

ALL_METRIC_KEYS = TABLE2_METRICS + (("keypoints", "AP"), ("keypoints", "AP50"),
                                    ("keypoints", "AP75"))
"""Every metric :func:`summarize` keeps (where all of an arm's runs have it): Table 2's and the
keypoint OKS AP / AP50 / AP75."""

_HEAD_NAMES = {"segm": "mask", "bbox": "box", "keypoints": "keypoint"}
_SUBS = ("AP", "AP50", "AP75")


def _label(key: str, sub: str | None) -> str:
    """A column's label: ``"mask AP50"``, ``"keypoint AP"``, ``"DSB score"``."""
    if sub is None:
        return "DSB score" if key == "dsb_score" else key
    return f"{_HEAD_NAMES.get(key, key)} {sub}"


def _name(key: str, sub: str | None) -> str:
    """A metric's name in :func:`summarize`'s dict: ``"segm.AP"``, ``"dsb_score"``."""
    return key if sub is None else f"{key}.{sub}"


def expected_metrics(result: Mapping) -> list[tuple[str, str | None]]:
    """The metrics a run's network gives, from the config its ``result.json`` stores: box AP /
    AP50 / AP75 always; mask AP / AP50 / AP75 and the DSB score with a mask head
    (``model.mask_on``, true for a config without the field); keypoint AP / AP50 / AP75 with a
    keypoint head (``model.num_keypoints`` > 0). In :data:`ALL_METRIC_KEYS` order."""
    config = result.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    model = model if isinstance(model, dict) else {}
    masks = model.get("mask_on", True) is not False
    keypoints = bool(model.get("num_keypoints") or 0)
    return [(k, s) for k, s in ALL_METRIC_KEYS
            if k == "bbox" or (k in ("segm", "dsb_score") and masks)
            or (k == "keypoints" and keypoints)]


def load_results(sweep_dir: str, table: str | None = None) -> list[dict]:
    """Every ``<sweep_dir>/<table>/<arm>/seed<k>/result.json`` (of ``table`` only if given),
    sorted by table, arm and seed. Each must hold a number at every metric its network gives
    (:func:`expected_metrics`).

    Raises:
        ValueError: an unreadable result file (named).
    """
    pattern = os.path.join(sweep_dir, table or "*", "*", "seed*", RESULT_FILE)
    results = []
    for path in glob.glob(pattern):
        r = read_result(path)
        try:
            for key, sub in expected_metrics(r):
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


def _has_metric(result: dict, key: str, sub: str | None) -> bool:
    try:
        _metric(result, key, sub)
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return True


def summarize(results: Sequence[dict]) -> dict[str, dict]:
    """Per arm: ``{"n", "seeds", "iterations", "train_seconds" (mean), "wall_seconds" (mean),
    "<key>[.<sub>]": {"mean", "std" (sample, ddof 1; 0 for one seed), "min", "max",
    "values"}}`` over the seeds, for each of :data:`ALL_METRIC_KEYS` (``"segm.AP"``, ...,
    ``"dsb_score"``, ``"keypoints.AP"``, ...) that every run of the arm has (a box-only arm has
    no ``"segm.*"`` and no ``"dsb_score"``). Values are fractions as stored.

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
        for key, sub in ALL_METRIC_KEYS:
            if not all(_has_metric(r, key, sub) for r in rs):
                continue
            values = [_metric(r, key, sub) for r in rs]
            s[_name(key, sub)] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "values": values}
        out[arm] = s
    return out


def _pts(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{round(100 * x, 1) + 0.0:.1f}"


def _paper_cell(values) -> str:
    if values is None:
        return "-"
    return " / ".join("-" if not math.isfinite(v) else f"{v:.1f}" for v in values)


def _paper_value(paper, key: str, sub: str | None = "AP") -> float:
    """The paper's ``key`` ``sub`` in points, NaN where the row (or the paper) has none."""
    values = paper.get(key) if paper else None
    i = _SUBS.index(sub) if sub in _SUBS else len(_SUBS)
    return float(values[i]) if values is not None and i < len(values) else math.nan


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
    the table's metrics (``Table.metrics``; Table 2: mask AP / AP50 / AP75, box AP / AP50 / AP75
    and the DSB score) as ``mean ± std`` in AP points (x100) -- ``-`` where the arm's network
    has no such head --, the primary metric's min-max (``Table.primary``, Table 2's mask AP),
    the number of seeds, the primary metric's difference to the reference arm (ours, and the
    paper's), and the paper's rows (``Table.paper_keys``: mask and box for Table 2; AP alone
    where the paper gives AP alone); arms without results say "not run yet", unavailable arms
    say why. Ends with the rankings (``Table.rank_by``, default the primary metric), ours and the
    paper's, and the schedule and cost of the runs.
    """
    tab = get_table(table) if isinstance(table, str) else table
    results = table_results(tab, results)
    summary = summarize(results)
    primary = _name(*tab.primary)
    plabel = _label(*tab.primary)
    ref = summary.get(tab.reference)
    ref_paper = next((a.paper for a in tab.arms if a.name == tab.reference), None)
    paper_len = {k: max((len(a.paper[k]) for a in tab.arms if a.paper and k in a.paper),
                        default=len(_SUBS)) for k in tab.paper_keys}
    paper_heads = [f"paper {_HEAD_NAMES.get(k, k)} " + " / ".join(_SUBS[:paper_len[k]])
                   for k in tab.paper_keys]
    head = ("| arm | seeds | " + " | ".join(_label(k, s) for k, s in tab.metrics)
            + f" | {plabel} min-max | Δ {plabel} (ours / paper) | " + " | ".join(paper_heads)
            + " |")
    columns = 2 + len(tab.metrics) + 2 + len(tab.paper_keys)
    lines = [head, "| " + " | ".join(["---"] * columns) + " |"]
    notes = []
    for arm in tab.arms:
        s = summary.get(arm.name)
        paper_cells = [_paper_cell(arm.paper.get(k) if arm.paper else None)
                       for k in tab.paper_keys]
        if arm.name == tab.reference:
            paper_delta = "(reference)"
        else:
            d = _paper_value(arm.paper, tab.primary[0], tab.primary[1]) - _paper_value(
                ref_paper, tab.primary[0], tab.primary[1])
            paper_delta = f"{d:+.1f}" if math.isfinite(d) else "-"
        if s is None:
            why = f"not available yet: {arm.unavailable}" if arm.unavailable else "not run yet"
            delta = paper_delta if arm.name == tab.reference else f"- / {paper_delta}"
            row = [arm.label, "0", why, *[""] * (len(tab.metrics) - 1), "-", delta,
                   *paper_cells]
            lines.append("| " + " | ".join(row) + " |")
            continue
        cells = []
        for key, sub in tab.metrics:
            m = s.get(_name(key, sub))
            cells.append("-" if m is None else f"{_pts(m['mean'])} ± {_pts(m['std'])}")
        ap = s.get(primary)
        if arm.name == tab.reference:
            delta = "(reference)"
        else:
            ours_delta = "-"
            if ref is not None and ap is not None and primary in ref:
                ours_delta = f"{round(100 * (ap['mean'] - ref[primary]['mean']), 1) + 0.0:+.1f}"
            delta = f"{ours_delta} / {paper_delta}"
        spread = "-" if ap is None else f"{_pts(ap['min'])}-{_pts(ap['max'])}"
        lines.append(f"| {arm.label} | {s['n']} | " + " | ".join(cells)
                     + f" | {spread} | {delta} | " + " | ".join(paper_cells) + " |")
        if len(s["iterations"]) > 1 or len(s["schedules"]) > 1:
            notes.append(f"{arm.label}: runs of different lengths {s['iterations']} / schedules "
                         f"{s['schedules']} mixed")
    ran = [a for a in tab.arms if a.name in summary]
    if ran:
        lines.append("")
        for key, sub in tab.rank_by or (tab.primary,):
            name = _name(key, sub)
            have = [a for a in ran if name in summary[a.name]]
            if not have:
                continue
            lines.append(f"Ranking by {_label(key, sub)}, ours: " + _ranking(
                {a.name: 100 * summary[a.name][name]["mean"] for a in have}) + ".")
            with_paper = [a for a in ran if math.isfinite(_paper_value(a.paper, key, sub))]
            if with_paper:
                lines.append("The paper's (same arms): " + _ranking(
                    {a.name: _paper_value(a.paper, key, sub) for a in with_paper}) + ".")
        # the cost of this table's own runs; another table's (``same_as``) cost nothing more
        own = [r for r in results if not r.get("same_as")]
        reused = [r for r in results if r.get("same_as")] if own else []
        rs = own or results
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
            f"median s/iteration + evaluation), {sum(walls) / 3600:.1f} hours in all"
            + (f"; and {len(reused)} runs of "
               + ", ".join(sorted({"/".join(r["same_as"]) for r in reused}))
               + ", not retrained." if reused else "."))
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
                            "hours in all with 2 MPI ranks on the 2-core machine" if cost else "")
                         + (f" ({tab.cost_note})" if cost and tab.cost_note else ""))
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
    """A plain-text table for the chapters: per arm of ``table``, the paper's AP / AP50 / AP75
    of the table's primary metric (``Table.primary``: mask AP for Table 2, box AP for Tables 3
    and 5, keypoint AP for Table 6) and ours (mean over the seeds, ± sample std of the AP, the
    number of seeds) from a :func:`read_summary` dict; "-" where the paper has no figure, no run
    has finished, or the arm has no such head."""
    tab = get_table(table)
    key = tab.primary[0]
    plabel = _label(key, "AP")
    ours = summary.get(tab.name, {})
    width = max(len(a.label) for a in tab.arms)
    lines = [f"Table {tab.name}: {tab.title}",
             f"  paper: {tab.paper_setting}; ours: {tab.ours}",
             f"  {'arm':{width}s}  {'paper ' + plabel + ' / AP50 / AP75':>28s}   ours ({plabel} "
             "± std / AP50 / AP75, seeds)"]
    for arm in tab.arms:
        paper = _paper_cell(arm.paper.get(key) if arm.paper else None)
        s = ours.get(arm.name)
        if s and f"{key}.AP" in s:
            ap = s[f"{key}.AP"]
            n = s.get("n", len(ap["values"]))
            mine = (f"{_pts(ap['mean'])} ± {_pts(ap['std'])} / {_pts(s[f'{key}.AP50']['mean'])} / "
                    f"{_pts(s[f'{key}.AP75']['mean'])}  ({n} seed{'s' if n != 1 else ''})")
        else:
            mine = "-"
        lines.append(f"  {arm.label:{width}s}  {paper:>28s}   {mine}")
    return "\n".join(lines)
