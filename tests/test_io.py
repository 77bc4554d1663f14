import pytest

from rsdetect.io import staged_dir


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "synth"
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as stage:
            (stage / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"  # the previous complete output survives an interrupt
    with staged_dir(out) as stage:
        (stage / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, no stale file from the old run
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging or old folder left behind
