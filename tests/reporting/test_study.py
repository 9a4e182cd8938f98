"""The study's statistics and report on known input: the paired t-test, Δs and verdicts, one-seed SEs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reporting.paired import paired_test, regularized_incomplete_beta, t_two_sided_p
from reporting.study import build_report, write_report
from rimifm.errors import UserError


@pytest.mark.parametrize("t, df, p", [(12.706204736174698, 1, 0.05), (4.302652729911275, 2, 0.05),
                                      (2.2281388519649385, 10, 0.05), (1.0, 30, 0.3253086), (0.0, 4, 1.0),
                                      (9.924843200918281, 2, 0.01)])
def test_student_t_two_sided_p_values(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=1e-6)
    assert t_two_sided_p(-t, df) == pytest.approx(p, abs=1e-6)


def test_incomplete_beta_identities():
    assert regularized_incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert regularized_incomplete_beta(2.0, 3.0, 0.4) + regularized_incomplete_beta(3.0, 2.0, 0.6) == \
        pytest.approx(1.0)


def test_paired_test_on_known_numbers():
    # differences 1.1, 0.4, 0.8: mean 0.7667, sd 0.3512, t = 3.781 with 2 df, p = 0.0634
    t = paired_test({0: 80.1, 1: 79.5, 2: 81.0, 7: 50.0}, {0: 79.0, 1: 79.1, 2: 80.2})
    assert t.n == 3 and t.mean == pytest.approx(0.76667, abs=1e-4) and t.sd == pytest.approx(0.35119, abs=1e-4)
    assert t.t == pytest.approx(3.7812, abs=1e-3) and t.p == pytest.approx(0.06337, abs=1e-4)
    assert t.verdict == "within noise"
    # the same mean difference with less spread is significant
    assert paired_test({0: 1.7, 1: 1.8, 2: 1.75}, {0: 1.0, 1: 1.0, 2: 1.0}).verdict == "significant"
    same = paired_test({0: 2.0, 1: 3.0}, {0: 2.0, 1: 3.0})
    assert same.mean == 0 and same.p == 1.0
    with pytest.raises(UserError, match="at least 2 seeds that both runs have"):
        paired_test({0: 1.0, 1: 2.0}, {1: 1.0, 2: 2.0})


def _records(root: Path, name: str, values: dict[int, float], time_s: float | None = None, curve: bool = True) -> dict:
    """Fake kNN (and pretraining) records of one row; returns its manifest runs."""
    runs = {}
    for seed, top1 in values.items():
        folder = root / f"{name}-s{seed}"
        folder.mkdir(parents=True)
        (folder / "knn.json").write_text(json.dumps({"kind": "knn", "metrics": {"top1": top1}, "num_val": 10000}))
        pre = None
        if time_s is not None:
            pre = folder / "pre.json"
            knn_curve = [{"step": 0, "top1": 70.0}, {"step": 100, "top1": top1 - 1}] if curve else None
            pre.write_text(json.dumps({"kind": "pretrain", "train_time_s": time_s + seed, "knn_curve": knn_curve,
                                       "metrics": {"knn_top1_pixels": 81.0}}))
        runs[str(seed)] = {"knn": str(folder / "knn.json"), "pretrain": str(pre) if pre else None}
    return runs


def _manifest(root: Path, seeds: list[int], rows: dict[str, tuple[str, str, dict, float | None]],
              test: str = "paired-t") -> dict:
    return {"title": "Fashion-MNIST · ResNet-tiny · fmnist_cpu_byol", "seeds": seeds, "k": 20, "temperature": 0.1,
            "epochs": 3, "batch_size": 256, "test": test, "base": "base", "command": "python tools/study.py ...",
            "code_version": "0.1.0+abc", "calibration_images_per_s": 150.0, "opts": [],
            "rows": {key: {"label": label, "kind": kind, "runs": _records(root, key, values, time_s)}
                     for key, (label, kind, values, time_s) in rows.items()}}


def test_report_gives_each_variant_its_paired_test_and_the_anchors(tmp_path):
    rows = {
        "base": ("BYOL", "variant", {0: 80.0, 1: 81.0, 2: 79.0}, 100.0),
        "rim": ("BYOL+RIM", "variant", {0: 80.3, 1: 80.8, 2: 79.4}, 101.0),  # diffs .3 -.2 .4: within noise
        "ifm": ("BYOL+IFM", "variant", {0: 82.0, 1: 83.1, 2: 81.1}, 102.0),  # diffs 2.0 2.1 2.1: significant
        "random-init": ("random init", "random-init", {0: 77.0, 1: 77.5, 2: 76.5}, None),
        "supervised": ("supervised (same training time)", "supervised", {0: 90.0, 1: 90.5, 2: 89.5}, 100.0),
        "raw-pixels": ("raw pixels", "raw-pixels", {0: 85.47}, None),
    }
    manifest = _manifest(tmp_path, [0, 1, 2], rows)
    text, table, per_seed, _, transfer = build_report(manifest)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "80.00 ± 1.00 (n=3)" in lines["BYOL"]
    rim = next(r for r in table if r[0] == "BYOL+RIM")
    assert float(rim[7]) == pytest.approx(0.16667, abs=1e-4) and rim[11] == "within noise"
    ifm = next(r for r in table if r[0] == "BYOL+IFM")
    assert float(ifm[7]) == pytest.approx(2.0667, abs=1e-4) and ifm[11] == "significant" and float(ifm[10]) < 0.05
    assert "+3.00 ± 0.50" in lines["BYOL"]  # the paired gain over each seed's random init (3, 3.5, 2.5)
    assert "85.47 ± 0.35 (SE)" in lines["raw pixels"]  # one number: its binomial SE on 10000 images
    assert "BYOL+IFM vs BYOL: +2.07 points, p = 2.6e-04: significant, higher than BYOL." in text
    assert transfer == [] and "Detection transfer" not in text  # no detection step, no section
    assert "\n- When: not recorded" in text  # these fake records carry no date
    from reporting.provenance import calibration_line

    assert calibration_line({"calibration_images_per_s": 198.0}) == "calibration figure 198 images/s"
    two = {"calibrations": [{"images_per_s": 198.0, "date": None}, {"images_per_s": 178.9, "date": "2026-12-05"}]}
    assert calibration_line(two).startswith("calibration figures 198 images/s, 178.9 images/s (2026-12-05), one")
    assert "BYOL minus each anchor, in points: random init +3.00, raw pixels -5.47, supervised ceiling -10.00." \
        in text
    assert "calibration figure 150 images/s" in text and "python tools/study.py" in text
    assert len(per_seed) == 1 + 3 * 5 + 1
    write_report(manifest, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"study.md", "study.csv", "per_seed.csv", "curves.png"}
    first = (tmp_path / "out" / "curves.png").read_bytes()
    write_report(manifest, tmp_path / "out")  # the same records give the same bytes
    assert (tmp_path / "out" / "curves.png").read_bytes() == first


def test_one_seed_report_uses_the_standard_errors(tmp_path):
    rows = {"base": ("BYOL", "variant", {0: 80.0}, 50.0), "rim": ("BYOL+RIM", "variant", {0: 80.5}, 50.0),
            "random-init": ("random init", "random-init", {0: 77.0}, None)}
    text, table, _, _, _ = build_report(_manifest(tmp_path, [0], rows, test="none"))
    se = math.sqrt(0.8 * 0.2 / 10000) * 100
    rim = next(r for r in table if r[0] == "BYOL+RIM")
    assert float(rim[8]) == pytest.approx(math.hypot(se, math.sqrt(0.805 * 0.195 / 10000) * 100), abs=1e-3)
    assert rim[11] == "within noise"  # 0.5 < 2 x 0.57
    base = next(r for r in table if r[0] == "BYOL")
    assert base[6] == "SE" and float(base[12]) == pytest.approx(3.0)  # its gain over random init
    assert "1 seed: within noise" in text


def test_a_study_of_one_seed_cannot_be_asked_for_a_paired_test(tmp_path):
    from demo.study import Study
    from demo.study_cli import build_parser, plan_from_args

    a = build_parser().parse_args(["--config", "fmnist_cpu_byol.yaml", "--seeds", "0", "--out", str(tmp_path)])
    with pytest.raises(UserError, match=r"a paired test across seeds needs at least 2 seeds \(got 1: 0\)"):
        Study(plan_from_args(a, ""))
    assert not any(tmp_path.iterdir())  # nothing was run


def test_overrides_may_follow_the_seeds_and_extra_variants_keep_their_own():
    from demo.study_cli import build_parser, plan_from_args, split_overrides

    argv = ["--config", "fmnist_cpu_byol.yaml", "--seeds", "0", "1", "DATA.ROOT", "/data", "--extra", "r50",
            "RIM.ENABLED", "true", "RIM.RATIO", "0.5", "--k", "5", "TRAIN.PROGRESS", "false"]
    options, overrides = split_overrides(argv)
    assert overrides == ["DATA.ROOT", "/data", "TRAIN.PROGRESS", "false"]
    a = build_parser().parse_args(options)
    a.opts = overrides
    plan = plan_from_args(a, "")
    assert plan.seeds == [0, 1] and plan.k == 5 and plan.opts == ("DATA.ROOT", "/data", "TRAIN.PROGRESS", "false")
    assert plan.variants[-1] == ("r50", ("RIM.ENABLED", "true", "RIM.RATIO", "0.5"))
    with pytest.raises(UserError, match="override DATA.ROOT has no value"):
        split_overrides(["--config", "x.yaml", "DATA.ROOT"])
    # the detection's own overrides stay with --det-opts
    argv = ["--config", "fmnist_cpu_byol.yaml", "--detection", "fmnist_scenes.yaml", "--det-opts", "SOLVER.MAX_ITER",
            "50", "--seeds", "0", "1", "DATA.ROOT", "/data"]
    options, overrides = split_overrides(argv)
    a = build_parser().parse_args(options)
    a.opts = overrides
    plan = plan_from_args(a, "")
    assert plan.det_opts == ("SOLVER.MAX_ITER", "50") and plan.opts == ("DATA.ROOT", "/data")
    a.detection = ""
    with pytest.raises(UserError, match="--det-opts without --detection CONFIG"):
        plan_from_args(a, "")
    # --epochs sizes every pretraining run and gives the default folders their own name
    a = build_parser().parse_args(["--config", "fmnist_cpu_byol.yaml", "--epochs", "2"])
    plan = plan_from_args(a, "")
    assert plan.opts == ("TRAIN.EPOCHS", "2") and plan.out.name == plan.results.name == "fmnist_cpu_byol-e2"
    a.opts = ["TRAIN.EPOCHS", "3"]
    with pytest.raises(UserError, match="--epochs and a TRAIN.EPOCHS override"):
        plan_from_args(a, "")


def test_the_runs_folder_refuses_another_recipe_or_a_variant_name_with_new_overrides(tmp_path):
    from demo.study import VARIANTS, Plan, Study

    def study(config="fmnist_cpu_byol.yaml", extra=(), opts=()):
        return Study(Plan(config=config, seeds=[0], out=tmp_path, results=tmp_path / "r",
                          variants=[*VARIANTS.items(), *extra], opts=opts, test="none"))

    study(extra=[("r50", ("RIM.ENABLED", "true", "RIM.RATIO", "0.5"))]).check_out_folder()
    study().check_out_folder()  # fewer variants: fine
    study(extra=[("r70", ("RIM.ENABLED", "true", "RIM.RATIO", "0.7"))]).check_out_folder()  # a new one is added
    stamp = json.loads((tmp_path / "study.json").read_text())
    assert set(stamp["variants"]) == {*VARIANTS, "r50", "r70"}
    with pytest.raises(UserError, match=r"holds runs of variant\(s\) r50 made with other overrides"):
        study(extra=[("r50", ("RIM.ENABLED", "true", "RIM.RATIO", "0.6"))]).check_out_folder()
    with pytest.raises(UserError, match="holds study runs of another recipe or other overrides"):
        study(opts=("OPTIM.BASE_LR", "0.01")).check_out_folder()
    with pytest.raises(UserError, match="holds study runs of another recipe"):
        study(config="fmnist_cpu_simsiam.yaml").check_out_folder()
    # the same recipe from a moved checkout, stamped before keys were added to the config: still the same recipe
    from rimifm.config import config_hash

    recipe = study()._recipe_cfg()
    recipe.defrost()
    del recipe.BYOL["LOSS_SCALE"], recipe.ONLINE_LINEAR["VIEWS"], recipe.ONLINE_LINEAR["BN_IMAGES"]
    (tmp_path / "study.json").write_text(json.dumps({**stamp, "config": "/elsewhere/fmnist_cpu_byol.yaml",
                                                     "config_hash": config_hash(recipe)}))
    study().check_out_folder()
    (tmp_path / "study.json").write_text(json.dumps({**stamp, "config_hash": config_hash(study()._recipe_cfg())}))
    study().check_out_folder()  # a stamp of before recipe_hash: the whole config's hash
    with pytest.raises(UserError, match="holds study runs of another recipe"):  # but not at another value
        study(opts=("BYOL.LOSS_SCALE", "mean")).check_out_folder()


def test_a_stamp_from_between_two_added_keys_is_decided_by_the_folder_s_recipe(tmp_path):
    """A study stamped when BYOL.LOSS_SCALE existed but the ONLINE_LINEAR keys did not (a real folder of
    2026-12-04) matches neither hash; its recipe.yaml shows the same recipe, so it is accepted and restamped,
    and a real difference is named key by key."""
    from demo.study import VARIANTS, Plan, Study
    from rimifm.config import config_hash

    def study(opts=()):
        return Study(Plan(config="fmnist_cpu_byol.yaml", seeds=[0], out=tmp_path, results=tmp_path / "r",
                          variants=list(VARIANTS.items()), opts=opts, test="none"))

    then = study().cfg.clone()
    then.defrost()
    del then.ONLINE_LINEAR["VIEWS"], then.ONLINE_LINEAR["BN_IMAGES"]
    (tmp_path / "recipe.yaml").write_text(then.dump())
    then.SEED = 0
    old_stamp = {"config": "/elsewhere/fmnist_cpu_byol.yaml", "config_hash": config_hash(then),
                 "variants": {k: list(v) for k, v in VARIANTS.items()}}
    (tmp_path / "study.json").write_text(json.dumps(old_stamp))
    with pytest.raises(UserError, match=r"another recipe or other overrides \(.*study\.json; "
                                        r"OPTIM\.BASE_LR: 0\.002 there, 0\.01 here\)"):
        study(opts=("OPTIM.BASE_LR", "0.01")).check_out_folder()
    assert json.loads((tmp_path / "study.json").read_text()) == old_stamp  # a refusal writes nothing
    study().check_out_folder()
    assert json.loads((tmp_path / "study.json").read_text())["config_hash"] != old_stamp["config_hash"]
    study().check_out_folder()  # restamped: the fast path now
    then.METHOD = "simsiam"
    (tmp_path / "recipe.yaml").write_text(then.dump())
    (tmp_path / "study.json").write_text(json.dumps(old_stamp))
    with pytest.raises(UserError, match="METHOD: simsiam there, byol here"):
        study().check_out_folder()


def _with_detection(manifest: dict, root: Path, ap50: dict[str, dict[int, float]], se: float = 1.0) -> dict:
    """Fake detection records added to a manifest's rows (AP = AP50 / 2, AP75 = AP50 / 3, bootstrap SE `se`)."""
    for key, values in ap50.items():
        for seed, value in values.items():
            path = root / f"det-{key}-s{seed}.json"
            path.write_text(json.dumps({"metrics": {"AP50": value, "AP": value / 2, "AP75": value / 3},
                                        "metrics_se": {"AP50": se, "AP": se / 2, "AP75": se / 3},
                                        "protocol": "FMNIST-scenes R10-C4 1k", "iterations": 1000}))
            manifest["rows"][key]["runs"][str(seed)]["detection"] = str(path)
    manifest["detection"] = "fmnist_scenes.yaml"
    return manifest


def test_the_transfer_table_tests_ap50_against_base_and_random_init(tmp_path):
    rows = {"base": ("BYOL", "variant", {0: 80.0, 1: 81.0, 2: 79.0}, 100.0),
            "rim": ("BYOL+RIM", "variant", {0: 80.3, 1: 80.8, 2: 79.4}, 101.0),
            "random-init": ("random init", "random-init", {0: 77.0, 1: 77.5, 2: 76.5}, None)}
    manifest = _with_detection(_manifest(tmp_path, [0, 1, 2], rows), tmp_path, {
        "base": {0: 60.0, 1: 62.0, 2: 61.0}, "rim": {0: 60.5, 1: 61.0, 2: 61.8},  # diffs .5 -1 .8: within noise
        "random-init": {0: 40.0, 1: 41.0, 2: 39.5}})  # diffs 20 21 21.5: significant
    text, _, _, _, transfer = build_report(manifest)
    assert "## Detection transfer: fmnist_scenes.yaml" in text and "FMNIST-scenes R10-C4 1k, 1000 iterations" in text
    assert "| BYOL | 80.00 ± 1.00 (n=3) |" in text and "| BYOL | 61.00 ± 1.00 (n=3) | 30.50 ± 0.50 |" in text
    base = next(r for r in transfer if r[0] == "BYOL")
    assert float(base[3]) == pytest.approx(61.0) and float(base[4]) == pytest.approx(1.0) and base[9] == "sd"
    assert float(base[14]) == pytest.approx(20.8333, abs=1e-3) and base[17] == "significant"
    rim = next(r for r in transfer if r[0] == "BYOL+RIM")
    assert float(rim[10]) == pytest.approx(0.1, abs=1e-6) and rim[13] == "within noise"
    assert "BYOL vs random init: AP50 +20.83, p = 4.5e-04: significant, higher than random init." in text
    assert "BYOL+RIM vs BYOL: AP50 +0.10, p = 0.874: within noise." in text
    write_report(manifest, tmp_path / "out")
    assert (tmp_path / "out" / "transfer.csv").is_file()


def test_one_seed_transfer_uses_the_bootstrap_se(tmp_path):
    rows = {"base": ("BYOL", "variant", {0: 80.0}, 50.0), "random-init": ("random init", "random-init", {0: 77.0}, None)}
    manifest = _with_detection(_manifest(tmp_path, [0], rows, test="none"), tmp_path,
                               {"base": {0: 50.0}, "random-init": {0: 45.0}}, se=1.5)
    text, _, _, _, transfer = build_report(manifest)
    base = next(r for r in transfer if r[0] == "BYOL")
    assert base[9] == "SE" and float(base[15]) == pytest.approx(math.hypot(1.5, 1.5), abs=1e-3)
    assert base[17] == "beyond 2 SE"  # 5.0 > 2 x 2.12
    assert "50.00 ± 1.50 (SE)" in text


def test_detection_runs_are_named_after_their_scene_set(tmp_path):
    """A detection step made on other Fashion-MNIST scenes (other sizes, seed or source) is never reused."""
    from demo.study import VARIANTS, Plan, Study

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    study = Study(Plan(config="fmnist_cpu_byol.yaml", seeds=[0], out=tmp_path / "o", results=tmp_path / "r",
                       variants=list(VARIANTS.items()), test="none", detection="fmnist_scenes.yaml",
                       det_opts=("RIMIFM.SCENES_ROOT", str(scenes))))
    assert study.scenes_folder() == scenes and study.scenes_tag() == ""  # not made yet
    (scenes / "meta.json").write_text('{"sizes": {"trainval": 300, "test": 2000}}\n')
    first = study.scenes_tag()
    (scenes / "meta.json").write_text('{"sizes": {"trainval": 500, "test": 500}}\n')
    assert first.startswith("-sc") and study.scenes_tag() not in ("", first)


def test_the_code_and_dates_lines_name_the_commits_and_days_the_steps_ran_at(tmp_path):
    """A study continued later reuses finished steps: the report says which code made which kind of step, and when."""
    from reporting.provenance import code_line, dates_line

    manifest = _manifest(tmp_path, [0], {"base": ("BYOL", "variant", {0: 80.0}, 100.0)}, test="none")
    assert code_line(manifest) == "0.1.0+abc"  # records without a version: the report's only
    paths = manifest["rows"]["base"]["runs"]["0"]
    for kind, version in (("knn", "0.1.0+old"), ("pretrain", "0.1.0+old")):
        rec = json.loads(Path(paths[kind]).read_text())
        Path(paths[kind]).write_text(json.dumps({**rec, "code_version": version}))
    assert code_line(manifest) == "0.1.0+abc (this report); its steps ran at 0.1.0+old (knn, pretrain)"
    assert dates_line(manifest).startswith("not recorded")  # records of before the field
    for kind, day in (("knn", "2026-12-05"), ("pretrain", "2026-12-04")):
        rec = json.loads(Path(paths[kind]).read_text())
        Path(paths[kind]).write_text(json.dumps({**rec, "finished_at": f"{day}T10:00:00+0000"}))
    assert dates_line(manifest).startswith("the dated steps finished 2026-12-04 to 2026-12-05 ")


def test_a_continued_study_keeps_the_calibration_figure_of_every_invocation_that_ran_steps(tmp_path):
    from demo.study import VARIANTS, Plan, Study

    study = Study(Plan(config="fmnist_cpu_byol.yaml", seeds=[0], out=tmp_path, results=tmp_path / "r",
                       variants=list(VARIANTS.items()), test="none", calibration=178.9))
    assert [c["images_per_s"] for c in study.calibrations()] == [178.9]  # a first invocation
    (tmp_path / "manifest.json").write_text(json.dumps({"calibration_images_per_s": 198.0}))  # of before the list
    assert study.calibrations() == [{"images_per_s": 198.0, "date": None}]  # nothing ran: nothing to add
    study.steps.ran = 1
    later = study.calibrations()
    assert [c["images_per_s"] for c in later] == [198.0, 178.9] and later[1]["date"]


def test_rows_keep_their_order_whatever_order_the_manifest_json_keeps(tmp_path):
    """manifest.json is written with sorted keys: a report made from it again lists the rows as the study did."""
    rows = {"base": ("BYOL", "variant", {0: 80.0, 1: 81.0}, 100.0),
            "rim": ("BYOL+RIM", "variant", {0: 80.3, 1: 80.8}, 101.0),
            "ifm": ("BYOL+IFM", "variant", {0: 82.0, 1: 83.1}, 102.0),
            "zz-extra": ("BYOL+X", "variant", {0: 79.0, 1: 79.5}, 100.0),
            "a-extra": ("BYOL+A", "variant", {0: 79.0, 1: 79.5}, 100.0)}
    manifest = _manifest(tmp_path, [0, 1], rows)
    manifest["order"] = list(manifest["rows"])
    manifest["rows"] = dict(sorted(manifest["rows"].items()))  # as json.dump(sort_keys=True) gives them back
    text, table, _, rows_out, _ = build_report(manifest)
    assert [r[0] for r in table[1:]] == ["BYOL", "BYOL+RIM", "BYOL+IFM", "BYOL+X", "BYOL+A"]
    findings = [line.split(" vs ")[0] for line in text.splitlines() if line.startswith("- BYOL+") and " vs " in line]
    assert findings == ["- BYOL+RIM", "- BYOL+IFM", "- BYOL+X", "- BYOL+A"]  # the findings too, and the curves
    assert [r.label for r in rows_out.values()] == ["BYOL", "BYOL+RIM", "BYOL+IFM", "BYOL+X", "BYOL+A"]
