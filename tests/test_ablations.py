"""minimaskrcnn.ablations: arms -> configs, the resumable sweep (fake and tiny real training),
rank 0's decisions under a data-parallel communicator, and the report's tables."""

import dataclasses
import json
import os
import re

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
    run_dir,
    run_state,
    run_sweep,
    summarize,
    write_report,
)
from minimaskrcnn.config import Config, EvalConfig, ModelConfig, config_to_dict, get_preset
from minimaskrcnn.data import shapes
from minimaskrcnn.ops.poolers import ROI_OPS

SHORT = SCHEDULES["short"]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# arms -> configs
# --------------------------------------------------------------------------------------------


def test_2c_arms_set_the_roi_op_and_nothing_else():
    tab = TABLES["2c"]
    assert [a.name for a in tab.arms] == ["pool", "warp_max", "warp_avg", "align_max", "align",
                                          "align_aligned"]
    plain = _flat(config_to_dict(SHORT.apply(get_preset("nuclei-mini"), 1)))
    seen = set()
    for arm in tab.arms:
        assert arm.unavailable is None and arm.dataset == "coco"
        assert set(arm.overrides) == {"model.roi_op", "model.roi_aligned"}
        cfg = _flat(config_to_dict(arm_config(arm, 1, schedule=SHORT, num_classes=1)))
        changed = {k for k in plain if plain[k] != cfg[k]}
        assert changed <= {"model.roi_op", "model.roi_aligned"}
        assert cfg["model.roi_op"] == arm.overrides["model.roi_op"]
        assert cfg["model.roi_aligned"] is (arm.name == "align_aligned")
        seen.add((cfg["model.roi_op"], cfg["model.roi_aligned"]))
    assert {op for op, _ in seen} == set(ROI_OPS) and len(seen) == 6
    # the paper's rows as we read them (checked against the paper's Table 2c)
    assert tab.arm("pool").paper == {"segm": (26.9, 48.8, 26.4)}
    assert tab.arm("align").paper == {"segm": (30.3, 51.2, 31.5)}
    assert tab.arm("align_aligned").paper is None


def test_schedule_cuts_the_preset_like_the_demo():
    cfg = SHORT.apply(get_preset("nuclei-mini"), 2)
    t = cfg.train
    assert (t.iterations, t.batch_size, t.crop_size, t.seed) == (600, 4, 256, 2)
    assert (t.warmup_iters, t.milestones, t.checkpoint_every) == (60, (400, 533), 100)
    assert t.base_lr == get_preset("nuclei-mini").train.base_lr
    assert cfg.model == get_preset("nuclei-mini").model
    cut = SHORT.with_iterations(90)
    assert cut.apply(get_preset("nuclei-mini"), 0).train.milestones == (60, 80)
    with pytest.raises(ValueError, match="iterations"):
        SHORT.with_iterations(0)


def _changed(arm, schedule=SHORT, preset="nuclei-mini", num_classes=1):
    plain = _flat(config_to_dict(schedule.apply(get_preset(preset), 1)))
    cfg = _flat(config_to_dict(arm_config(arm, 1, schedule=schedule, num_classes=num_classes,
                                          preset=preset)))
    return {k: cfg[k] for k in plain if plain[k] != cfg[k]}


def test_2b_2d_2e_arms_change_only_their_variant():
    t2b, t2d, t2e = TABLES["2b"], TABLES["2d"], TABLES["2e"]
    shapes_sched = SCHEDULES[t2b.schedule]
    assert (t2b.preset, shapes_sched.preset, shapes_sched.crop_size) == ("shapes-mini",) * 2 + (128,)
    assert {a.name: _changed(a, shapes_sched, "shapes-mini", 3) for a in t2b.arms} == {
        "softmax": {"model.mask_loss": "softmax"}, "sigmoid": {},
        "agnostic": {"model.mask_class_agnostic": True}}
    assert all(a.dataset == "shapes" for a in t2b.arms)
    train, val = ablations.shapes_datasets()
    assert (len(train), len(val), train.num_classes) == (400, 200, 3)
    assert train.source == "generated shapes (400 images, seed 0)"  # recorded in result.json
    assert len(train.coco.anns) > 400  # several shapes per image
    c5 = {"model.features": "c5", "model.image_scale": 4.0,
          "model.anchor_sizes": (32, 64, 128, 256, 512)}
    assert {a.name: _changed(a) for a in t2d.arms} == {
        "pool": {**c5, "model.roi_op": "pool"}, "align": c5}
    assert {a.name: _changed(a) for a in t2e.arms} == {
        "mlp": {"model.mask_head_type": "mlp"},  # mask_mlp_dims: the default (256, 256)
        "mlp3": {"model.mask_head_type": "mlp", "model.mask_mlp_dims": (256, 256, 256)},
        "fcn": {}}
    # 2e's FCN row is 2c's RoIAlign row: the same config, so the same runs
    fcn = t2e.arm("fcn")
    assert fcn.same_as == ("2c", "align")
    assert arm_config(fcn, 2, schedule=SHORT) == arm_config(TABLES["2c"].arm("align"), 2,
                                                            schedule=SHORT)
    # the paper's rows as we read them
    assert t2d.arm("pool").paper["bbox"] == (28.2, 52.7, 26.9)
    assert t2b.arm("softmax").paper == {"segm": (24.8, 44.1, 25.1)}
    assert t2e.arm("fcn").paper == {"segm": (33.6, 55.2, 35.3)}
    with pytest.raises(ValueError, match="no arm 'roialign'"):
        TABLES["2c"].arm("roialign")


def test_an_unavailable_arm_says_why(tmp_path):
    arm = ablations.Arm("later", "a later row", {}, unavailable="needs a head not built")
    tab = dataclasses.replace(TABLES["2c"], name="2x", arms=(arm,))
    with pytest.raises(ValueError, match="no arm that can run yet: needs a head not built"):
        run_sweep(tab, str(tmp_path), _Data([1]), _Data([1]), train_fn=_never,
                  evaluate_fn=_never)
    with pytest.raises(ValueError, match="not available yet"):
        arm_config(arm, 0, schedule=SHORT)
    assert "not available yet: needs a head not built" in format_table(tab, [])


# --------------------------------------------------------------------------------------------
# the sweep, with a fake train and evaluate
# --------------------------------------------------------------------------------------------


def _never(*a, **k):
    raise AssertionError("must not be called")


class _Data(list):
    num_classes = 1
    source = "fake.json"


def _metrics(ap):
    return {"segm": {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1},
            "bbox": {"AP": ap + 0.01, "AP50": ap + 0.25, "AP75": ap - 0.05},
            "dsb_score": ap - 0.02, "num_images": 2, "_results": {1: "dropped"}}


class Fakes:
    """A train that writes a run folder with checkpoints (and can stop at an iteration), an
    evaluate whose mask AP encodes the arm and seed."""

    def __init__(self):
        self.calls = []
        self.stop_at = {}  # run folder -> iteration at which "the machine is switched off"

    def train(self, cfg, dataset, out, *, resume, overwrite, progress, comm):
        assert not (resume and overwrite)
        os.makedirs(out, exist_ok=True)
        start = 0
        if resume:
            start = int(open(os.path.join(out, "last_checkpoint")).read()[11:17])
            log = os.path.join(out, "log.jsonl")
            kept = open(log).readlines()[:start] if os.path.exists(log) else []  # as train does
            open(log, "w").writelines(kept)
        else:
            assert not os.path.exists(os.path.join(out, "last_checkpoint"))
        self.calls.append((os.path.relpath(out), start, resume, overwrite))
        total = cfg.train.iterations
        with open(os.path.join(out, "log.jsonl"), "a") as log:
            for t in range(start, total):
                if self.stop_at.get(out) == t:
                    raise KeyboardInterrupt
                log.write(json.dumps({"iteration": t, "seconds": 0.5}) + "\n")
                if (t + 1) % cfg.train.checkpoint_every == 0 or t + 1 == total:
                    name = f"checkpoint_{t + 1:06d}.npz"
                    open(os.path.join(out, name), "w").close()
                    with open(os.path.join(out, "last_checkpoint"), "w") as f:
                        f.write(name + "\n")
        return {"model": cfg, "iteration": total}

    def evaluate(self, model, dataset, eval_cfg, *, limit, progress, comm):
        op = ["pool", "align"].index(model.model.roi_op)
        return _metrics(0.3 + 0.1 * op + 0.01 * model.train.seed)


TINY_SCHEDULE = Schedule("tiny", iterations=4, batch_size=2, crop_size=32, checkpoint_every=2)


def _sweep(tmp_path, fakes, **kw):
    kw = {"seeds": (0, 1), "arms": ["pool", "align"], "schedule": TINY_SCHEDULE,
          "train_fn": fakes.train, "evaluate_fn": fakes.evaluate, "progress": False,
          "log": None, **kw}
    return run_sweep("2c", str(tmp_path), _Data([1]), _Data([2]), **kw)


def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fakes = Fakes()
    kill = run_dir(".", "2c", "pool", 1)  # the third run: seed 1 of pool
    fakes.stop_at[kill] = 3  # switched off after its checkpoint at 2
    with pytest.raises(KeyboardInterrupt):
        _sweep(".", fakes)
    assert fakes.calls == [("2c/pool/seed0", 0, False, True), ("2c/align/seed0", 0, False, True),
                           ("2c/pool/seed1", 0, False, True)]
    assert run_state(kill) == ("resume", 2)
    assert run_state(run_dir(".", "2c", "align", 1)) == ("fresh", 0)
    assert run_state(run_dir(".", "2c", "pool", 0)) == ("done", 4)
    # a run folder killed before its first checkpoint: trained afresh (overwrite)
    os.makedirs(run_dir(".", "2c", "align", 1))
    open(os.path.join(run_dir(".", "2c", "align", 1), "config.json"), "w").close()
    fakes.calls.clear()
    fakes.stop_at.clear()
    results = _sweep(".", fakes)
    assert fakes.calls == [("2c/pool/seed1", 2, True, False), ("2c/align/seed1", 0, False, True)]
    assert [(r["arm"], r["seed"]) for r in results] == [("pool", 0), ("align", 0), ("pool", 1),
                                                       ("align", 1)]
    r = json.load(open(os.path.join(kill, RESULT_FILE)))
    assert r["resumed_from"] == 2 and r["iterations"] == 4 and r["world_size"] == 1
    assert r["train_seconds"] == pytest.approx(2.0)  # 4 logged iterations of 0.5 s, both calls
    assert r["metrics"]["segm"]["AP"] == pytest.approx(0.31) and "_results" not in r["metrics"]
    assert r["config"]["model"]["roi_op"] == "pool" and r["config"]["train"]["seed"] == 1
    assert r["data"]["train"] == {"source": "fake.json", "images": 1}
    # only the last checkpoint of a finished run is kept
    assert sorted(f for f in os.listdir(kill) if f.endswith(".npz")) == ["checkpoint_000004.npz"]
    # everything done: a third call trains nothing and returns the same results
    fakes.calls.clear()
    again = _sweep(".", fakes)
    assert fakes.calls == [] and again == results
    # a finished run of another schedule is refused, not mixed into the table
    with pytest.raises(ValueError, match="train.iterations"):
        _sweep(".", fakes, schedule=TINY_SCHEDULE.with_iterations(6))


class _Rank:
    """Rank ``rank`` of a 2-rank job: ``bcast`` returns rank 0's objects (``script``) on rank
    1 and records what rank 0 sends."""

    def __init__(self, rank, script=()):
        self.rank, self.size, self.is_main = rank, 2, rank == 0
        self.script, self.sent = list(script), []

    def bcast(self, obj, root=0):
        if self.is_main:
            self.sent.append(obj)
            return obj
        return self.script.pop(0)

    def barrier(self):
        pass


def test_every_rank_takes_rank_0s_decisions_and_only_rank_0_writes(tmp_path):
    fakes = Fakes()
    stored = {"config": config_to_dict(arm_config(TABLES["2c"].arm("pool"), 0,
                                                  schedule=TINY_SCHEDULE, num_classes=1)),
              "metrics": _metrics(0.3), "arm": "pool", "seed": 0}
    # rank 1 sees an empty sweep folder, but rank 0 says: pool done, align resumes from 2
    os.makedirs(run_dir(str(tmp_path), "2c", "align", 0))
    with open(os.path.join(run_dir(str(tmp_path), "2c", "align", 0), "last_checkpoint"), "w") as f:
        f.write("checkpoint_000002.npz\n")
    comm = _Rank(1, [("done", 4, stored), ("resume", 2, None)])
    results = _sweep(tmp_path, fakes, seeds=(0,), comm=comm)
    assert [c[1:] for c in fakes.calls] == [(2, True, False)]
    assert results[0] is stored or results[0] == stored
    assert not os.path.exists(os.path.join(run_dir(str(tmp_path), "2c", "align", 0), RESULT_FILE))
    # rank 0 decides from the folders and broadcasts its decision
    fakes.calls.clear()
    comm0 = _Rank(0)
    _sweep(tmp_path / "r0", fakes, seeds=(0,), comm=comm0)
    assert comm0.sent == [("fresh", 0, None), ("fresh", 0, None)]
    assert os.path.isfile(os.path.join(run_dir(str(tmp_path / "r0"), "2c", "align", 0),
                                       RESULT_FILE))


def test_2e_fcn_row_reuses_2c_align_runs_and_the_report_shows_them_in_both(tmp_path):
    fakes = Fakes()
    fakes.evaluate = lambda model, *a, **k: _metrics(0.4 + 0.01 * model.train.seed)
    kw = {"seeds": (0,), "schedule": TINY_SCHEDULE, "train_fn": fakes.train, "log": None,
          "evaluate_fn": fakes.evaluate, "progress": False}
    first = run_sweep("2e", str(tmp_path), _Data([1]), _Data([2]), arms=["fcn"], **kw)
    # trained once, in 2c's folder, as 2c's arm
    assert [c[0] for c in fakes.calls] == [os.path.relpath(run_dir(str(tmp_path), "2c", "align",
                                                                   0))]
    assert (first[0]["table"], first[0]["arm"]) == ("2c", "align")
    assert not os.path.exists(os.path.join(str(tmp_path), "2e"))
    fakes.calls.clear()
    run_sweep("2c", str(tmp_path), _Data([1]), _Data([2]), arms=["align"], **kw)
    assert fakes.calls == []  # 2c's align run is the one just made
    page = tmp_path / "p.md"
    write_report(str(tmp_path), str(page), ["2c", "2e"], summary_path=str(tmp_path / "s.json"))
    summary = json.load(open(tmp_path / "s.json"))
    assert summary["2e"]["fcn"]["segm.AP"]["values"] == [0.4]
    assert summary["2c"]["align"]["segm.AP"]["values"] == [0.4]
    assert "mlp" not in summary["2e"]


def test_a_result_written_before_a_config_field_existed_is_still_done(tmp_path):
    fakes = Fakes()
    _sweep(tmp_path, fakes, seeds=(0,), arms=["pool"])
    path = os.path.join(run_dir(str(tmp_path), "2c", "pool", 0), RESULT_FILE)
    r = json.load(open(path))
    for name in ("features", "mask_head_type", "mask_mlp_dims", "mask_class_agnostic"):
        del r["config"]["model"][name]  # as a result.json of an older version stores it
    json.dump(r, open(path, "w"))
    fakes.calls.clear()
    assert _sweep(tmp_path, fakes, seeds=(0,), arms=["pool"])[0]["arm"] == "pool"
    assert fakes.calls == []
    # a stored field that differs from the default it now has is still a difference
    r["config"]["model"]["features"] = "c5"
    json.dump(r, open(path, "w"))
    with pytest.raises(ValueError, match="model.features"):
        _sweep(tmp_path, fakes, seeds=(0,), arms=["pool"])


# --------------------------------------------------------------------------------------------
# a tiny real network on generated shapes: train + evaluate, then a resumed run
# --------------------------------------------------------------------------------------------

TINY = ModelConfig(
    num_classes=1, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4, fpn_channels=8,
    rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
    representation_size=16, mask_head_channels=8, detections_per_img=20,
)


def test_tiny_real_sweep_trains_evaluates_and_resumes(tmp_path):
    from minimaskrcnn.training.loop import train

    data = shapes.shapes_dataset(4, seed=0, image_size=48, max_shapes=3, min_size=8, max_size=20)
    base = Config(name="tiny", model=TINY, eval=EvalConfig(max_dets=(10, 20, 20)))
    sched = Schedule("tiny", iterations=2, batch_size=2, crop_size=32, checkpoint_every=1)
    base = dataclasses.replace(base, model=dataclasses.replace(TINY, num_classes=data.num_classes))
    # seed 1 of align was switched off after its first iteration
    cfg = arm_config(TABLES["2c"].arm("align"), 1, schedule=sched, base=base)
    train(cfg, data, run_dir(str(tmp_path), "2c", "align", 1), iterations=1, progress=False)
    lines = []
    results = run_sweep("2c", str(tmp_path), data, data, seeds=(1,), arms=["pool", "align"],
                        schedule=sched, base=base, val_limit=2, progress=False,
                        log=lines.append)
    assert [(r["arm"], r["resumed_from"], r["iterations"]) for r in results] == [
        ("pool", 0, 2), ("align", 1, 2)]
    for r in results:
        m = r["metrics"]
        assert m["num_images"] == 2
        for key in ("segm", "bbox"):
            assert all(np.isfinite(m[key][k]) for k in ("AP", "AP50", "AP75"))
        assert np.isfinite(m["dsb_score"]) and r["wall_seconds"] > 0
    assert "resuming from iteration 1" in lines[2] and "mask AP" in lines[-1]
    saved = json.load(open(os.path.join(run_dir(str(tmp_path), "2c", "pool", 1), RESULT_FILE)))
    assert saved["config"]["model"]["roi_op"] == "pool" and saved["seed"] == 1


def test_tiny_real_sweep_of_every_variant_table(tmp_path):
    """Each arm of 2b, 2d and 2e trains (one iteration of the tiny network) and evaluates."""
    data = shapes.shapes_dataset(3, seed=0, image_size=64, max_shapes=3, min_size=8, max_size=20)
    base = Config(name="tiny", model=dataclasses.replace(TINY, num_classes=data.num_classes),
                  eval=EvalConfig(max_dets=(10, 20, 20)))
    sched = Schedule("tiny", iterations=1, batch_size=2, crop_size=64, checkpoint_every=1)
    for table, arms in (("2b", ["softmax", "agnostic"]), ("2d", ["pool", "align"]),
                        ("2e", ["mlp3"])):
        results = run_sweep(table, str(tmp_path), data, data, seeds=(0,), arms=arms,
                            schedule=sched, base=base, val_limit=1, progress=False, log=None)
        assert [r["arm"] for r in results] == arms
        for r in results:
            assert r["iterations"] == 1 and np.isfinite(r["metrics"]["segm"]["AP"])
            for key, value in r["overrides"].items():
                section, _, name = key.partition(".")
                stored = r["config"][section][name]
                assert (list(stored) if isinstance(stored, list) else stored) == (
                    list(value) if isinstance(value, tuple) else value)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def _result(arm, seed, ap, *, table="2c"):
    m = {"segm": {"AP": ap, "AP50": ap + 0.3, "AP75": ap - 0.1},
         "bbox": {"AP": ap + 0.02, "AP50": 0.8, "AP75": 0.4}, "dsb_score": ap - 0.05}
    return {"table": table, "arm": arm, "seed": seed, "schedule": "short", "iterations": 600,
            "metrics": m, "train_seconds": 540.0, "eval_seconds": 60.0, "wall_seconds": 610.0,
            "seconds_per_iteration": 0.9, "world_size": 2}


HAND_MADE = ([_result("pool", s, ap) for s, ap in enumerate((0.30, 0.32, 0.34))]
             + [_result("align", s, ap) for s, ap in enumerate((0.40, 0.41, 0.42))])


def test_summarize_gives_mean_std_and_range_per_arm():
    s = summarize(HAND_MADE)
    assert set(s) == {"pool", "align"} and s["pool"]["n"] == 3 and s["pool"]["seeds"] == [0, 1, 2]
    ap = s["pool"]["segm.AP"]
    assert ap["mean"] == pytest.approx(0.32) and ap["std"] == pytest.approx(0.02)
    assert (ap["min"], ap["max"]) == (0.30, 0.34)
    assert s["align"]["segm.AP75"]["mean"] == pytest.approx(0.31)
    assert s["align"]["dsb_score"]["std"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="several tables"):
        summarize([*HAND_MADE, _result("pool", 0, 0.1, table="2d")])


def test_format_table_rows():
    text = format_table("2c", HAND_MADE)
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["RoIPool (max)"] == (
        "| RoIPool (max) | 3 | 32.0 ± 2.0 | 62.0 ± 2.0 | 22.0 ± 2.0 | 34.0 ± 2.0 | 80.0 ± 0.0 | "
        "40.0 ± 0.0 | 27.0 ± 2.0 | 30.0-34.0 | -9.0 / -3.4 | 26.9 / 48.8 / 26.4 | - |")
    assert rows["RoIAlign, avg"].startswith("| RoIAlign, avg | 3 | 41.0 ± 1.0 |")
    assert "| (reference) | 30.3 / 51.2 / 31.5 |" in rows["RoIAlign, avg"]
    assert "| 0 | not run yet |" in rows["RoIWarp, max"]
    assert rows["RoIWarp, max"].count("|") == rows["RoIPool (max)"].count("|") == 14
    assert "Ranking by mask AP, ours: align > pool." in text
    assert "The paper's (same arms): align > pool." in text
    assert "6 runs of 600 iterations on 2 MPI rank(s): median 0.90 s/iteration, 10.0 minutes" in text
    assert "| RoIAlign | 0 | not run yet |" in format_table("2d", HAND_MADE)  # 2c results not in 2d
    # the paper's two MLP rows of 2e tie at 31.5; ours tie where the shown means (0.1 points) do
    two_e = format_table("2e", [_result("mlp", 0, 0.3004, table="2e"),
                                _result("mlp3", 0, 0.2996, table="2e"),
                                _result("align", 0, 0.33, table="2c")])
    assert "The paper's (same arms): fcn > mlp = mlp3." in two_e
    assert "Ranking by mask AP, ours: fcn > mlp = mlp3." in two_e


def test_write_report_replaces_only_its_blocks(tmp_path):
    sweep = tmp_path / "sweep"
    for r in HAND_MADE:
        d = run_dir(str(sweep), "2c", r["arm"], r["seed"])
        os.makedirs(d)
        json.dump(r, open(os.path.join(d, RESULT_FILE), "w"))
    page = tmp_path / "ablations.md"
    summary = tmp_path / "results" / "ablations.json"
    write_report(str(sweep), str(page), ["2c"], summary_path=str(summary))
    shipped = json.load(open(summary))  # what chapter 4 reads
    assert set(shipped) == {"2c"} and shipped["2c"]["pool"]["n"] == 3
    assert shipped["2c"]["align"]["segm.AP"]["mean"] == pytest.approx(0.41)
    first = page.read_text()
    assert first.startswith("# Ablations") and "## Table 2c" in first and "32.0 ± 2.0" in first
    page.write_text("# Mine\n\nprose before\n\n" + first[first.index("<!--"):] + "\nprose after\n")
    os.remove(os.path.join(run_dir(str(sweep), "2c", "pool", 2), RESULT_FILE))
    text = write_report(str(sweep), str(page), ["2c"])
    assert text.startswith("# Mine\n\nprose before\n") and text.endswith("prose after\n")
    assert "31.0 ± 1.4" in text and "32.0 ± 2.0" not in text and text.count("<!--") == 2


def test_cli_list_report_and_missing_data(tmp_path, capsys):
    from minimaskrcnn.cli import main

    assert main(["ablate", "--list", "--table", "2c"]) == 0
    out = capsys.readouterr().out
    assert "align_aligned" in out and "18 runs (3 seeds)" in out
    page = tmp_path / "a.md"
    assert main(["ablate", "--out", str(tmp_path / "none"), "--report", str(page)]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not page.exists() and not (tmp_path / "results").exists()  # nothing created
    assert main(["ablate", "--out", str(tmp_path / "x")]) == 2
    assert "--train-json, --images and --val-json" in capsys.readouterr().err
    assert main(["ablate", "--list", "--table", "2e"]) == 0
    out = capsys.readouterr().out
    assert "6 runs (3 seeds)" in out and "(the runs of 2c/align)" in out
    assert main(["ablate", "--list", "--table", "2b"]) == 0
    assert "schedule 'shapes'" in capsys.readouterr().out
    assert main(["ablate", "--table", "2b", "--sample", "--out", str(tmp_path / "x")]) == 2
    assert "generated shapes" in capsys.readouterr().err


def test_compare_table_for_the_chapters(tmp_path):
    assert ablations.read_summary(str(tmp_path / "none.json")) == {}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an ablation summary"):
        ablations.read_summary(str(bad))
    with pytest.raises(ValueError, match="no finished run"):  # no results: nothing written
        write_report(str(tmp_path / "none"), str(tmp_path / "p.md"))
    assert not (tmp_path / "p.md").exists()
    results = HAND_MADE[:1] + HAND_MADE[3:]  # pool: seed 0 only; align: 3 seeds
    summary = {"2c": summarize(results)}
    text = ablations.compare_table("2c", summary)
    rows = {line.split("  ")[1]: line for line in text.splitlines()[3:]}
    assert rows["RoIPool (max)"].rstrip().endswith("30.0 ± 0.0 / 60.0 / 20.0  (1 seed)")
    assert rows["RoIAlign, avg"].rstrip().endswith("41.0 ± 1.0 / 71.0 / 31.0  (3 seeds)")
    assert "30.3 / 51.2 / 31.5" in rows["RoIAlign, avg"]
    assert rows["RoIWarp, max"].rstrip().endswith("-")
    assert ablations.compare_table("2e", {}).count(" -") >= 3


def test_footer_cost_ignores_a_paused_run():
    paused = dict(_result("pool", 0, 0.3), train_seconds=5000.0)  # stopped for over an hour
    text = format_table("2c", [paused])
    assert "1 runs of 600 iterations on 2 MPI rank(s): median 0.90 s/iteration, 10.0 minutes" in text
    no_median = dict(paused, seconds_per_iteration=None)  # then the logged total is all there is
    assert "84.3 minutes a run" in format_table("2c", [no_median])


def test_report_of_a_folder_without_runs_keeps_the_page(tmp_path, capsys):
    """issue 27: ``--report`` on a typo'd --out refused (rc 2), the measured page unchanged; a
    sweep with results of 2c only rewrites 2c and leaves the other tables' rows as written."""
    from minimaskrcnn.cli import main

    sweep = tmp_path / "sweep"
    for r in HAND_MADE:
        d = run_dir(str(sweep), "2c", r["arm"], r["seed"])
        os.makedirs(d)
        json.dump(r, open(os.path.join(d, RESULT_FILE), "w"))
    page = tmp_path / "docs" / "ablations.md"
    page.parent.mkdir()
    page.write_text("# Mine\n\n<!-- ablations:2b begin -->\nmeasured 2b\n<!-- ablations:2b end -->\n")
    summary = tmp_path / "docs" / "results" / "ablations.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"2b": {"softmax": {"n": 3}}}))
    before = page.read_text()
    assert main(["ablate", "--out", str(tmp_path / "typo"), "--report", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "typo: no finished run" in err[0] and "left as it is" in err[0]
    assert page.read_text() == before
    assert main(["ablate", "--out", str(sweep), "--report", str(page)]) == 0
    # 2e's fcn arm and Table 3's Mask R-CNN arm are 2c's align: 2e and 3 have results too
    out = capsys.readouterr().out
    assert "wrote table(s) 2c, 2e, 3 of" in out
    assert "no results for 2b, 2d, 5, 6: left as written" in out
    text = page.read_text()
    assert "measured 2b" in text and "## Table 2c" in text and "## Table 2d" not in text
    assert set(json.load(open(summary))) == {"2b", "2c", "2e", "3"}  # 2b's summary kept


@pytest.mark.parametrize("arms", ["", ",", " , "])
def test_empty_arms_refused(tmp_path, capsys, arms):
    """issue 27: ``--arms ""`` (or ``,``) is a typo, not the whole table."""
    from minimaskrcnn.cli import main

    assert main(["ablate", "--sample", "--out", str(tmp_path / "s"), "--arms", arms]) == 2
    err = capsys.readouterr().err
    assert "names no arm" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("content, message", [
    ("[]", r"holds list \[\], not an object"),
    ("null", r"holds NoneType None, not an object"),
    ("MISSING_METRICS", r"no number at metrics\.segm\.AP"),
    ("STRING_SEED", r"seed is '0', not an integer"),
])
def test_report_names_a_bad_result_file(tmp_path, capsys, content, message):
    """issue 27: result.json holding [] or null was an AttributeError traceback, missing metrics
    "error: metrics", a string seed "invalid literal for int()" naming no file."""
    from minimaskrcnn.cli import main

    d = run_dir(str(tmp_path / "sweep"), "2c", "pool", 0)
    os.makedirs(d)
    r = _result("pool", 0, 0.3)
    if content == "MISSING_METRICS":
        content = json.dumps({k: v for k, v in r.items() if k != "metrics"})
    elif content == "STRING_SEED":
        content = json.dumps(dict(r, seed="0"))
    path = os.path.join(d, RESULT_FILE)
    with open(path, "w") as f:
        f.write(content)
    assert main(["ablate", "--out", str(tmp_path / "sweep"), "--report",
                 str(tmp_path / "a.md")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(re.escape(path) + r": not a result file \(" + message, err), err
    assert "delete it to run that run again" in err and not (tmp_path / "a.md").exists()
