"""`sifbox sif ...` through the CLI entry point (in process): the
`golden/siftool-cmd/` outputs, the changes new/add/del/setprim make, and the
one-line errors of bad input."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest

from sifbox.cli.main import main
from sifbox.formats.sif import constants as c
from sifbox.formats.sif.image import SifImage

from .sifcorpus import GOLDEN, IMAGES, INPUTS

CMD = GOLDEN / "siftool-cmd"


def image_of(name: str) -> str:
    """Golden test name (OneGroupSignedPGP) -> corpus image path."""
    words, word = [], ""
    for ch in name:
        if ch.isupper() and word and not word.isupper():
            words.append(word)
            word = ""
        word += ch
    words.append(word)
    text = "-".join(w.lower() for w in words).replace("p-g-p", "pgp")
    return str(IMAGES / f"{text}.sif")


def run(capsysbinary, *argv: str) -> tuple[int, bytes, bytes]:
    status = main(list(argv))
    out, err = capsysbinary.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", sorted(p.name for p in (CMD / "Test_command_getHeader").iterdir()))
@pytest.mark.parametrize("sub", ["Header", "List"])
def test_header_and_list(capsysbinary, name: str, sub: str) -> None:
    status, out, err = run(capsysbinary, "sif", sub.lower(), image_of(name))
    folder = CMD / f"Test_command_get{sub}" / name
    assert (status, out, err) == (0, (folder / "out.golden").read_bytes(), (folder / "err.golden").read_bytes())


@pytest.mark.parametrize("name,object_id", [("One", 1), ("Two", 2), ("Three", 3)])
def test_info(capsysbinary, name: str, object_id: int) -> None:
    image = str(IMAGES / "one-group-signed-pgp.sif")
    status, out, err = run(capsysbinary, "sif", "info", str(object_id), image)
    folder = CMD / "Test_command_getInfo" / name
    assert (status, out, err) == (0, (folder / "out.golden").read_bytes(), b"")


@pytest.mark.parametrize("name,object_id", [("One", 1), ("Two", 2)])
def test_dump(capsysbinary, name: str, object_id: int) -> None:
    status, out, err = run(capsysbinary, "sif", "dump", str(object_id), str(IMAGES / "one-group.sif"))
    assert (status, out, err) == (0, (CMD / "Test_command_getDump" / name / "out.golden").read_bytes(), b"")


def test_siftool_alias(capsysbinary) -> None:
    status, out, _ = run(capsysbinary, "siftool", "list", str(IMAGES / "one-group.sif"))
    assert status == 0 and out == (CMD / "Test_command_getList/OneGroup/out.golden").read_bytes()


# -- commands that write --------------------------------------------------------------
INPUT = CMD / "input" / "input.bin"


def test_new_add_setprim_del(capsysbinary, tmp_path: Path) -> None:
    image = str(tmp_path / "test.sif")
    assert run(capsysbinary, "sif", "new", image) == (0, b"", b"")
    img = SifImage.from_bytes(Path(image).read_bytes())
    assert img.header.image_id != bytes(16) and img.header.created_at > 0
    assert img.header.launch_script == bytes(32) and not img.objects()

    # siftool's test cases: a partition, a signature, an OCI root index.
    for flags in (
        ["--datatype", "4", "--parttype", "1", "--partfs", "1", "--partarch", "1"],
        ["--datatype", "5", "--signhash", "1", "--signentity", "433FE984155206BD962725E20E8713472A879943"],
        ["--datatype", "10"],
    ):
        assert run(capsysbinary, "sif", "add", image, str(INPUT), *flags) == (0, b"", b"")
    _, out, _ = run(capsysbinary, "sif", "list", image)
    assert out.decode().splitlines()[3:] == [
        "1    |NONE    |NONE    |32768-32772               |FS (Squashfs/System/386)",
        "2    |NONE    |NONE    |32772-32776               |Signature (SHA-256)",
        "3    |NONE    |NONE    |32776-32780               |OCI.RootIndex",
    ]
    _, out, _ = run(capsysbinary, "sif", "info", "3", image)
    digest = hashlib.sha256(INPUT.read_bytes()).hexdigest()
    assert out.decode().endswith(f"  Digest:       sha256:{digest}\n")

    assert run(capsysbinary, "sif", "setprim", "1", image) == (0, b"", b"")
    img = SifImage.from_bytes(Path(image).read_bytes())
    assert img.primary_partition().id == 1 and img.header.arch_name == "386"

    assert run(capsysbinary, "sif", "del", "1", image) == (0, b"", b"")
    img = SifImage.from_bytes(Path(image).read_bytes())
    assert [d.id for d in img.objects()] == [2, 3] and img.header.arch_name == "unknown"


def test_add_options(capsysbinary, tmp_path: Path) -> None:
    image = str(tmp_path / "opts.sif")
    run(capsysbinary, "sif", "new", "--deterministic", image)
    sbom = str(INPUTS / "sbom.cdx.json")
    assert run(capsysbinary, "sif", "add", image, sbom, "--datatype", "9", "--sbomformat", "cyclonedx-json",
               "--groupid", "2", "--link", "7", "--alignment", "16", "--filename", "sbom.json")[0] == 0
    d = SifImage.from_bytes(Path(image).read_bytes()).get(1)
    assert (d.group_id, d.linked_id, d.offset % 16, d.name, d.sbom_format()) == (2, (7, False), 0, "sbom.json", 1)
    assert d.created_at == c.ZERO_TIME  # a deterministic image stays deterministic


def test_deterministic_new_is_reproducible(capsysbinary, tmp_path: Path) -> None:
    for name in ("a.sif", "b.sif"):
        run(capsysbinary, "sif", "new", "--deterministic", str(tmp_path / name))
    assert (tmp_path / "a.sif").read_bytes() == (IMAGES / "empty.sif").read_bytes()
    assert (tmp_path / "b.sif").read_bytes() == (IMAGES / "empty.sif").read_bytes()


def test_add_from_stdin(capsysbinary, tmp_path: Path, monkeypatch) -> None:
    image = str(tmp_path / "stdin.sif")
    run(capsysbinary, "sif", "new", "--deterministic", image)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"%post\n")))
    assert run(capsysbinary, "sif", "add", image, "-", "--datatype", "1")[0] == 0
    img = SifImage.from_bytes(Path(image).read_bytes())
    assert img.read(img.get(1)) == b"%post\n" and img.get(1).type_name == "Def.FILE"


# -- bad input: one line, documented status, file untouched ---------------------------------
def _copy(tmp_path: Path, name: str = "one-group.sif") -> Path:
    dst = tmp_path / name
    shutil.copy(IMAGES / name, dst)
    return dst


@pytest.mark.parametrize(
    "argv,status,message",
    [
        (["sif", "list", "{missing}"], 255, "can't list `{missing}`: no such file"),
        (["sif", "list", "{dir}"], 255, "can't list `{dir}`: is a directory, not a SIF image"),
        (["sif", "header", "{notsif}"], 255, "can't read the header of `{notsif}`: not a SIF image: the SIF magic is missing"),
        (["sif", "info", "9", "{image}"], 255, "can't show object 9 of `{image}`: object 9 not found"),
        (["sif", "info", "x", "{image}"], 125, "can't run `sifbox sif info`: argument ID: invalid object ID `x`"),
        (["sif", "dump", "1", "{empty}"], 255, "can't dump object 1 of `{empty}`: no objects in image"),
        (["sif", "del", "5", "{image}"], 255, "can't delete object 5 from `{image}`: object 5 not found"),
        (["sif", "setprim", "1", "{empty}"], 255, "can't set object 1 as primary partition of `{empty}`: no objects in image"),
        (["sif", "add", "{image}", "{input}"], 125, "can't add `{input}` to `{image}`: --datatype is required, a number from 1 to 11"),
        (["sif", "add", "{image}", "{input}", "--datatype", "4"], 125, "can't add `{input}` to `{image}`: with partition datatype, --partfs, --parttype and --partarch must be passed"),
        (["sif", "add", "{image}", "{input}", "--datatype", "4", "--partfs", "1", "--parttype", "2", "--partarch", "2"], 255, "can't add `{input}` to `{image}`: image already contains a primary partition"),
        (["sif", "add", "{image}", "{input}", "--datatype", "5", "--signhash", "1", "--signentity", "abc"], 125, "can't add `{input}` to `{image}`: the signing entity `abc` is not a hex fingerprint"),
        (["sif", "add", "{image}", "{input}", "--datatype", "5", "--signhash", "1", "--signentity", "abcd"], 125, "can't add `{input}` to `{image}`: invalid signing entity fingerprint length: got 2, want 20"),
        (["sif", "add", "{image}", "{missing}", "--datatype", "7"], 255, "can't add `{missing}` to `{image}`: no such file or directory"),
        (["sif", "add", "{image}", "{input}", "--datatype", "7", "--filename", "x" * 129], 125, "can't add `{input}` to `{image}`: the name is 129 bytes, at most 128 fit"),
        (["sif", "new", "{dir}"], 255, "can't create `{dir}`: is a directory"),
        (["push", "x.sif", "library://x"], 125, "can't push to `library://x`: library:// pushes are not available in sifbox"),
        (["push", "x.sif", "x.sif"], 125, "can't push to `x.sif`: unsupported URI"),
        (["nonsense"], 125, "can't run `sifbox`: argument COMMAND: invalid choice: 'nonsense'"),
    ],
)
def test_bad_input(capsysbinary, tmp_path: Path, argv: list[str], status: int, message: str) -> None:
    image = _copy(tmp_path)
    empty = _copy(tmp_path, "empty.sif")
    notsif = tmp_path / "not.sif"
    notsif.write_bytes(b"#!/bin/sh\n" * 20)
    names = {"image": image, "empty": empty, "notsif": notsif, "dir": tmp_path,
             "missing": tmp_path / "missing.sif", "input": INPUT}  # fmt: skip
    before = {p: p.read_bytes() for p in (image, empty, notsif)}
    got_status, out, err = run(capsysbinary, *[a.format(**names) for a in argv])
    lines = err.decode().splitlines()
    assert got_status == status
    assert out == b""
    assert lines[0].startswith("sifbox: error: " + message.format(**names)), lines
    assert all(line.startswith("hint: ") for line in lines[1:]) and len(lines) <= 2
    assert "Traceback" not in err.decode()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sif", "not.sif", "one-group.sif"]


def test_debug_shows_traceback(capsysbinary, tmp_path: Path) -> None:
    status, _, err = run(capsysbinary, "--debug", "sif", "list", str(tmp_path / "missing.sif"))
    assert status == 255 and b"Traceback" in err and b"sifbox: error: can't list" in err


def test_truncated_image_is_refused_cleanly(capsysbinary, tmp_path: Path) -> None:
    image = tmp_path / "cut.sif"
    image.write_bytes((IMAGES / "one-group.sif").read_bytes()[:5000])
    status, _, err = run(capsysbinary, "sif", "list", str(image))
    assert status == 255
    assert err.decode().startswith(f"sifbox: error: can't list `{image}`: truncated SIF image")


def test_incompatible_version(capsysbinary, tmp_path: Path) -> None:
    data = bytearray((IMAGES / "empty.sif").read_bytes())
    data[42:45] = b"00\0"
    image = tmp_path / "draft.sif"
    image.write_bytes(bytes(data))
    status, _, err = run(capsysbinary, "sif", "header", str(image))
    assert status == 255 and b"incompatible SIF version `00`" in err


def test_busy_image_is_refused(capsysbinary, tmp_path: Path) -> None:
    import fcntl

    image = _copy(tmp_path)
    before = image.read_bytes()
    with open(image, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process is writing it
        status, _, err = run(capsysbinary, "sif", "list", str(image))
        assert status == 255 and b"is being modified by another process" in err
        status, _, err = run(capsysbinary, "sif", "del", "1", str(image))
        assert status == 255 and b"is in use by another process" in err
    assert image.read_bytes() == before


def test_interrupted_add_leaves_image_unchanged(tmp_path: Path) -> None:
    from sifbox.formats.sif import edit

    image = _copy(tmp_path)
    before = image.read_bytes()

    class Exploding(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            raise KeyboardInterrupt

    with open(image, "r+b") as fp, pytest.raises(KeyboardInterrupt):
        edit.add_object(SifImage.load(fp), edit.ObjectInput(c.DataType.GENERIC, Exploding()))
    assert image.read_bytes() == before


# -- the frame --------------------------------------------------------------------------
def test_version(capsys) -> None:
    from sifbox import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"{__version__}\n"
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"sifbox version {__version__}\n"


def test_help_lists_apptainer_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "sif (siftool)" in capsys.readouterr().out
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    for name in ("build", "exec", "run", "shell", "test", "run-help", "inspect", "pull", "push", "sign",
                 "verify", "key", "instance", "overlay", "sif", "cache", "config", "capability", "oci",
                 "remote", "registry", "version", "help", "doctor", "completion", "store", "sbom"):  # fmt: skip
        assert f"\n    {name} " in out, name
    assert main(["help", "sif", "add"]) == 0
    assert "--datatype" in capsys.readouterr().out


def test_help_of_unknown_command(capsys) -> None:
    assert main(["help", "frobnicate"]) == 125
    assert "unknown command `frobnicate`" in capsys.readouterr().err


def test_completion_bash(capsys, tmp_path: Path) -> None:
    import subprocess

    assert main(["completion", "bash"]) == 0
    script = tmp_path / "sifbox.bash"
    script.write_text(capsys.readouterr().out)
    probe = f"""source {script}
COMP_WORDS=(sifbox si); COMP_CWORD=1; _sifbox; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(sifbox -v sif ""); COMP_CWORD=3; _sifbox; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(sifbox sif add --da); COMP_CWORD=3; _sifbox; echo "${{COMPREPLY[*]}}"
"""
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == ["sign sif siftool", "header list info dump new add del setprim", "--datatype"]


@pytest.mark.parametrize("flag", ["-q", "-s", "-v", "-d", "--nocolor"])
def test_global_flags(capsysbinary, flag: str) -> None:
    status, out, _ = run(capsysbinary, flag, "sif", "list", str(IMAGES / "one-group.sif"))
    assert status == 0 and out == (CMD / "Test_command_getList/OneGroup/out.golden").read_bytes()
