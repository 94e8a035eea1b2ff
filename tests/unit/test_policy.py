"""The pure decision of the site image policy (sifbox.security.policy)."""

from __future__ import annotations

import pytest

from sifbox.config import sysconf
from sifbox.security import policy
from sifbox.security.policy import KINDS, REASONS, Limits, decide, within

ALL = frozenset(KINDS)


@pytest.mark.parametrize(
    ("path", "directory", "expected"),
    [
        ("/scratch/a.sif", "/scratch", True),
        ("/scratch", "/scratch", True),
        ("/scratch/", "/scratch/", True),
        ("/scratch/sub/a.sif", "/scratch/", True),
        ("/scratch2/a.sif", "/scratch", False),
        ("/scratch2", "/scratch", False),
        ("/scratc/a.sif", "/scratch", False),
        ("/a.sif", "/", True),
        ("/other/scratch/a.sif", "/scratch", False),
    ],
)
def test_within_matches_whole_components(path: str, directory: str, expected: bool) -> None:
    assert within(path, directory) is expected


def test_no_limits_admit_everything() -> None:
    assert decide("/anywhere/x.sif", 5, 5, "sif", Limits((), frozenset(), frozenset(), ALL)) is None


def test_path_limit() -> None:
    lim = Limits(("/scratch", "/data/images"), frozenset(), frozenset(), ALL)
    assert decide("/scratch/u/x.sif", 1, 1, "sif", lim) is None
    assert decide("/data/images/x.sif", 1, 1, "sif", lim) is None
    assert decide("/scratch2/x.sif", 1, 1, "sif", lim) == REASONS["path"]
    assert decide("", 1, 1, "sif", lim) == REASONS["path"]  # deleted file: nowhere


def test_owner_and_group_limits_add_up() -> None:
    lim = Limits((), frozenset({0, 7}), frozenset({100}), ALL)
    assert decide("/x.sif", 7, 100, "sif", lim) is None
    assert decide("/x.sif", 8, 100, "sif", lim) == REASONS["owner"]
    assert decide("/x.sif", 0, 5, "sif", lim) == REASONS["group"]


def test_kind_limit() -> None:
    lim = Limits((), frozenset(), frozenset(), ALL - {"dir"})
    assert decide("/d", 0, 0, "dir", lim) == "image type dir is not allowed by the configuration"
    assert decide("/x.sif", 0, 0, "sif", lim) is None


def test_active_is_false_for_defaults_and_true_for_any_limit() -> None:
    assert not policy.active(sysconf.defaults())
    for text in (
        "limit container paths = /scratch",
        "limit container owners = root",
        "limit container groups = root",
        "allow container squashfs = no",
        "limit container store = yes",
    ):
        assert policy.active(sysconf.parse(text)), text


def test_limits_from_config_resolve_names_and_store_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    cfg = sysconf.parse(
        f"limit container paths = {tmp_path}/link\nlimit container owners = root, 4242, nosuchuser\n"
        f"limit container store = yes\nstore path = {tmp_path}/store\n"
    )
    lim = policy.limits_from_config(cfg, "alice")
    assert lim.paths == (str(real), f"{tmp_path}/store/alice")
    assert lim.owners == frozenset({0, 4242})
    assert lim.kinds == ALL


def test_the_launch_path_sees_the_same_limits_without_importing_policy() -> None:
    from sifbox.security.admission import limits_configured as policy_configured

    texts = ["", "mount home = no", "limit container paths = /a", "limit container owners = x",
             "limit container groups = y", "limit container store = yes",
             *(f"allow container {k} = no" for k in KINDS)]  # fmt: skip
    for text in texts:
        cfg = sysconf.parse(text)
        assert policy_configured(cfg) == policy.active(cfg), text
