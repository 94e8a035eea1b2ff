"""remote.yaml, Apptainer's file of remote endpoints, keyservers and logins (pure, no I/O).

    Active: DefaultRemote
    Remotes:
      DefaultRemote:
        URI: cloud.apptainer.org
        System: true
        Exclusive: false
        Keyservers:
        - URI: https://keys.openpgp.org
          Skip: false
          External: false
          Insecure: false
    Credentials:
    - URI: https://keys.example.org
      Auth: Basic dXNlcjpwYXNz
      Insecure: false

Field names are Apptainer's (`internal/pkg/remote`); unknown fields are refused, as its
decoder refuses them, so a file moves both ways. Every scalar is read as a string first
(no YAML 1.1 surprises: a remote named `yes` stays `yes`) and booleans are then checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: remote.yaml read at most.
MAX_SIZE = 1 << 20
#: Endpoints, keyservers per endpoint, logins at most.
MAX_ENTRIES = 1000
DEFAULT_NAME = "DefaultRemote"
#: Apptainer's default endpoint, and the keyserver its cloud configuration names.
DEFAULT_CLOUD = "cloud.apptainer.org"
DEFAULT_KEYSERVER = "https://keys.openpgp.org"
#: Keyservers of endpoints that list none: what the cloud service would answer (sifbox does
#: not ask it; other endpoints without a Keyservers list have no keyserver).
CLOUD_KEYSERVERS = {DEFAULT_CLOUD: DEFAULT_KEYSERVER}


class RemoteConfError(ValueError):
    """remote.yaml can't be read; the message says where and why."""


@dataclass
class ServiceConfig:
    uri: str
    skip: bool = False
    external: bool = False
    insecure: bool = False


@dataclass
class Endpoint:
    uri: str = ""
    token: str = ""
    system: bool = False
    exclusive: bool = False
    keyservers: list[ServiceConfig] = field(default_factory=list)

    def active_keyservers(self) -> list[ServiceConfig]:
        """Its keyservers in order, skipped ones left out (the cloud's when none are listed)."""
        if not self.keyservers and self.uri in CLOUD_KEYSERVERS:
            return [ServiceConfig(CLOUD_KEYSERVERS[self.uri])]
        return [k for k in self.keyservers if not k.skip]


@dataclass
class Credential:
    uri: str
    auth: str = ""
    insecure: bool = False

    def __repr__(self) -> str:  # never print a credential
        return f"Credential({self.uri!r}, insecure={self.insecure})"


@dataclass
class RemoteConfig:
    active: str = ""
    remotes: dict[str, Endpoint] = field(default_factory=dict)
    credentials: list[Credential] = field(default_factory=list)


def default_config() -> RemoteConfig:
    """The system configuration when there is no system remote.yaml (Apptainer's built-in one)."""
    return RemoteConfig(DEFAULT_NAME, {DEFAULT_NAME: Endpoint(DEFAULT_CLOUD, system=True)})


# -- parsing -----------------------------------------------------------------------------------
def _bool(value: Any, where: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", ""):
        return False
    raise RemoteConfError(f"{where}: expected true or false")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RemoteConfError(f"{where}: expected a string")
    if any(not c.isprintable() for c in value):
        raise RemoteConfError(f"{where}: control characters are not allowed")
    return value


def _mapping(value: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise RemoteConfError(f"{where}: expected a mapping")
    for key in value:
        if key not in fields:
            raise RemoteConfError(f"{where}: field `{str(key)[:40]}` not found in type")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise RemoteConfError(f"{where}: expected a list")
    if len(value) > MAX_ENTRIES:
        raise RemoteConfError(f"{where}: more than {MAX_ENTRIES} entries")
    return value


def _service(value: Any, where: str) -> ServiceConfig:
    m = _mapping(value, where, ("URI", "Skip", "External", "Insecure"))
    return ServiceConfig(_str(m.get("URI", ""), f"{where}.URI"), _bool(m.get("Skip", ""), f"{where}.Skip"),
                         _bool(m.get("External", ""), f"{where}.External"),
                         _bool(m.get("Insecure", ""), f"{where}.Insecure"))  # fmt: skip


def _endpoint(value: Any, where: str) -> Endpoint:
    m = _mapping(value, where, ("URI", "Token", "System", "Exclusive", "Keyservers"))
    ks = [_service(v, f"{where}.Keyservers[{i}]") for i, v in enumerate(_list(m.get("Keyservers"), f"{where}.Keyservers"))]
    return Endpoint(_str(m.get("URI", ""), f"{where}.URI"), _str(m.get("Token", ""), f"{where}.Token"),
                    _bool(m.get("System", ""), f"{where}.System"), _bool(m.get("Exclusive", ""), f"{where}.Exclusive"),
                    ks)  # fmt: skip


def parse(data: bytes) -> RemoteConfig:
    """A remote.yaml's contents (empty: no endpoints)."""
    import yaml  # type: ignore[import-untyped]

    if len(data) > MAX_SIZE:
        raise RemoteConfError(f"larger than {MAX_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteConfError("not UTF-8 text") from None
    try:
        doc = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or "not YAML"
        raise RemoteConfError(f"not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise RemoteConfError("nested too deeply") from None
    except TypeError:  # a mapping key that is itself a list or mapping
        raise RemoteConfError("a mapping key must be a string") from None
    top = _mapping(doc, "remote.yaml", ("Active", "Remotes", "Credentials"))
    conf = RemoteConfig(_str(top.get("Active", ""), "Active"))
    remotes = top.get("Remotes")
    if remotes is None or remotes == "":
        remotes = {}
    if not isinstance(remotes, dict):
        raise RemoteConfError("Remotes: expected a mapping")
    if len(remotes) > MAX_ENTRIES:
        raise RemoteConfError(f"Remotes: more than {MAX_ENTRIES} entries")
    for name, value in remotes.items():
        check_name(_str(name, "Remotes"))
        conf.remotes[name] = _endpoint(value, f"Remotes.{name}")
    for i, value in enumerate(_list(top.get("Credentials"), "Credentials")):
        m = _mapping(value, f"Credentials[{i}]", ("URI", "Auth", "Insecure"))
        conf.credentials.append(Credential(_str(m.get("URI", ""), f"Credentials[{i}].URI"),
                                           _str(m.get("Auth", ""), f"Credentials[{i}].Auth"),
                                           _bool(m.get("Insecure", ""), f"Credentials[{i}].Insecure")))  # fmt: skip
    return conf


def check_name(name: str) -> str:
    """An endpoint name: printable, no blanks or slashes, at most 128 characters."""
    if not name or len(name) > 128 or any(c.isspace() or c in "/\\:" or not c.isprintable() for c in name):
        raise RemoteConfError(f"invalid remote name `{name[:128]}`: use letters, digits, `-`, `_` or `.`")
    return name


# -- writing -----------------------------------------------------------------------------------
def dump(conf: RemoteConfig) -> bytes:
    """remote.yaml for `conf`, fields in Apptainer's order, endpoints sorted by name."""
    import yaml

    remotes: dict[str, Any] = {}
    for name in sorted(conf.remotes):
        ep = conf.remotes[name]
        e: dict[str, Any] = {}
        if ep.uri:
            e["URI"] = ep.uri
        if ep.token:
            e["Token"] = ep.token
        e["System"] = ep.system
        e["Exclusive"] = ep.exclusive
        if ep.keyservers:
            e["Keyservers"] = [{"URI": k.uri, "Skip": k.skip, "External": k.external, "Insecure": k.insecure}
                               for k in ep.keyservers]  # fmt: skip
        remotes[name] = e
    doc: dict[str, Any] = {"Active": conf.active, "Remotes": remotes}
    if conf.credentials:
        doc["Credentials"] = [{"URI": c.uri, **({"Auth": c.auth} if c.auth else {}), "Insecure": c.insecure}
                              for c in conf.credentials]  # fmt: skip
    text: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.encode("utf-8")


# -- changes (Apptainer's rules) ---------------------------------------------------------------
def sync_from(user: RemoteConfig, system: RemoteConfig) -> list[str]:
    """Bring the system's endpoints into the user's configuration (Apptainer's SyncFrom);
    returns the names defined both ways (the user's one is used)."""
    both = []
    for name, sys_ep in system.remotes.items():
        mine = user.remotes.get(name)
        if mine is not None and not mine.system:
            both.append(name)
            continue
        if sys_ep.exclusive:
            user.active = name
        if mine is not None:
            mine.uri, mine.exclusive, mine.keyservers = sys_ep.uri, sys_ep.exclusive, sys_ep.keyservers
            continue
        user.remotes[name] = Endpoint(sys_ep.uri, system=True, exclusive=sys_ep.exclusive, keyservers=sys_ep.keyservers)
    if not user.active and system.active:
        user.active = system.active
    return both


def add_keyserver(ep: Endpoint, uri: str, order: int, insecure: bool, same: Any) -> None:
    """Insert keyserver `uri` at position `order` (1-based; 0: last), as Apptainer's AddKeyserver;
    `same(a, b)` tells whether two URIs name the same keyserver. Raises RemoteConfError."""
    if not ep.keyservers:
        ep.keyservers = ep.active_keyservers()
    match = next((i for i, k in enumerate(ep.keyservers) if same(k.uri, uri)), -1)
    top = 1 + sum(1 for k in ep.keyservers if not k.skip)
    if order == 0:
        order = top
    elif order > top:
        raise RemoteConfError(f"order is out of range: maximum is {top}")
    if match >= 0:
        kc = ep.keyservers[match]
        if kc.external or not kc.skip:
            raise RemoteConfError(f"{uri} is already configured")
        kc.skip = False
        del ep.keyservers[match]
    else:
        kc = ServiceConfig(uri, external=True, insecure=insecure)
    ep.keyservers.insert(order - 1, kc)


def remove_keyserver(ep: Endpoint, uri: str, same: Any) -> None:
    if not ep.keyservers:
        ep.keyservers = ep.active_keyservers()
    total = sum(1 for k in ep.keyservers if not k.skip)
    for i, k in enumerate(ep.keyservers):
        if same(k.uri, uri) and not k.skip:
            if total == 1:
                raise RemoteConfError(f"the primary keyserver {uri} can't be removed")
            if k.external:
                del ep.keyservers[i]
            else:
                k.skip = True
            return
    raise RemoteConfError(f"keyserver {uri} is not configured")
