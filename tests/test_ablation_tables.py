"""The paper's Tables 3, 5 and 6 as ablation tables (issue 25): the arms' configs (heads on or
off, the RoI op), the runs they share with 2c and Table 5, a tiny real sweep of every new arm,
and the report of arms without a mask or keypoint head."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from minimaskrcnn import ablations
from minimaskrcnn.ablations import (
    RESULT_FILE,
    SCHEDULES,
    TABLES,
    Schedule,
    arm_config,
    format_table,
    load_results,
    run_dir,
    run_sweep,
    summarize,
    write_report,
)
from minimaskrcnn.config import Config, EvalConfig, ModelConfig, config_to_dict, get_preset
from minimaskrcnn.data import keypoint_shapes, shapes

SHORT, KEYPOINTS = SCHEDULES["short"], SCHEDULES["keypoints"]
SHIPPED_RUNS = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "ablation-runs")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _changed(table, arm):
    """The config fields the arm changes from its table's preset cut to the table's schedule."""
    tab = TABLES[table]
    sched = SCHEDULES[tab.schedule]
    plain = _flat(config_to_dict(sched.apply(get_preset(tab.preset), 1)))
    cfg = _flat(config_to_dict(arm_config(tab.arm(arm), 1, schedule=sched, num_classes=1,
                                          preset=tab.preset)))
    return {k: cfg[k] for k in plain if plain[k] != cfg[k]}


# --------------------------------------------------------------------------------------------
# arms -> configs
# --------------------------------------------------------------------------------------------


def test_table_3_faster_rcnn_arms_drop_the_mask_head_and_the_last_is_2c_align():
    tab = TABLES["3"]
    assert [a.name for a in tab.arms] == ["pool", "align", "mask"]
    assert (tab.preset, tab.schedule, tab.reference) == ("nuclei-mini", "short", "align")
    assert all(a.dataset == "coco" for a in tab.arms) and ablations.generated_data(tab) is None
    # nuclei-mini's defaults: RoIAlign, not aligned, a mask head
    assert _changed("3", "pool") == {"model.mask_on": False, "model.roi_op": "pool"}
    assert _changed("3", "align") == {"model.mask_on": False}
    assert _changed("3", "mask") == {}
    for name, (mask_on, op) in {"pool": (False, "pool"), "align": (False, "align"),
                                "mask": (True, "align")}.items():
        m = arm_config(tab.arm(name), 0, schedule=SHORT, num_classes=1).model
        assert (m.mask_on, m.roi_op, m.roi_aligned, m.num_keypoints) == (mask_on, op, False, 0)
    # Mask R-CNN is 2c's RoIAlign (avg) row: the same config, so the same runs
    assert tab.arm("mask").same_as == ("2c", "align")
    for seed in (0, 1, 2):
        assert arm_config(tab.arm("mask"), seed, schedule=SHORT) == arm_config(
            TABLES["2c"].arm("align"), seed, schedule=SHORT)
    # box AP is what the table reports; the paper's rows (ResNet-101-FPN, test-dev)
    assert tab.metrics == (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"))
    assert tab.primary == ("bbox", "AP") and tab.paper_keys == ("bbox",)
    assert [a.paper for a in tab.arms] == [{"bbox": (36.2,)}, {"bbox": (37.3,)},
                                           {"bbox": (38.2,)}]


def test_table_5_arms_are_the_four_head_combinations():
    tab = TABLES["5"]
    assert [a.name for a in tab.arms] == ["box", "mask", "kp", "kp_mask"]
    assert (tab.preset, tab.schedule, tab.reference) == ("keypoints-mini", "keypoints", "box")
    assert KEYPOINTS.preset == "keypoints-mini" and KEYPOINTS.crop_size == 96
    assert all(a.dataset == "keypoint_shapes" for a in tab.arms)
    heads = {}
    for arm in tab.arms:
        m = arm_config(arm, 2, schedule=KEYPOINTS, num_classes=1, preset="keypoints-mini").model
        heads[arm.name] = (m.mask_on, m.num_keypoints, m.roi_op)
        assert arm.same_as is None
    assert heads == {"box": (False, 0, "align"), "mask": (True, 0, "align"),
                     "kp": (False, 3, "align"), "kp_mask": (True, 3, "align")}
    assert _changed("5", "box") == {"model.mask_on": False, "model.num_keypoints": 0}
    assert _changed("5", "mask") == {"model.num_keypoints": 0}
    assert _changed("5", "kp") == {"model.mask_on": False}
    assert _changed("5", "kp_mask") == {}
    # keypoints-mini's optimiser (lr 0.005), cut to the table's schedule
    cfg = arm_config(tab.arm("kp"), 2, schedule=KEYPOINTS, preset="keypoints-mini")
    t = cfg.train
    assert (t.iterations, t.batch_size, t.crop_size, t.seed, t.base_lr) == (
        KEYPOINTS.iterations, 4, 96, 2, get_preset("keypoints-mini").train.base_lr)
    # the paper's Table 5 (person, ResNet-50-FPN, minival): box / mask / keypoint AP
    assert tab.arm("box").paper == {"bbox": (52.5,)}
    assert tab.arm("mask").paper == {"bbox": (53.6,), "segm": (45.8,)}
    assert tab.arm("kp").paper == {"bbox": (50.7,), "keypoints": (64.2,)}
    assert tab.arm("kp_mask").paper == {"bbox": (52.0,), "segm": (45.1,), "keypoints": (64.7,)}
    assert tab.paper_keys == ("bbox", "segm", "keypoints")


def test_table_6_roi_op_of_a_keypoint_only_network_and_its_align_row_is_table_5s():
    tab = TABLES["6"]
    assert [a.name for a in tab.arms] == ["pool", "align"] and tab.reference == "align"
    assert _changed("6", "pool") == {"model.mask_on": False, "model.roi_op": "pool"}
    assert _changed("6", "align") == {"model.mask_on": False}
    for arm in tab.arms:
        m = arm_config(arm, 0, schedule=KEYPOINTS, preset="keypoints-mini").model
        assert (m.mask_on, m.num_keypoints, m.roi_op) == (False, 3, arm.name)
    assert tab.arm("align").same_as == ("5", "kp")
    for seed in (0, 1, 2):
        assert arm_config(tab.arm("align"), seed, schedule=KEYPOINTS) == arm_config(
            TABLES["5"].arm("kp"), seed, schedule=KEYPOINTS)
    assert tab.arm("pool").paper == {"keypoints": (59.8, 86.2, 66.7)}
    assert tab.arm("align").paper == {"keypoints": (64.2, 86.6, 69.7)}
    assert tab.primary == ("keypoints", "AP")


def test_generated_keypoint_triangles_are_the_same_everywhere():
    train, val = ablations.generated_datasets("5")
    assert (len(train), len(val), train.num_classes, train.num_keypoints) == (400, 200, 1, 3)
    assert train.source == "generated keypoint triangles (400 images, seed 0)"
    assert val.source == "generated keypoint triangles (200 images, seed 1)"
    assert train.has_masks and len(train.coco.anns) > 400
    again, _ = ablations.keypoint_shapes_datasets()
    assert again.coco.anns == train.coco.anns  # seeded: every rank, every machine
    assert "keypoint triangles" in ablations.generated_data("6")
    assert ablations.generated_data("2b").startswith("the generated shapes")


def test_cli_lists_three_seeds_an_arm_and_the_shared_runs(capsys):
    from minimaskrcnn.cli import main

    for table, runs, shared in (("3", 6, "(the runs of 2c/align)"), ("5", 12, None),
                                ("6", 3, "(the runs of 5/kp)")):
        assert main(["ablate", "--list", "--table", table]) == 0
        out = capsys.readouterr().out
        assert f"{runs} runs (3 seeds)" in out
        assert shared is None or shared in out
    assert main(["ablate", "--table", "5", "--sample", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "generated keypoint triangles" in err and "leave out --train-json" in err
    assert not os.path.exists("unused")


# --------------------------------------------------------------------------------------------
# Table 3's Mask R-CNN row: 2c's shipped runs, not retrained
# --------------------------------------------------------------------------------------------


class _Data(list):
    num_classes = 1
    source = "fake.json"


def _never(*a, **k):
    raise AssertionError("must not be called")


def test_table_3_mask_row_reuses_the_shipped_2c_align_runs(tmp_path):
    """The 2c runs kept in docs/results/ablation-runs are what Table 3's Mask R-CNN row shows:
    the sweep finds them done (their stored config is the one Table 3 would train) and trains
    nothing."""
    sweep = tmp_path / "sweep"
    shutil.copytree(os.path.join(SHIPPED_RUNS, "2c", "align"), sweep / "2c" / "align")
    lines = []
    results = run_sweep("3", str(sweep), _Data([1]), _Data([2]), arms=["mask"],
                        train_fn=_never, evaluate_fn=_never, log=lines.append)
    assert [(r["table"], r["arm"], r["seed"]) for r in results] == [("2c", "align", s)
                                                                   for s in (0, 1, 2)]
    assert all("(= 2c/align): done, skipped (mask AP" in line for line in lines)
    assert not (sweep / "3").exists()
    text = format_table("3", load_results(str(sweep)))
    row = next(line for line in text.splitlines() if line.startswith("| Mask R-CNN"))
    box = summarize([r for r in results])["align"]["bbox.AP"]
    assert f"| 3 | {100 * box['mean']:.1f} ± {100 * box['std']:.1f} |" in row
    assert row.endswith("| - / +0.9 | 38.2 |")


# --------------------------------------------------------------------------------------------
# a tiny real network: one iteration of every new arm, evaluated
# --------------------------------------------------------------------------------------------

TINY = ModelConfig(
    num_classes=1, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4, fpn_channels=8,
    rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
    representation_size=16, mask_head_channels=8, detections_per_img=20,
)
TINY_KEYPOINTS = dataclasses.replace(TINY, num_keypoints=3, keypoint_head_convs=1,
                                     keypoint_head_channels=8, keypoint_roi_size=7,
                                     keypoint_heatmap_size=28)


def test_tiny_real_sweep_of_tables_3_5_6_and_their_report(tmp_path):
    sweep = str(tmp_path / "sweep")
    sched = Schedule("tiny", iterations=1, batch_size=2, crop_size=48, checkpoint_every=1)
    # Table 3's Faster R-CNN arm (no mask head) on generated shapes
    data = shapes.shapes_dataset(3, seed=0, image_size=48, max_shapes=3, min_size=8, max_size=20)
    base = Config(name="tiny", model=dataclasses.replace(TINY, num_classes=data.num_classes),
                  eval=EvalConfig(max_dets=(10, 20, 20)))
    lines = []
    (r3,) = run_sweep("3", sweep, data, data, seeds=(0,), arms=["pool"], schedule=sched,
                      base=base, val_limit=1, progress=False, log=lines.append)
    assert r3["config"]["model"]["mask_on"] is False and r3["config"]["model"]["roi_op"] == "pool"
    assert set(r3["metrics"]) >= {"bbox", "num_images"}
    assert "segm" not in r3["metrics"] and "dsb_score" not in r3["metrics"]
    assert "keypoints" not in r3["metrics"] and np.isfinite(r3["metrics"]["bbox"]["AP"])
    assert "box AP" in lines[-1] and "mask AP" not in lines[-1]
    # Table 5's four arms and Table 6's RoIPool arm on generated keypoint triangles
    kp_data = keypoint_shapes.keypoint_shapes_dataset(2, seed=0, image_size=48, max_shapes=2,
                                                      min_size=14, max_size=24)
    kp_base = Config(name="tiny-kp", model=TINY_KEYPOINTS, eval=EvalConfig(max_dets=(10, 20, 20)))
    heads, lines = [], []
    for table, arms in (("5", ["box", "mask", "kp", "kp_mask"]), ("6", ["pool", "align"])):
        results = run_sweep(table, sweep, kp_data, kp_data, seeds=(0,), arms=arms,
                            schedule=sched, base=kp_base, val_limit=1, progress=False,
                            log=lines.append)
        for r in results:
            heads.append((table, r["table"], r["arm"], r["config"]["model"]["mask_on"],
                          r["config"]["model"]["num_keypoints"], r["config"]["model"]["roi_op"],
                          sorted(k for k in ("segm", "keypoints", "dsb_score")
                                 if k in r["metrics"])))
            assert r["iterations"] == 1 and np.isfinite(r["metrics"]["bbox"]["AP"])
    assert heads == [
        ("5", "5", "box", False, 0, "align", []),
        ("5", "5", "mask", True, 0, "align", ["dsb_score", "segm"]),
        ("5", "5", "kp", False, 3, "align", ["keypoints"]),
        ("5", "5", "kp_mask", True, 3, "align", ["dsb_score", "keypoints", "segm"]),
        ("6", "6", "pool", False, 3, "pool", ["keypoints"]),
        ("6", "5", "kp", False, 3, "align", ["keypoints"])]  # 6/align is 5/kp: not retrained
    assert lines[-1].startswith("[2/2] 6/align/seed0 (= 5/kp): done, skipped (box AP ")
    assert "keypoint AP" in lines[-1] and "mask AP" not in lines[-1]
    assert sorted(os.listdir(os.path.join(sweep, "6"))) == ["pool"]
    # the report of these runs: "-" where an arm has no such head, never a crash
    page = tmp_path / "ablations.md"
    write_report(sweep, str(page), ["3", "5", "6"], summary_path=str(tmp_path / "s.json"))
    text = page.read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and " | 1 | " in line}
    box_only = rows["Faster R-CNN (box only)"]
    assert box_only[5:11] == ["-"] * 6  # mask and keypoint AP / AP50 / AP75
    assert rows["keypoint only (Keypoint R-CNN)"][5:8] == ["-"] * 3  # no mask AP
    assert "- | - | -" not in " | ".join(rows["keypoint & mask (the preset)"][2:11])
    summary = json.load(open(tmp_path / "s.json"))
    assert "segm.AP" not in summary["5"]["box"] and "keypoints.AP" in summary["5"]["kp"]
    assert summary["6"]["align"]["keypoints.AP"] == summary["5"]["kp"]["keypoints.AP"]


# --------------------------------------------------------------------------------------------
# the report, from hand-made result files
# --------------------------------------------------------------------------------------------


def _result(table, arm, seed, *, box, mask=None, kp=None, mask_on=True, num_keypoints=0):
    m = {"bbox": {"AP": box, "AP50": box + 0.3, "AP75": box - 0.1}}
    if mask is not None:
        m["segm"] = {"AP": mask, "AP50": mask + 0.2, "AP75": mask - 0.05}
        m["dsb_score"] = mask - 0.1
    if kp is not None:
        m["keypoints"] = {"AP": kp, "AP50": kp + 0.25, "AP75": kp + 0.05}
    return {"table": table, "arm": arm, "seed": seed, "schedule": "keypoints",
            "iterations": 600, "metrics": m, "train_seconds": 90.0, "eval_seconds": 12.0,
            "wall_seconds": 103.0, "seconds_per_iteration": 0.15, "world_size": 2,
            "config": {"model": {"mask_on": mask_on, "num_keypoints": num_keypoints}}}


TABLE5 = (
    [_result("5", "box", s, box=b, mask_on=False) for s, b in enumerate((0.50, 0.52, 0.54))]
    + [_result("5", "mask", s, box=b, mask=m)
       for s, (b, m) in enumerate(((0.53, 0.40), (0.55, 0.42), (0.54, 0.41)))]
    + [_result("5", "kp", s, box=b, kp=k, mask_on=False, num_keypoints=3)
       for s, (b, k) in enumerate(((0.49, 0.60), (0.51, 0.62), (0.50, 0.64)))]
    + [_result("5", "kp_mask", 0, box=0.52, mask=0.43, kp=0.66, num_keypoints=3)])


def _rows(text):
    return {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")}


def test_table_5_report_with_blanks_for_missing_heads():
    text = format_table("5", TABLE5)
    rows = _rows(text)
    assert rows["arm"] == (
        "| arm | seeds | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 | "
        "keypoint AP | keypoint AP50 | keypoint AP75 | box AP min-max | Δ box AP (ours / paper) "
        "| paper box AP | paper mask AP | paper keypoint AP |")
    assert rows["Faster R-CNN (box only)"] == (
        "| Faster R-CNN (box only) | 3 | 52.0 ± 2.0 | 82.0 ± 2.0 | 42.0 ± 2.0 | - | - | - | - | "
        "- | - | 50.0-54.0 | (reference) | 52.5 | - | - |")
    assert rows["mask only (Mask R-CNN)"] == (
        "| mask only (Mask R-CNN) | 3 | 54.0 ± 1.0 | 84.0 ± 1.0 | 44.0 ± 1.0 | 41.0 ± 1.0 | "
        "61.0 ± 1.0 | 36.0 ± 1.0 | - | - | - | 53.0-55.0 | +2.0 / +1.1 | 53.6 | 45.8 | - |")
    assert rows["keypoint only (Keypoint R-CNN)"] == (
        "| keypoint only (Keypoint R-CNN) | 3 | 50.0 ± 1.0 | 80.0 ± 1.0 | 40.0 ± 1.0 | - | - | - "
        "| 62.0 ± 2.0 | 87.0 ± 2.0 | 67.0 ± 2.0 | 49.0-51.0 | -2.0 / -1.8 | 50.7 | - | 64.2 |")
    assert rows["keypoint & mask (the preset)"].startswith(
        "| keypoint & mask (the preset) | 1 | 52.0 ± 0.0 | 82.0 ± 0.0 | 42.0 ± 0.0 | 43.0 ± 0.0 |")
    assert rows["keypoint & mask (the preset)"].endswith(
        "| 52.0-52.0 | +0.0 / -0.5 | 52.0 | 45.1 | 64.7 |")
    assert len({r.count("|") for r in rows.values()}) == 1  # every row has every column
    assert "Ranking by box AP, ours: mask > box = kp_mask > kp." in text
    assert "The paper's (same arms): mask > box > kp_mask > kp." in text
    assert "Ranking by mask AP, ours: kp_mask > mask." in text
    assert "Ranking by keypoint AP, ours: kp_mask > kp." in text
    assert "The paper's (same arms): kp_mask > kp." in text
    assert "10 runs of 600 iterations on 2 MPI rank(s): median 0.15 s/iteration" in text


def test_table_6_report_shows_table_5s_keypoint_runs_as_its_align_row():
    pool = [_result("6", "pool", s, box=0.45, kp=k, mask_on=False, num_keypoints=3)
            for s, k in enumerate((0.55, 0.56, 0.57))]
    text = format_table("6", [*TABLE5, *pool])
    rows = _rows(text)
    assert rows["arm"].startswith("| arm | seeds | keypoint AP | keypoint AP50 | keypoint AP75 | "
                                  "box AP | box AP50 | box AP75 | keypoint AP min-max | Δ "
                                  "keypoint AP (ours / paper) | paper keypoint AP / AP50 / AP75 |")
    assert rows["RoIPool"] == (
        "| RoIPool | 3 | 56.0 ± 1.0 | 81.0 ± 1.0 | 61.0 ± 1.0 | 45.0 ± 0.0 | 75.0 ± 0.0 | "
        "35.0 ± 0.0 | 55.0-57.0 | -6.0 / -4.4 | 59.8 / 86.2 / 66.7 |")
    assert rows["RoIAlign (= Table 5's keypoint only)"].startswith(
        "| RoIAlign (= Table 5's keypoint only) | 3 | 62.0 ± 2.0 |")
    assert rows["RoIAlign (= Table 5's keypoint only)"].endswith(
        "| 60.0-64.0 | (reference) | 64.2 / 86.6 / 69.7 |")
    assert "Ranking by keypoint AP, ours: align > pool." in text
    # the cost is this table's own three runs; Table 5's are named, not counted again
    assert ("3 runs of 600 iterations on 2 MPI rank(s): median 0.15 s/iteration, 1.7 minutes a "
            "run (iterations x median s/iteration + evaluation), 0.1 hours in all; and 3 runs of "
            "5/kp, not retrained.") in text
    # the chapters' comparison by the primary metric
    cmp = ablations.compare_table("6", {"6": summarize(
        [r for r in ablations.table_results("6", [*TABLE5, *pool])])})
    assert "paper keypoint AP / AP50 / AP75" in cmp
    assert "59.8 / 86.2 / 66.7   56.0 ± 1.0 / 81.0 / 61.0  (3 seeds)" in cmp


def test_table_3_report_of_box_only_arms_and_not_run_rows():
    align = [_result("3", "align", s, box=b, mask_on=False) for s, b in enumerate((0.33, 0.34))]
    text = format_table("3", align)
    rows = _rows(text)
    assert rows["Faster R-CNN, RoIAlign (no mask head)"] == (
        "| Faster R-CNN, RoIAlign (no mask head) | 2 | 33.5 ± 0.7 | 63.5 ± 0.7 | 23.5 ± 0.7 | "
        "33.0-34.0 | (reference) | 37.3 |")
    assert rows["Faster R-CNN, RoIPool (no mask head)"] == (
        "| Faster R-CNN, RoIPool (no mask head) | 0 | not run yet |  |  | - | - / -1.1 | 36.2 |")
    assert rows["Mask R-CNN: RoIAlign + mask head (= 2c's RoIAlign avg)"].endswith(
        "| 0 | not run yet |  |  | - | - / +0.9 | 38.2 |")


def test_results_must_hold_the_metrics_of_their_heads(tmp_path):
    sweep = tmp_path / "sweep"
    good = [_result("5", "box", 0, box=0.5, mask_on=False),
            _result("5", "kp", 0, box=0.5, kp=0.6, mask_on=False, num_keypoints=3)]
    bad = {("mask", 0): _result("5", "mask", 0, box=0.5),  # a mask head, no mask AP
           ("kp_mask", 0): _result("5", "kp_mask", 0, box=0.5, mask=0.4, num_keypoints=3)}
    for r in good:
        d = run_dir(str(sweep), "5", r["arm"], r["seed"])
        os.makedirs(d)
        json.dump(r, open(os.path.join(d, RESULT_FILE), "w"))
    assert [r["arm"] for r in load_results(str(sweep))] == ["box", "kp"]
    assert ablations.expected_metrics(good[0]) == [("bbox", "AP"), ("bbox", "AP50"),
                                                   ("bbox", "AP75")]
    for (arm, seed), r in bad.items():
        d = run_dir(str(sweep), "5", arm, seed)
        os.makedirs(d)
        path = os.path.join(d, RESULT_FILE)
        json.dump(r, open(path, "w"))
        missing = "segm.AP" if arm == "mask" else "keypoints.AP"
        with pytest.raises(ValueError, match=f"no number at metrics.{missing}"):
            load_results(str(sweep))
        os.remove(path)


def test_cli_report_writes_the_new_tables_and_keeps_table_2(tmp_path, capsys):
    """``--report`` on a sweep with Table 5's runs writes 5 and 6 (6's RoIAlign row is 5's
    keypoint-only runs) and leaves the page's Table 2 blocks as written."""
    from minimaskrcnn.cli import main

    sweep = tmp_path / "sweep"
    for r in TABLE5:
        d = run_dir(str(sweep), "5", r["arm"], r["seed"])
        os.makedirs(d)
        json.dump(r, open(os.path.join(d, RESULT_FILE), "w"))
    page = tmp_path / "docs" / "ablations.md"
    page.parent.mkdir()
    begin = ("<!-- ablations:{} begin (written by `minimaskrcnn ablate --report`; edits inside "
             "are lost) -->")
    page.write_text(f"# Mine\n\n{begin.format('2c')}\nmeasured 2c\n<!-- ablations:2c end -->"
                    f"\n\n## Table 6\n\n{begin.format('6')}\nnot run yet\n<!-- ablations:6 end "
                    "-->\n")
    assert main(["ablate", "--out", str(sweep), "--report", str(page)]) == 0
    out = capsys.readouterr().out
    assert "wrote table(s) 5, 6 of" in out and "no results for 2b, 2c, 2d, 2e, 3" in out
    text = page.read_text()
    assert "measured 2c" in text and "## Table 5: Multi-task learning" in text
    assert "| RoIPool | 0 | not run yet |" in text and "\nnot run yet\n" not in text
    assert text.count("## Table 6") == 1  # its block was on the page: replaced in place
    summary = json.load(open(tmp_path / "docs" / "results" / "ablations.json"))
    assert set(summary) == {"5", "6"} and set(summary["6"]) == {"align"}
