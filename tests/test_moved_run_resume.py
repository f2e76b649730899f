"""A run folder moved (or its --output-dir typed another way) and then resumed: the folder is the run, wherever it
lies, so where it lay is no part of the config a resume must match."""
import shutil

from conftest import signal_at_step, tiny_run_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.train import run_training


def test_a_moved_interrupted_run_resumes_from_its_new_place(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    """It was refused as 'a different config (output_dir: ... there, ... here); use another --name, or --overwrite to
    replace it': the fix offered deleted the checkpoint the user moved to keep."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    result = run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    assert (result["status"], result["global_step"]) == ("interrupted", 2)
    capsys.readouterr()
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "runs", moved)

    result = cli("train", config, "--output-dir", str(moved))
    assert result.code == 0, result.err
    run_dir = moved / "tiny"
    finished = runs.read_json(run_dir / runs.RESULT)
    assert (finished["status"], finished["resumed_from_step"], finished["global_step"]) == ("completed", 2, 4)
    assert load_config(run_dir / runs.CONFIG).output_dir == str(moved)  # the config now says where it is
    assert not (tmp_path / "runs").exists()
    assert runs.check_run_folder(run_dir, runs.INFERENCE).path == run_dir  # the manifest's checksum names it too
    assert cli("evaluate", run_dir, "--data", small_agnews).code == 0


def test_another_setting_is_still_refused_and_says_what_differs(tmp_path, tiny_roberta, small_agnews, cli, capsys):
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    capsys.readouterr()
    result = cli("train", config, "--train.learning_rate", "0.002")
    assert result.code == 2 and "train.learning_rate: 0.001 there, 0.002 here" in result.err
    assert "output_dir" not in result.err


def test_a_moved_run_ends_with_its_best_checkpoint_from_before_the_move(tmp_path, tiny_roberta, small_agnews, cli,
                                                                        capsys):
    """The Trainer records the best checkpoint by absolute path, which a move makes stale (it drops that path on
    resume, and finds the best again by its step at the next save): the finished adapter must still be the best
    checkpoint's. Checkpoint-2 is made the best by its recorded metric (1.0: no later evaluation beats it)."""
    from safetensors.torch import load_file

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    run_training(load_config(config), extra_callbacks=[signal_at_step(1)])
    capsys.readouterr()
    state_file = tmp_path / "runs" / "tiny" / runs.CHECKPOINTS / "checkpoint-2" / "trainer_state.json"
    state = runs.read_json(state_file)
    assert state["best_model_checkpoint"].startswith(str(tmp_path / "runs"))  # absolute: the old place
    state["best_metric"] = 1.0
    state_file.write_text(runs.json.dumps(state))
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "runs", moved)

    assert cli("train", config, "--output-dir", str(moved)).code == 0
    run_dir = moved / "tiny"
    best = load_file(run_dir / runs.CHECKPOINTS / "checkpoint-2" / runs.ADAPTER_WEIGHTS)
    final = load_file(run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
    assert best.keys() == final.keys() and all(best[k].equal(final[k]) for k in best)
