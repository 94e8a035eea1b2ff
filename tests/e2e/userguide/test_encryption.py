"""encryption.rst: encrypted containers, built with a passphrase (from the environment or asked
on a terminal) or an RSA key pair made with ssh-keygen as the guide makes it, and run with the
same. The guide builds as root (`sudo`, then dm-crypt/LUKS2); sifbox encrypts with gocryptfs,
as Apptainer does for unprivileged builds, so every case runs as root and as a user. The
guide's definition bootstraps from the library; here it bootstraps from @lolcow@.
"""

from __future__ import annotations

import pytest

from tests.e2e.apptainer.cases import C, check, console, contains
from tests.e2e.userguide import guide

pytestmark = pytest.mark.integration

EN = "encryption.rst"
DEF = {"@work@/encrypted.def": "Bootstrap: localimage\nFrom: @lolcow@\n\n%runscript\n"
                               '    echo "this is an encrypted container"\n'}  # fmt: skip
OUT = contains("this is an encrypted container")
PASS = {"APPTAINER_ENCRYPTION_PASSPHRASE": "secret-guide-phrase"}


def _keys(sb) -> None:  # type: ignore[no-untyped-def]
    """The guide's key pair: `ssh-keygen -t rsa -m pem` (rsa_pri.pem), and its public key in
    PEM (`ssh-keygen -f ./rsa.pub -e -m pem > rsa_pub.pem`)."""
    guide.as_user(sb, ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "pem", "-N", "", "-f", "rsa"])
    guide.as_user(sb, ["sh", "-c", "ssh-keygen -f ./rsa.pub -e -m pem > rsa_pub.pem && mv rsa rsa_pri.pem"])


def test_passphrase_from_the_environment(request, sb) -> None:  # type: ignore[no-untyped-def]
    """Passphrase encryption: `APPTAINER_ENCRYPTION_PASSPHRASE=... build --encrypt`, then run with
    the variable; without it the run is refused."""
    guide.run(request, sb, C(f"{EN}:Passphrase Encryption[build --encrypt]", "build", "--encrypt",
                             "encrypted.sif", "encrypted.def", env=PASS), guide.files(DEF))  # fmt: skip
    check(sb, C(f"{EN}:Running an encrypted container[run]", out=OUT), sb.run(["run", "encrypted.sif"], env=PASS))
    check(sb, C(f"{EN}:Running an encrypted container[run, no key]", exit=125,
                err=contains("is encrypted and no key was given")), sb.run(["run", "encrypted.sif"]))  # fmt: skip


def test_passphrase_asked(request, sb) -> None:  # type: ignore[no-untyped-def]
    """`build --passphrase` and `run --passphrase` ask for it on the terminal."""
    guide.files(DEF)(sb)
    res = console(sb, ["build", "--passphrase", "encrypted.sif", "encrypted.def"],
                  [("expect", "Enter encryption passphrase:"), ("send", "typed-phrase"),
                   ("expect", "built encrypted.sif")], timeout=240)  # fmt: skip
    check(sb, C(f"{EN}:Passphrase Encryption[build --passphrase]"), res)
    res = console(sb, ["run", "--passphrase", "encrypted.sif"],
                  [("expect", "Enter encryption passphrase:"), ("send", "typed-phrase"),
                   ("expect", "this is an encrypted container")], timeout=120)  # fmt: skip
    check(sb, C(f"{EN}:Running an encrypted container[run --passphrase]"), res)


def test_pem_key_pair(request, sb) -> None:  # type: ignore[no-untyped-def]
    """PEM file encryption: build with `--pem-path=rsa_pub.pem`, run with `--pem-path=rsa_pri.pem`
    (or APPTAINER_ENCRYPTION_PEM_PATH)."""
    guide.files(DEF)(sb)
    _keys(sb)
    guide.run(request, sb, C(f"{EN}:PEM File Encryption[build --pem-path]", "build", "--pem-path=rsa_pub.pem",
                             "encrypted.sif", "encrypted.def"))  # fmt: skip
    check(sb, C(f"{EN}:Running an encrypted container[run --pem-path]", out=OUT),
          sb.run(["run", "--pem-path=rsa_pri.pem", "encrypted.sif"]))  # fmt: skip
    check(sb, C(f"{EN}:Running an encrypted container[APPTAINER_ENCRYPTION_PEM_PATH]", out=OUT),
          sb.run(["run", "encrypted.sif"], env={"APPTAINER_ENCRYPTION_PEM_PATH": "@work@/rsa_pri.pem"}))  # fmt: skip
