"""Where remote.yaml files live, reading and writing them, and the keyservers they name.

* the user's: `remote.yaml` in the configuration directory (`$SIFBOX_CONFIGDIR`,
  `$APPTAINER_CONFIGDIR`, else ~/.sifbox), mode 0600 (it may hold keyserver logins);
* the system's: `remote.yaml` beside the sifbox.conf in use (`/etc/sifbox/remote.yaml`),
  root's to change; without it, Apptainer's built-in default endpoint (`DefaultRemote`,
  cloud.apptainer.org, whose keyserver is https://keys.openpgp.org).

Both are replaced atomically.
"""

from __future__ import annotations

import os
import stat

from sifbox.formats import remoteconf as rc
from sifbox.util.errors import SifboxError, describe_os_error

FILE = "remote.yaml"


def user_path() -> str:
    from sifbox.util.paths import config_dir

    return os.path.join(config_dir(), FILE)


def system_path(sifbox_conf: str | None = None) -> str:
    from sifbox.config.sysconf import DEFAULT_PATH, ENV_VAR

    conf = sifbox_conf or os.environ.get(ENV_VAR) or DEFAULT_PATH
    return os.path.join(os.path.dirname(os.path.abspath(conf)), FILE)


def read(path: str, *, create: bool = False) -> rc.RemoteConfig | None:
    """The configuration in `path`; None when it does not exist (unless `create`: then an empty
    file is made, 0600, as Apptainer's remote commands make the user's)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        if create:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, flags | os.O_CREAT, 0o600)
        else:
            fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SifboxError(f"can't read remote configuration `{path}`: {describe_os_error(err)}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SifboxError(f"can't read remote configuration `{path}`: not a regular file")
            data = f.read(rc.MAX_SIZE + 1)
    except OSError as err:
        raise SifboxError(f"can't read remote configuration `{path}`: {describe_os_error(err)}") from None
    try:
        return rc.parse(data)
    except rc.RemoteConfError as err:
        raise SifboxError(f"can't read remote configuration `{path}`: {err}",
                          hint="fix or remove the file") from None  # fmt: skip


def write(path: str, conf: rc.RemoteConfig, mode: int = 0o600) -> None:
    from sifbox.util.atomic import write_file

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_file(path, rc.dump(conf), mode)
    except OSError as err:
        raise SifboxError(f"can't write remote configuration `{path}`: {describe_os_error(err)}") from None


def system_config(sifbox_conf: str | None = None) -> rc.RemoteConfig:
    found = read(system_path(sifbox_conf))
    return found if found is not None else rc.default_config()


def merged(sifbox_conf: str | None = None, *, create: bool = False, user_file: str | None = None) -> rc.RemoteConfig:
    """The user's configuration (`user_file`, default user_path()) with the system's endpoints
    synced in (what commands use)."""
    from sifbox.util.log import log

    user = read(user_file or user_path(), create=create) or rc.RemoteConfig()
    for name in rc.sync_from(user, system_config(sifbox_conf)):
        log.info("%s defined both globally and individually, using individual", name)
    return user
