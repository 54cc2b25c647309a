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
