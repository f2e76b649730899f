"""A run killed after its last checkpoint was saved but before its adapter was (status: no result.json), then moved,
then resumed. It resumes from the last step's checkpoint, so nothing is trained and nothing saved again; the Trainer
drops the best checkpoint's stale absolute path on resume and re-derives it only at a save, so the run ended with
the last step's weights as its adapter while result.json named an earlier best step."""
import json
import shutil

from safetensors.torch import load_file

from conftest import train_finished_tiny_run
from lorafit import runs


def test_a_moved_run_resumed_at_its_last_step_ends_with_its_best_checkpoint(tmp_path, tiny_roberta, small_agnews,
                                                                           cli, capsys):
    run_dir = train_finished_tiny_run(tmp_path, tiny_roberta, small_agnews)
    capsys.readouterr()
    shutil.rmtree(run_dir / runs.ADAPTER)  # killed while the adapter was written: no adapter, no result.json
    (run_dir / runs.RESULT).unlink()
    checkpoints = run_dir / runs.CHECKPOINTS
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    state_file = checkpoints / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())  # checkpoint-2 the best, by its absolute path at the old place
    state.update(best_global_step=2, best_metric=1.0, best_model_checkpoint=str(checkpoints / "checkpoint-2"))
    state_file.write_text(json.dumps(state))
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "runs", moved)

    config = tmp_path / "tiny.yaml"
    assert cli("train", config, "--output-dir", str(moved)).code == 0
    run_dir = moved / "tiny"
    result = runs.read_json(run_dir / runs.RESULT)
    assert (result["status"], result["resumed_from_step"], result["best_step"]) == ("completed", 4, 2), result
    best = load_file(run_dir / runs.CHECKPOINTS / "checkpoint-2" / runs.ADAPTER_WEIGHTS)
    final = load_file(run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
    assert best.keys() == final.keys() and all(best[k].equal(final[k]) for k in best)
