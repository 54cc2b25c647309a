import pytest

from transferlab._io import publish


def test_publish_replaces_a_directory_only_on_success(tmp_path):
    out = tmp_path / "store"
    with publish(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"

    with pytest.raises(RuntimeError), publish(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "a").read_text() == "1"  # the old result survives
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # and no temporary is left

    with publish(out) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]


def test_publish_file(tmp_path):
    out = tmp_path / "sub" / "x.json"
    with publish(out) as tmp:
        tmp.write_text("{}")
    assert out.read_text() == "{}"


def test_code_version_is_dirty_for_code_not_for_what_a_run_writes(tmp_path, monkeypatch):
    import subprocess

    from transferlab._io import code_version

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    clean = code_version()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "dvc.lock").write_text("b\n")  # dvc repro rewrites it while the run goes on
    assert code_version() == clean
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert code_version() == clean + "-dirty"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b""])
def test_an_unreadable_json_file_is_one_error_naming_it(tmp_path, content):
    """Stages read what earlier stages wrote; a truncated or hand-edited file is a DataError
    (one line, exit 1 through run_stage), naming the file."""
    from transferlab._io import read_json
    from transferlab.errors import DataError

    path = tmp_path / "recommended.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"recommended\.json: not valid JSON \(.+\); re-run"):
        read_json(path)
