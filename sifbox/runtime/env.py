"""The container's environment, built as Apptainer builds it (pure).

The image's environment scripts (`/.singularity.d/env/*.sh`, sourced by PRELUDE in the
image's /bin/sh) do not see the host's environment: they start from HOME, PATH and the
container's own variables (SIFBOX_/APPTAINER_/SINGULARITY_ CONTAINER, NAME, APPNAME).
What the host passes in is restored after them, for the variables they left unset (an empty
one is unset then), so an image's values (%environment, a Docker `ENV`) win over the
host's. The host passes everything but its sifbox/Apptainer settings (SIFBOX_*,
APPTAINER_*, SINGULARITY_*), PATH, LD_LIBRARY_PATH, a few shell variables, and the names of
--no-env; with --cleanenv only TERM and the proxy variables, and LANG=C.

The user's values, `SINGULARITYENV_*` < `APPTAINERENV_*` < `SIFBOXENV_*` < --env-file <
--env, are applied right after the image's 99-base.sh (after the last script when there is
none), evaluated by the shell as Apptainer evaluates them, in double quotes: `$VAR` and
`$(cmd)` expand in the container, `\\$` stays a literal `$`; --no-eval keeps them as they
are. HOME and the runtime's own variables can't be set that way; a user's LD_LIBRARY_PATH
keeps the libs directory at its end. Then come PATH, PREPEND_PATH and APPEND_PATH, and
PREPEND_/APPEND_LD_LIBRARY_PATH. sifbox's own additions (MPI defaults, device variables)
are applied with them, never evaluated.
"""

from __future__ import annotations

from sifbox.formats import appenv

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIBS = "/.singularity.d/libs"
ENV_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_", "SIFBOXENV_")  # lowest first
#: The prefixes of sifbox's and Apptainer's own settings: never passed into the container.
FLAG_PREFIXES = ("SIFBOX_", "APPTAINER_", "SINGULARITY_")
#: The prefixes of the variables the runtime sets in the container.
RUNTIME_PREFIXES = ("SIFBOX", "APPTAINER", "SINGULARITY")
#: Host variables that never pass into the container as they are.
NOT_PASSED = frozenset({"PATH", "LD_LIBRARY_PATH", "HOME", "PWD", "PS1", "PROMPT_COMMAND", "BASH_ENV", "ENV"})
#: What --cleanenv keeps of the host (Apptainer's "always pass" variables).
CLEANENV_KEEP = frozenset({
    "TERM", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
    "all_proxy", "ALL_PROXY", "ftp_proxy", "FTP_PROXY",
})  # fmt: skip
#: What the user's values may not set (Apptainer: "not permitted").
REFUSED = frozenset({"HOME"} | {f"{p}_{k}" for p in RUNTIME_PREFIXES for k in ("SHELL", "APPNAME")})
#: Shell variables that are read-only in some /bin/sh (bash): setting one would end the shell.
READONLY = frozenset({"UID", "GID", "EUID", "PPID", "BASHOPTS", "BASH_VERSINFO", "SHELLOPTS"})
#: The user's path edits: applied after everything else, in this order.
PATH_EDITS = ("PATH", "PREPEND_PATH", "APPEND_PATH", "PREPEND_LD_LIBRARY_PATH", "APPEND_LD_LIBRARY_PATH")

OVERRIDES_VAR = "SIFBOX_ENV_OVERRIDES"
#: Shell code PRELUDE runs first: which host variables to restore, the caller's ids, the
#: machine when something is bound into LIBS.
CONTROL_VAR = "__SIFBOX_CTL"
#: The host's values travel under this prefix, out of the image scripts' sight.
HOST_PREFIX = "__sifbox_h_"
_OURS = ("__sifbox", "__SIFBOX", OVERRIDES_VAR)
_NOT_FORWARDED = FLAG_PREFIXES + ENV_PREFIXES + _OURS
#: Multiarch triplets (Debian's library directories) of the machines sifbox runs on.
TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu",
            "s390x": "s390x-linux-gnu", "riscv64": "riscv64-linux-gnu"}  # fmt: skip


def parse_env_file(text: str, where: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables an --env-file sets (see runtime.envfile; `env`: the host's)."""
    from sifbox.runtime import envfile

    return envfile.evaluate(text, where, env or {})


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


def user_overrides(host_env: Mapping[str, str], env_files: Mapping[str, str], env_opts: Mapping[str, str],
                   warn: Callable[[str], None] | None = None,
                   note: Callable[[str], None] | None = None) -> dict[str, str]:  # fmt: skip
    """The user's values, lowest precedence first; those that may not be set are left out
    (with a warning). As Apptainer, `note` says when a SINGULARITYENV_ variable is used (its
    newer prefix is preferred), `warn` when a higher prefix sets another value."""
    out: dict[str, str] = {}
    for prefix in ENV_PREFIXES:
        for key, value in host_env.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                out[key[len(prefix) :]] = value
    for prefix in ENV_PREFIXES[:-1]:
        for key, value in host_env.items():
            if not key.startswith(prefix) or len(key) == len(prefix):
                continue
            name = key[len(prefix) :]
            if out[name] != value:
                if warn is not None:
                    warn(f"Skipping environment variable [{key}={value}], {name} is already overridden with "
                         f"different value [{out[name]}]")  # fmt: skip
            elif prefix == ENV_PREFIXES[0] and note is not None \
                    and not any(p + name in host_env for p in ENV_PREFIXES[1:]):  # fmt: skip
                note(f"Environment variable {key} is set, but {ENV_PREFIXES[1]}{name} is preferred")
    out.update(env_files)
    out.update(env_opts)
    for key in [k for k in out if k in REFUSED]:
        del out[key]
        if warn is not None:
            warn(f"can't set `{key}` in the container: its value is the runtime's")
    return out


def container_env(
    host_env: Mapping[str, str],
    *,
    cleanenv: bool,
    image: str,
    home: str,
    overrides: Mapping[str, str],
    fixed: Mapping[str, str] | None = None,
    no_env: Collection[str] = (),
    no_eval: bool = False,
    shell_prompt: str | None = None,
    action: str | None = None,
    binds: Iterable[str] = (),
    ids: tuple[int, int] | None = None,
    machine: str | None = None,
    libs_bound: bool = False,
) -> dict[str, str]:
    """The environment /bin/sh starts PRELUDE with: what the image's scripts see under
    its own names, the host's values under HOST_PREFIX, the user's values (`overrides`,
    evaluated unless `no_eval`) and sifbox's (`fixed`) in OVERRIDES_VAR. `binds`: the
    destinations of the binds (the container's SIFBOX_BIND...); `ids`: the uid and gid
    inside ($UID, $GID for the scripts and the values). When something is bound into LIBS
    (`libs_bound`) or the user edits LD_LIBRARY_PATH (PREPEND_/APPEND_LD_LIBRARY_PATH), the
    image's own library directories come before LIBS, found for `machine`
    (os.uname().machine) as its loader finds them, as Apptainer does."""
    fixed = {k: v for k, v in (fixed or {}).items() if k not in overrides}
    env = {"HOME": home, "PATH": DEFAULT_PATH}
    if "PWD" in host_env:
        env["PWD"] = host_env["PWD"]  # the shell keeps it if it names its directory
    restore: dict[str, str] = {"LANG": "C"} if cleanenv else {}
    for key, value in host_env.items():
        if (key in CLEANENV_KEEP if cleanenv else key not in NOT_PASSED and not key.startswith(_NOT_FORWARDED)) \
                and key not in no_env and key not in overrides and key not in fixed and key not in READONLY:  # fmt: skip
            restore[key] = value
    name = image.rstrip("/").rpartition("/")[2] or image
    dests = ",".join(binds)
    for prefix in RUNTIME_PREFIXES:
        env[f"{prefix}_CONTAINER"] = image
        env[f"{prefix}_NAME"] = name
        restore[f"{prefix}_ENVIRONMENT"] = "/.singularity.d/env/91-environment.sh"
        if action:
            restore[f"{prefix}_COMMAND"] = action
        if dests:
            restore[f"{prefix}_BIND"] = dests
        if no_eval:
            restore[f"{prefix}_NO_EVAL"] = "1"
    if shell_prompt:
        env["PS1"] = shell_prompt
    names = []
    for key, value in restore.items():
        if _is_name(key) and key not in env:
            env[HOST_PREFIX + key] = value
            names.append(key)
    edits_ld = any(k in src for src in (overrides, fixed) for k in PATH_EDITS[3:])
    env[CONTROL_VAR] = control_script(names, ids, machine if libs_bound or edits_ld else None)
    env[OVERRIDES_VAR] = overrides_script(overrides, no_eval=no_eval, fixed=fixed)
    return env


def control_script(names: Iterable[str], ids: tuple[int, int] | None, machine: str | None) -> str:
    """What PRELUDE reads first (shell assignments of sifbox's own values)."""
    lines = [f"__sifbox_host='{' '.join(names)}'"]  # names the shell can set (container_env checks)
    if ids is not None:
        lines.append(f"__sifbox_ids='{int(ids[0])} {int(ids[1])}'")
    if machine is not None:
        triplet = TRIPLETS.get(machine, "")
        wide = "64" if machine.endswith("64") or machine in ("ppc64le", "s390x") else ""
        lines.append(f"__sifbox_ld={_quote(f'{triplet}:{wide}')}")
    return "\n".join(lines)


def _assignments(overrides: Mapping[str, str]) -> list[tuple[str, str]]:
    """The variables to set, in order; then the path edits. Names a shell can't set are
    skipped; a user's LD_LIBRARY_PATH keeps the libs directory."""
    plain = []
    for key, value in overrides.items():
        if key in PATH_EDITS or key in READONLY or key in REFUSED or not _is_name(key):
            continue
        if key == "LD_LIBRARY_PATH" and value:
            value = f"{value}:{LIBS}"
        plain.append((key, value))
    return plain + [(k, overrides[k]) for k in PATH_EDITS if k in overrides]


#: Where the path edits wait for PRELUDE's `runtime vars` step.
_EDIT_VARS = {k: "__sifbox_" + k.lower() for k in PATH_EDITS}


def overrides_script(overrides: Mapping[str, str], *, no_eval: bool = False,
                     fixed: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Shell lines applied after the image's env scripts (run by `eval`). The user's
    values are evaluated as Apptainer evaluates them, each in a subshell of its own: a
    value the shell can't parse is left out with a warning, the others still apply."""
    lines = []
    for evaluate, source in ((False, fixed or {}), (not no_eval, overrides)):
        for key, value in _assignments(source):
            target = _EDIT_VARS.get(key, key)
            export = "export " if key not in _EDIT_VARS else ""
            if not evaluate or not any(ch in value for ch in "$`\\"):
                lines.append(f"{export}{target}={_quote(value)}")
                continue
            probe = _quote("printf '%s_' \"" + value.replace('"', '\\"') + '"')
            lines.append(f"if __sifbox_v=$(set +eu; eval {probe}); then {export}{target}=\"${{__sifbox_v%_}}\"; "
                         f"else echo \"sifbox: warning: can't evaluate the value of \\`{key}\\`: it is not a "
                         f"shell word; it is not set\" >&2; fi")  # fmt: skip
    if lines:
        lines.append("unset __sifbox_v")
    return "\n".join(lines)


def host_value(env: Mapping[str, str], key: str) -> str | None:
    """The host's value of `key` that container_env passes on, if any."""
    return env.get(HOST_PREFIX + key, env.get(key) if key not in NOT_PASSED else None)


def apply_overrides_directly(env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """For images without /bin/sh: the environment PRELUDE would have made, without a
    shell (no image scripts, nothing evaluated)."""
    out = {k: v for k, v in env.items() if not k.startswith(HOST_PREFIX) and k not in (OVERRIDES_VAR, CONTROL_VAR)}
    for key, value in env.items():
        if key.startswith(HOST_PREFIX):
            out.setdefault(key[len(HOST_PREFIX) :], value)
    edits: dict[str, str] = {}
    for key, value in _assignments(overrides):
        if key in PATH_EDITS:
            edits[key] = value
        else:
            out[key] = value
    out.setdefault("LD_LIBRARY_PATH", LIBS)
    if edits.get("PATH"):
        out["PATH"] = edits["PATH"]
    for var, pre, post in (("PATH", "PREPEND_PATH", "APPEND_PATH"),
                           ("LD_LIBRARY_PATH", "PREPEND_LD_LIBRARY_PATH", "APPEND_LD_LIBRARY_PATH")):  # fmt: skip
        if edits.get(pre):
            out[var] = edits[pre] + (":" + out[var] if out.get(var) else "")
        if edits.get(post):
            out[var] = (out[var] + ":" if out.get(var) else "") + edits[post]
    return out


#: Run inside the container by /bin/sh as `sh -c PRELUDE sifbox ACTION ARGS...`: source the
#: image's environment (with --app, the app's too: SIFBOX_APPNAME/APPTAINER_APPNAME/
#: SINGULARITY_APPNAME are set), apply the user's values after 99-base.sh, the path edits,
#: restore what the host passes, then run the action. run/test/start are the text of the
#: image's own actions (sifbox.formats.appenv), so both say and do the same.
PRELUDE = (
    r"""eval "${__SIFBOX_CTL:-}"
__sifbox_ov=${SIFBOX_ENV_OVERRIDES:-}
unset __SIFBOX_CTL SIFBOX_ENV_OVERRIDES ${__sifbox_host:-}
export PWD
if [ -n "${__sifbox_ids:-}" ]; then
    [ -n "${UID+x}" ] || { UID=${__sifbox_ids% *}; __sifbox_setids="$__sifbox_setids UID"; }
    [ -n "${EUID+x}" ] || { EUID=${__sifbox_ids% *}; __sifbox_setids="$__sifbox_setids EUID"; }
    [ -n "${GID+x}" ] || { GID=${__sifbox_ids#* }; __sifbox_setids="$__sifbox_setids GID"; }
fi
if [ -n "${__sifbox_ld:-}" ]; then
    # Something is bound into the libs directory: the image's own library directories
    # (its ld.so.conf, then the system's) come before it, as its loader would search them.
    __sifbox_v=$(
        __t=${__sifbox_ld%:*} __seen=: __out= __depth=0
        __add() {
            [ -d "$1" ] && cd -P "$1" || return 0
            case $__seen in *":$PWD:"*) return 0 ;; esac
            __seen=$__seen$PWD: __out=${__out:+$__out:}$1
        }
        __conf() {
            local __dir __line __pat __inc __d
            [ "$__depth" -lt 8 ] && [ -f "$1" ] && [ -r "$1" ] || return 0
            __depth=$((__depth + 1)) __dir=${1%/*}
            while IFS= read -r __line || [ -n "$__line" ]; do
                set -f
                set -- ${__line%%#*}
                set +f
                case ${1:-} in
                '') ;;
                include)
                    shift
                    for __pat in "$@"; do
                        case $__pat in /*) ;; *) __pat=$__dir/$__pat ;; esac
                        for __inc in $__pat; do __conf "$__inc"; done
                    done ;;
                hwcap) ;;
                *) for __d in "$@"; do case $__d in /*) __add "${__d%,}" ;; esac; done ;;
                esac
            done < "$1"
            __depth=$((__depth - 1))
        }
        __conf /etc/ld.so.conf
        if [ -n "$__t" ] && { [ -d "/lib/$__t" ] || [ -d "/usr/lib/$__t" ]; }; then
            for __d in "/lib/$__t" "/usr/lib/$__t" /lib /usr/lib; do __add "$__d"; done
        elif [ -n "${__sifbox_ld#*:}" ]; then
            __add /lib64
            __add /usr/lib64
        else
            __add /lib
            __add /usr/lib
        fi
        printf '%s' "$__out"
    )
    [ -z "$__sifbox_v" ] || export LD_LIBRARY_PATH="$__sifbox_v"
fi
__sifbox_fixpath() {
    for __sifbox_d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        case :${PATH:-}: in
        *:"$__sifbox_d":*) ;;
        *) PATH=${PATH:+$PATH:}$__sifbox_d ;;
        esac
    done
    export PATH
}
__sifbox_inject() {
    [ -z "${__sifbox_injected:-}" ] || return 0
    __sifbox_injected=1
"""
    + "".join(f"    {line}\n" if line else "\n" for line in appenv.APP_ENV_FALLBACK_SH.splitlines())
    + r"""    eval "$__sifbox_ov"
}
__sifbox_runtime_vars() {
    [ -z "${__sifbox_runtime:-}" ] || return 0
    __sifbox_runtime=1
    [ -z "${__sifbox_path:-}" ] || PATH=$__sifbox_path
    [ -z "${__sifbox_prepend_path:-}" ] || PATH=$__sifbox_prepend_path:$PATH
    [ -z "${__sifbox_append_path:-}" ] || PATH=$PATH:$__sifbox_append_path
    export PATH
    if [ -n "${__sifbox_prepend_ld_library_path:-}" ]; then
        export LD_LIBRARY_PATH="$__sifbox_prepend_ld_library_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    if [ -n "${__sifbox_append_ld_library_path:-}" ]; then
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$__sifbox_append_ld_library_path"
    fi
}
if [ -d /.singularity.d/env ]; then
    for __sifbox_f in /.singularity.d/env/*.sh; do
        [ -f "$__sifbox_f" ] && [ -r "$__sifbox_f" ] || continue
        case ${__sifbox_f##*/} in
        10-docker2singularity.sh|10-docker.sh) . "$__sifbox_f"; __sifbox_fixpath ;;
        99-base.sh) . "$__sifbox_f"; __sifbox_inject ;;
        99-runtimevars.sh) __sifbox_inject; __sifbox_runtime_vars ;;
        *) . "$__sifbox_f" ;;
        esac
    done
elif [ -f /environment ] && [ -r /environment ]; then
    # An image of Singularity before 2.3
    . /environment
    __sifbox_fixpath
fi
__sifbox_inject
__sifbox_runtime_vars
[ -n "${LD_LIBRARY_PATH+x}" ] || export LD_LIBRARY_PATH=/.singularity.d/libs
[ -z "${__sifbox_setids:-}" ] || unset $__sifbox_setids
unset IFS
for __sifbox_k in ${__sifbox_host:-}; do
    eval "if [ -z \"\${$__sifbox_k+x}\" ]; then export $__sifbox_k=\"\$__sifbox_h_$__sifbox_k\"; \
elif [ -z \"\$$__sifbox_k\" ]; then unset $__sifbox_k; fi; unset __sifbox_h_$__sifbox_k"
done
unset __sifbox_f __sifbox_k __sifbox_d __sifbox_v __sifbox_ov __sifbox_host __sifbox_ids __sifbox_setids \
    __sifbox_ld __sifbox_injected __sifbox_runtime __sifbox_path __sifbox_prepend_path __sifbox_append_path \
    __sifbox_prepend_ld_library_path __sifbox_append_ld_library_path
unset -f __sifbox_fixpath __sifbox_inject __sifbox_runtime_vars
__sifbox_action=$1
shift
case $__sifbox_action in
exec)
    # An executable file the shell's exec finds (a path, or the first in PATH's absolute
    # directories) runs at once; anything else is judged by `command -v`, in a subshell.
    __sifbox_found=
    case $1 in
    '') ;;
    */*) [ ! -f "$1" ] || [ ! -x "$1" ] || __sifbox_found=$1 ;;
    *)
        __sifbox_p=${PATH-}:
        while [ -n "$__sifbox_p" ]; do
            __sifbox_d=${__sifbox_p%%:*}
            __sifbox_p=${__sifbox_p#*:}
            case $__sifbox_d in /*) ;; *) break ;; esac
            if [ -f "$__sifbox_d/$1" ] && [ -x "$__sifbox_d/$1" ]; then
                __sifbox_found=$__sifbox_d/$1
                break
            fi
        done ;;
    esac
    if [ -z "$__sifbox_found" ] && ! __sifbox_found=$(command -v "$1" 2>&1); then  # no /dev/null needed (--no-mount dev)
        echo "sifbox: error: can't run \`$1\` in the container: command not found" >&2
        exit 127
    fi
    unset __sifbox_action __sifbox_found __sifbox_p __sifbox_d
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
    return key.isascii() and key.isidentifier()


def _quote(value: str) -> str:
    """A shell word for `value` (as shlex.quote, without importing re for it)."""
    if value and all(ch in _SAFE for ch in value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def kept_fds(env: Mapping[str, str], host: Mapping[str, str]) -> frozenset[int]:
    """Descriptors the payload inherits: a launcher's PMI descriptor (PMI_FD, when it
    passes into the container `env`), those SIFBOX_KEEP_FDS of the `host` environment names."""
    keep = set()
    for value in (host_value(env, "PMI_FD"), host.get("SIFBOX_KEEP_FDS")):
        for item in (value or "").split(","):
            if item.strip().isdigit():
                keep.add(int(item))
    return frozenset(keep)
