"""The paper's ablations (Mask R-CNN, Tables 2, 3, 5 and 6) in miniature: arms, seeded sweeps, a
report.

    tables.py   the tables (2b, 2c, 2d, 2e; 3: Faster R-CNN with RoIPool / RoIAlign and Mask
                R-CNN; 5: box, mask and keypoint heads together; 6: RoIPool vs. RoIAlign for
                keypoints) as arms -- named config overrides, a data set choice and the paper's
                row --, the metrics each table reports, the sweeps' schedules, and arm_config
                (the Config of one run)
    sweep.py    run_sweep: every arm of a table for several seeds, resumable (a finished run is
                skipped, an interrupted one resumes), data-parallel under mpiexec, one run
                folder and result.json each
    report.py   summarize the seeds of each arm, the markdown tables of docs/ablations.md next
                to the paper's rows, the summary the chapters read, describe (arms and cost)

``minimaskrcnn ablate`` drives all three; every name below is importable as
``minimaskrcnn.ablations.<name>``.
"""

from minimaskrcnn.ablations.report import (
    ALL_METRIC_KEYS,
    METRIC_KEYS,
    compare_table,
    describe,
    expected_metrics,
    format_table,
    load_results,
    read_summary,
    summarize,
    table_results,
    write_report,
)
from minimaskrcnn.ablations.sweep import RESULT_FILE, metrics_text, run_dir, run_state, run_sweep
from minimaskrcnn.ablations.tables import (
    KEYPOINT_SHAPES_DATA,
    SCHEDULES,
    SHAPES_DATA,
    TABLE2_METRICS,
    TABLES,
    Arm,
    Schedule,
    Table,
    arm_config,
    generated_data,
    generated_datasets,
    get_schedule,
    get_table,
    keypoint_shapes_datasets,
    shapes_datasets,
)
from minimaskrcnn.config import apply_overrides

__all__ = [
    "ALL_METRIC_KEYS", "KEYPOINT_SHAPES_DATA", "METRIC_KEYS", "RESULT_FILE", "SCHEDULES",
    "SHAPES_DATA", "TABLE2_METRICS", "TABLES", "Arm", "Schedule", "Table", "apply_overrides",
    "arm_config", "compare_table", "describe", "expected_metrics", "format_table",
    "generated_data", "generated_datasets", "get_schedule", "get_table",
    "keypoint_shapes_datasets", "load_results", "metrics_text", "read_summary", "run_dir",
    "run_state", "run_sweep", "shapes_datasets", "summarize", "table_results", "write_report",
]
