"""The container's environment, with Apptainer's precedence (pure).

Lowest to highest: the host environment (unless --cleanenv), the image's
`/.singularity.d/env/*.sh` scripts (sourced inside, in order), then the
user's overrides: `SINGULARITYENV_*` < `APPTAINERENV_*` < `SIFBOXENV_*`
< `--env-file` < `--env`, and `PREPEND_PATH` / `APPEND_PATH`.
"""

from __future__ import annotations

import os

from sifbox.formats import appenv

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_PATH_EDITS = ("PREPEND_PATH", "APPEND_PATH")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIBS = "/.singularity.d/libs"
ENV_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_", "SIFBOXENV_")  # lowest first
#: Host variables that never pass into the container as they are.
NOT_PASSED = frozenset({"PATH", "LD_LIBRARY_PATH", "PS1", "PROMPT_COMMAND", "BASH_ENV", "ENV"})
#: What --cleanenv keeps.
CLEANENV_KEEP = ("TERM", "LANG", "LC_ALL", "TZ")
OVERRIDES_VAR = "SIFBOX_ENV_OVERRIDES"


def parse_env_file(text: str, where: str) -> dict[str, str]:
    """KEY=VALUE lines (`export` allowed, # comments, optional quotes)."""
    from sifbox.util.errors import UsageError

    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not _is_name(key):
            raise UsageError(f"can't read env file `{where}`: line {n} is not KEY=VALUE")
        try:
            parts = __import__("shlex").split(value) if value else [""]
        except ValueError as err:
            raise UsageError(f"can't read env file `{where}`: line {n}: {err}") from None
        out[key] = " ".join(parts)
    return out


def parse_env_option(items: list[str]) -> dict[str, str]:
    from sifbox.util.errors import UsageError

    out: dict[str, str] = {}
    for item in items:
        for pair in _split_commas(item):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"can't use --env `{pair}`: expected KEY=VALUE")
            out[key] = value
    return out


def _split_commas(text: str) -> list[str]:
    """`A=1,B=2` -> two items, but `A=1,2` (no `=` after the comma) stays one."""
    items: list[str] = []
    for piece in text.split(","):
        if items and "=" not in piece:
            items[-1] += "," + piece
        else:
            items.append(piece)
    return items


def user_overrides(host_env: Mapping[str, str], env_files: dict[str, str], env_opts: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix in ENV_PREFIXES:
        for key, value in host_env.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                out[key[len(prefix):]] = value
    out.update(env_files)
    out.update(env_opts)
    return out


def container_env(
    host_env: Mapping[str, str],
    *,
    cleanenv: bool,
    image: str,
    home: str,
    overrides: Mapping[str, str],
    shell_prompt: str | None = None,
    action: str | None = None,
) -> dict[str, str]:
    """The environment the container process starts with (before the image's
    env scripts run), with the user's overrides carried in OVERRIDES_VAR."""
    if cleanenv:
        env = {k: host_env[k] for k in CLEANENV_KEEP if k in host_env}
    else:
        env = {k: v for k, v in host_env.items() if k not in NOT_PASSED and not k.startswith(ENV_PREFIXES)}
    name = os.path.basename(image)
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        env[f"{prefix}_CONTAINER"] = image
        env[f"{prefix}_NAME"] = name
        env[f"{prefix}_ENVIRONMENT"] = "/.singularity.d/env/91-environment.sh"
        if action:
            env[f"{prefix}_COMMAND"] = action
    env["PATH"] = DEFAULT_PATH
    env["LD_LIBRARY_PATH"] = LIBS
    env["HOME"] = home
    if shell_prompt:
        env["PS1"] = shell_prompt
    env[OVERRIDES_VAR] = overrides_script(overrides)
    return env


def _ordered(overrides: Mapping[str, str]) -> list[tuple[str, str]]:
    """Plain variables first, then PREPEND_PATH / APPEND_PATH (they edit the
    final PATH, whatever set it); names a shell can't export are skipped."""
    plain = [(k, v) for k, v in overrides.items() if k not in _PATH_EDITS and _is_name(k)]
    return plain + [(k, overrides[k]) for k in _PATH_EDITS if k in overrides]


def overrides_script(overrides: Mapping[str, str]) -> str:
    """Shell lines applied after the image's env scripts."""
    lines = []
    for key, value in _ordered(overrides):
        if key == "PREPEND_PATH":
            lines.append(f'export PATH={_quote(value)}:"$PATH"')
        elif key == "APPEND_PATH":
            lines.append(f'export PATH="$PATH":{_quote(value)}')
        else:
            lines.append(f"export {key}={_quote(value)}")
    return "\n".join(lines)


def apply_overrides_directly(env: dict[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """For images without /bin/sh: apply overrides without a shell."""
    env = dict(env)
    env.pop(OVERRIDES_VAR, None)
    for key, value in _ordered(overrides):
        if key == "PREPEND_PATH":
            env["PATH"] = f"{value}:{env.get('PATH', '')}"
        elif key == "APPEND_PATH":
            env["PATH"] = f"{env.get('PATH', '')}:{value}"
        else:
            env[key] = value
    return env


#: Run inside the container by /bin/sh: source the image's environment (with --app, the app's
#: too: SIFBOX_APPNAME/APPTAINER_APPNAME/SINGULARITY_APPNAME are set), apply the user's
#: overrides, then run the action ($1) with the arguments. run/test/start are the text of
#: the image's own actions (sifbox.formats.appenv), so both say and do the same.
PRELUDE = (
    r"""
for __sifbox_f in /.singularity.d/env/*.sh; do
    [ -r "$__sifbox_f" ] && . "$__sifbox_f"
done
unset __sifbox_f
"""
    + appenv.APP_ENV_FALLBACK_SH
    + r"""eval "$SIFBOX_ENV_OVERRIDES"
unset SIFBOX_ENV_OVERRIDES
__sifbox_action=$1
shift
case $__sifbox_action in
exec)
    if ! __sifbox_found=$(command -v "$1" 2>&1); then  # no /dev/null needed (--no-mount dev)
        echo "sifbox: error: can't run \`$1\` in the container: command not found" >&2
        exit 127
    fi
    unset __sifbox_action __sifbox_found
    exec "$@" ;;
run)
"""
    + appenv.RUN_SH
    + ";;\ntest)\n"
    + appenv.TEST_SH
    + ";;\nstart)\n"
    + appenv.START_SH
    + r""";;
shell)
    __sifbox_shell=$1
    shift
    if [ -n "$__sifbox_shell" ]; then
        exec "$__sifbox_shell" "$@"
    elif [ -x /bin/bash ]; then
        exec /bin/bash --norc "$@"
    fi
    exec /bin/sh "$@" ;;
esac
"""
)


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@%+=:,./-_")


def _is_name(key: str) -> bool:
    """A name the shell can export ([A-Za-z_][A-Za-z0-9_]*), without importing re."""
    return bool(key) and key[0] in _NAME_START and all(ch in _NAME_CHARS for ch in key)


def _quote(value: str) -> str:
    """A shell word for `value` (as shlex.quote, without importing re for it)."""
    if value and all(ch in _SAFE for ch in value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"
