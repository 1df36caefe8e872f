"""A run dir may be a folder the user already had: sslpath only ever removes what it wrote there."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_output
from sslpath.training.rundir import check_can_start, remove_torn_saves


def test_only_sslpaths_own_torn_saves_are_removed(tmp_path):
    run = tmp_path / "existing"
    (run / "notes").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    users = [run / "notes" / ".draft.tmp", run / ".draft.tmp", run / "notes" / ".metrics.json.abcd1234.tmp"]
    for path in users:
        path.write_text("keep")
    ours = [run / ".metrics.json.k3j2h1g0.tmp", run / "checkpoints" / ".last.ckpt.abc123.tmp"]
    for path in ours:
        path.write_bytes(b"partial")

    assert sorted(remove_torn_saves(run)) == sorted(ours)
    assert all(p.read_text() == "keep" for p in users)
    assert not any(p.exists() for p in ours)


def test_the_torn_save_pattern_matches_what_atomic_output_writes(tmp_path, monkeypatch):
    """A real temp file of atomic_output, left by a kill between writing and renaming, is found."""
    import sslpath.core.files as files

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", killed)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # a kill runs no clean-up
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "metrics.json") as f:
        f.write(b"{")
    monkeypatch.undo()
    (leftover,) = tmp_path.iterdir()
    assert remove_torn_saves(tmp_path) == [leftover] and not leftover.exists()


@pytest.mark.parametrize("where", ["root", "home"])
def test_the_root_or_home_folder_is_never_a_run_dir(where):
    run_dir = Path("/") if where == "root" else Path.home()
    with pytest.raises(UserError, match="root or your home folder"):
        check_can_start(run_dir, resuming=False)
