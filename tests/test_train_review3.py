"""Third review of lorafit.train: an interrupted run with train.save_total_limit 1 lost the checkpoint its
result.json named; a checkpoint resumed without a word on a training, validation or unlabelled file edited since,
or with a teacher retrained since.

In-process runs of the tiny RoBERTa (4 steps, evaluation and checkpoint every 2); the interruption is a signal sent
by a callback at a fixed step, never raced against a timer."""

from __future__ import annotations

from safetensors.torch import load_file, save_file

from conftest import one_line_error, signal_at_step, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


def _self_training_config(tmp_path, tiny_roberta, train_file, unlabelled, teacher_dir):
    """tmp_path/self.yaml: the 4-step tiny run with every row of `unlabelled` pseudo-labelled by teacher_dir."""
    return tiny_run_config(tmp_path, train_file, model=tiny_roberta, name="self", report_to="none",
                           data={"unlabelled_file": str(unlabelled), "pseudo_label_teacher": str(teacher_dir),
                                 "pseudo_label_threshold": 0.01})


def test_an_interrupted_run_keeps_its_checkpoint_under_save_total_limit_1(tmp_path, tiny_roberta, small_agnews):
    """Ctrl-C during step 3 with train.save_total_limit 1: the checkpoint of step 3 was saved, then deleted as
    training ended (the Trainer keeps only the best checkpoint, step 2's), yet result.json said resume_from
    checkpoints/checkpoint-3; the rerun resumed from step 2 and trained step 3 again."""
    cfg = load_config(tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, save_total_limit=1))
    result = run_training(cfg, extra_callbacks=[signal_at_step(2)])
    assert (result["status"], result["global_step"]) == ("interrupted", 3), result
    assert (cfg.run_dir / result["resume_from"]).is_dir(), result["resume_from"]

    resumed = run_training(cfg)
    assert (resumed["status"], resumed["resumed_from_step"], resumed["global_step"]) == ("completed", 3, 4)
    assert len(list((cfg.run_dir / runs.CHECKPOINTS).glob("checkpoint-*"))) == 1  # the limit holds once finished


def test_a_checkpoint_is_not_resumed_on_other_data(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """The training file was edited after a run was interrupted (the config names the file, not its rows): the same
    command resumed the checkpoint on the new rows without a word, and the manifest then gave the new rows'
    fingerprint for a run whose first steps trained on others. Now one line; the run folder resumes once the file
    is put back."""
    data = tmp_path / "train.csv"
    data.write_bytes(small_agnews.read_bytes())
    config = tiny_run_config(tmp_path, data, model=tiny_roberta)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2), result
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "tiny"
    manifest = runs.read_json(run_dir / runs.MANIFEST)

    lines = small_agnews.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:-50]))  # 50 rows fewer: other training and validation rows
    one_line_error(cli("train", config), "checkpoint-2", "training rows", str(data), "--overwrite")
    assert runs.read_json(run_dir / runs.MANIFEST)["data"] == manifest["data"]

    data.write_bytes(small_agnews.read_bytes())
    assert cli("train", config).code == 0
    assert runs.read_json(run_dir / runs.RESULT)["resumed_from_step"] == 2


def test_a_self_training_run_resumes_and_compares_its_labelled_rows(tmp_path, tiny_roberta, small_agnews,
                                                                    finished_tiny, cli, capsys):
    """With pseudo-labelled rows the manifest's training fingerprint covers them too: a resume compares the labelled
    rows' (data.labelled_train_fingerprint), so it resumes as before, and an edited training file is refused."""
    data = tmp_path / "train.csv"
    data.write_bytes(small_agnews.read_bytes())
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text\n" + "".join(f"news item number {i} about markets\n" for i in range(12)))
    config = _self_training_config(tmp_path, tiny_roberta, data, unlabelled, finished_tiny)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"], result["train_rows"]) == ("interrupted", 2, 64 + 12), result
    capsys.readouterr()

    data.write_text("".join(small_agnews.read_text().splitlines(keepends=True)[:-50]))
    one_line_error(cli("train", config), "checkpoint-2", "training rows", str(data))
    data.write_bytes(small_agnews.read_bytes())
    assert cli("train", config).code == 0
    result = runs.read_json(tmp_path / "runs" / "self" / runs.RESULT)
    assert (result["status"], result["resumed_from_step"], result["train_rows"]) == ("completed", 2, 64 + 12)


def test_a_self_training_run_is_not_resumed_on_other_unlabelled_rows(tmp_path, tiny_roberta, small_agnews,
                                                                     finished_tiny, cli, capsys):
    """data.unlabelled_file was edited after the run was interrupted: the resume labelled the new rows, trained on
    them from the checkpoint on and rewrote the manifest for them, with exit 0 (only the labelled rows were
    compared). Now one line naming the file; the run resumes once the file is put back."""
    unlabelled = tmp_path / "unlabelled.csv"
    original = "text\n" + "".join(f"news item number {i} about markets\n" for i in range(12))
    unlabelled.write_text(original)
    config = _self_training_config(tmp_path, tiny_roberta, small_agnews, unlabelled, finished_tiny)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"], result["train_rows"]) == ("interrupted", 2, 64 + 12), result
    capsys.readouterr()
    manifest = runs.read_json(tmp_path / "runs" / "self" / runs.MANIFEST)

    unlabelled.write_text(original + "one more story about football\n")
    one_line_error(cli("train", config), "checkpoint-2", "unlabelled rows", str(unlabelled), "--overwrite")
    assert runs.read_json(tmp_path / "runs" / "self" / runs.MANIFEST) == manifest

    unlabelled.write_text(original)
    assert cli("train", config).code == 0
    result = runs.read_json(tmp_path / "runs" / "self" / runs.RESULT)
    assert (result["status"], result["resumed_from_step"], result["train_rows"]) == ("completed", 2, 64 + 12)


def test_a_run_is_not_resumed_with_a_teacher_retrained_since(tmp_path, tiny_roberta, small_agnews, finished_copy,
                                                             cli, capsys):
    """The distillation teacher's adapter changed after the student was interrupted (retrained with --overwrite):
    the resume predicted again with the new weights, trained the last steps toward other targets, and named the
    new teacher in the manifest of a run whose first steps learned from the old one. Now one line naming the
    teacher; the run resumes once its weights are put back."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta,
                             teacher=str(finished_copy), distill_weight=0.5)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2), result
    capsys.readouterr()

    weights = finished_copy / runs.ADAPTER / runs.ADAPTER_WEIGHTS
    saved = weights.read_bytes()
    tensors = load_file(weights)
    save_file({name: t * 1.5 for name, t in tensors.items()}, weights)
    one_line_error(cli("train", config), "checkpoint-2", "teacher", str(finished_copy), "--overwrite")

    weights.write_bytes(saved)
    assert cli("train", config).code == 0
    assert runs.read_json(tmp_path / "runs" / "tiny" / runs.RESULT)["resumed_from_step"] == 2


def test_a_damaged_teacher_list_still_compares_the_data(tmp_path, tiny_roberta, small_agnews, finished_tiny, cli,
                                                        capsys):
    """A hand-damaged `pseudo_labels.teachers` in the manifest made the resume skip every comparison, the data's
    fingerprints included: an edited unlabelled file resumed with exit 0. Only the teachers' comparison is skipped
    now."""
    unlabelled = tmp_path / "unlabelled.csv"
    original = "text\n" + "".join(f"news item number {i} about markets\n" for i in range(12))
    unlabelled.write_text(original)
    config = _self_training_config(tmp_path, tiny_roberta, small_agnews, unlabelled, finished_tiny)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2), result
    capsys.readouterr()
    manifest_path = tmp_path / "runs" / "self" / runs.MANIFEST
    manifest = runs.read_json(manifest_path)
    manifest["pseudo_labels"]["teachers"] = "damaged"
    runs.atomic_write_json(manifest_path, manifest)

    unlabelled.write_text(original + "one more story about football\n")
    one_line_error(cli("train", config), "checkpoint-2", "unlabelled rows", str(unlabelled))
