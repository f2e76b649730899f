"""--overwrite in a shared run folder where one file is another user's: one line, and the folder stays a run's."""
import errno
import shutil

import pytest

from lorafit import runs
from lorafit.errors import UserError


def test_a_file_overwrite_may_not_remove_is_one_line_and_the_run_stays_a_run(tmp_path, monkeypatch):
    """It was a raw PermissionError traceback from shutil.rmtree. Root ignores permission bits, so the refusal is
    made by the file system call itself, as a read-only or foreign-owned subfolder makes it for a user."""
    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "test.json").write_text("{}")
    (run / "config.yaml").write_text("name: run\n")
    (run / "result.json").write_text("{}")
    blocked = run / "evaluation" / "test.json"

    def rmtree(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(blocked))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(UserError) as caught:
        runs.clear_run_dir(run)
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot remove {blocked}" in message and "Permission denied" in message and "--name" in message
    assert (run / "config.yaml").exists()  # the run's marks go last: still a run folder a later --overwrite takes
    runs.check_is_run_folder(run)
