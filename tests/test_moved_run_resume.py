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
