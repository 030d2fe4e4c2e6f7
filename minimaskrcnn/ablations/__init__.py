"""The paper's ablations (Mask R-CNN, Table 2) in miniature: arms, seeded sweeps, a report.

    tables.py   the tables (2b, 2c, 2d, 2e) as arms -- named config overrides, a data set choice
                and the paper's row -- the sweeps' schedules, and arm_config (the Config of one
                run)
    sweep.py    run_sweep: every arm of a table for several seeds, resumable (a finished run is
                skipped, an interrupted one resumes), data-parallel under mpiexec, one run
                folder and result.json each
    report.py   summarize the seeds of each arm, the markdown tables of docs/ablations.md next
                to the paper's rows, the summary the chapters read, describe (arms and cost)

``minimaskrcnn ablate`` drives all three; every name below is importable as
``minimaskrcnn.ablations.<name>``.
"""

from minimaskrcnn.ablations.report import (
    METRIC_KEYS,
    compare_table,
    describe,
    format_table,
    load_results,
    read_summary,
    summarize,
    table_results,
    write_report,
)
from minimaskrcnn.ablations.sweep import RESULT_FILE, run_dir, run_state, run_sweep
from minimaskrcnn.ablations.tables import (
    SCHEDULES,
    SHAPES_DATA,
    TABLES,
    Arm,
    Schedule,
    Table,
    arm_config,
    get_schedule,
    get_table,
    shapes_datasets,
)
from minimaskrcnn.config import apply_overrides

__all__ = [
    "METRIC_KEYS", "RESULT_FILE", "SCHEDULES", "SHAPES_DATA", "TABLES", "Arm", "Schedule",
    "Table", "apply_overrides", "arm_config", "compare_table", "describe", "format_table",
    "get_schedule", "get_table", "load_results", "read_summary", "run_dir", "run_state",
    "run_sweep", "shapes_datasets", "summarize", "table_results", "write_report",
]
