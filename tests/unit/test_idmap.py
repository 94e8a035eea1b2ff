"""--fakeroot ID maps (pure)."""

from sifbox.runtime import idmap

SUBUID = "alice:100000:65536\n# comment\nbob:165536:1000\n1002:200000:10\nbroken:x:y\n"


def test_subid_range_by_name_and_uid() -> None:
    assert idmap.subid_range(SUBUID, "alice", 1000) == (100000, 65536)
    assert idmap.subid_range(SUBUID, "carol", 1002) == (200000, 10)
    assert idmap.subid_range(SUBUID, "dave", 1003) is None
    assert idmap.subid_range(SUBUID, "broken", 1) is None
    assert idmap.subid_range("zero:5:0\n", "zero", 7) is None


def test_fakeroot_maps() -> None:
    assert idmap.fakeroot_maps(1000, (100000, 65536)) == [(0, 1000, 1), (1, 100000, 65536)]
    assert idmap.fakeroot_maps(1000, None) == [(0, 1000, 1)]


def test_read_subid_missing_file(tmp_path) -> None:
    assert idmap.read_subid(str(tmp_path / "none"), "alice", 1000) is None
    (tmp_path / "subuid").write_text(SUBUID)
    assert idmap.read_subid(str(tmp_path / "subuid"), "bob", 1) == (165536, 1000)
