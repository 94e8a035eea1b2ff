"""What a launch and an image's /.singularity.d agree on (pure, no imports: the runtime
reads it on every launch).

* `--app NAME` sets SIFBOX_APPNAME, APPTAINER_APPNAME and SINGULARITY_APPNAME
  (`launch_environment`); the image's env/95-apps.sh (APPS_ENV_SH) then sets the SCIF_*
  variables (`app_environment`), PATH and LD_LIBRARY_PATH, and sources the app's
  env/01-base.sh and env/90-environment.sh, after the image's own environment.
* `run`, `test` and `start` (RUN_SH, TEST_SH, START_SH: the same text as the image's
  actions/run, actions/test and actions/start after they source env/*.sh) run the app's
  script or the image's, or say what is missing, with Apptainer's words and exit statuses:
  `test` without a test script exits 0; an app without the script exits 1.
"""

from __future__ import annotations

APPS = "/scif/apps"
DATA = "/scif/data"
SD = "/.singularity.d"
#: The variables naming the app of a `--app NAME` launch, most specific first.
APPNAME_VARS = ("SIFBOX_APPNAME", "APPTAINER_APPNAME", "SINGULARITY_APPNAME")
#: The app a launch asked for, in shell (Apptainer sets APPTAINER_ and SINGULARITY_).
APP_VAR = "${SIFBOX_APPNAME:-${APPTAINER_APPNAME:-${SINGULARITY_APPNAME:-}}}"

#: What `run`, `test` and `start` say when the image lacks the script (Apptainer's words).
NO_RUNSCRIPT = "No runscript found in container, executing /bin/sh"  # then runs /bin/sh
NO_TEST = "No test script found in container, exiting"  # exit status 0
NO_STARTSCRIPT = "No instance start script found in container"  # exit status 0
NO_APP_RUNSCRIPT = "No runscript for contained app: {app}"  # exit status 1
NO_APP_TEST = "No tests for contained app: {app}"  # exit status 1
NO_APP_STARTSCRIPT = "No startscript for contained app: {app}"  # exit status 1
NO_APP = "Could not locate the container application: {app}"  # exit status 1

#: env/95-apps.sh without its `#!` line.
APPS_ENV_SH = f"""# With --app NAME: the app's variables and paths, then its own environment.
__app={APP_VAR}
if [ -n "$__app" ]; then
    if [ ! -d "/scif/apps/$__app" ]; then
        echo "{NO_APP.format(app="$__app")}" >&2
        exit 1
    fi
    export SIFBOX_APPNAME APPTAINER_APPNAME SINGULARITY_APPNAME
    SCIF_APPNAME=$__app
    SCIF_APPS=/scif/apps
    SCIF_DATA=/scif/data
    SCIF_APPROOT="/scif/apps/$__app"
    SCIF_APPMETA="$SCIF_APPROOT/scif"
    SCIF_APPDATA="/scif/data/$__app"
    SCIF_APPINPUT="$SCIF_APPDATA/input"
    SCIF_APPOUTPUT="$SCIF_APPDATA/output"
    SCIF_APPBIN="$SCIF_APPROOT/bin"
    SCIF_APPLIB="$SCIF_APPROOT/lib"
    SCIF_APPRUN="$SCIF_APPMETA/runscript"
    SCIF_APPSTART="$SCIF_APPMETA/startscript"
    SCIF_APPTEST="$SCIF_APPMETA/test"
    SCIF_APPHELP="$SCIF_APPMETA/runscript.help"
    SCIF_APPLABELS="$SCIF_APPMETA/labels.json"
    SCIF_APPENV="$SCIF_APPMETA/env/90-environment.sh"
    export SCIF_APPNAME SCIF_APPS SCIF_DATA SCIF_APPROOT SCIF_APPMETA SCIF_APPDATA SCIF_APPINPUT \\
        SCIF_APPOUTPUT SCIF_APPBIN SCIF_APPLIB SCIF_APPRUN SCIF_APPSTART SCIF_APPTEST SCIF_APPHELP \\
        SCIF_APPLABELS SCIF_APPENV
    PATH="$SCIF_APPROOT:$PATH"
    if [ -d "$SCIF_APPBIN" ]; then
        PATH="$SCIF_APPBIN:$PATH"
    fi
    export PATH
    if [ -d "$SCIF_APPLIB" ]; then
        LD_LIBRARY_PATH="$SCIF_APPLIB${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
        export LD_LIBRARY_PATH
    fi
    for __appenv in "$SCIF_APPMETA/env/01-base.sh" "$SCIF_APPMETA/env/90-environment.sh"; do
        if [ -f "$__appenv" ]; then
            . "$__appenv"
        fi
    done
    unset __appenv
fi
unset __app
"""

#: For a launcher that sources the image's env/*.sh itself: the app environment of an
#: image whose 95-apps.sh did not set it (no 95-apps.sh, or one older than the variables).
APP_ENV_FALLBACK_SH = (
    f'if [ -n "{APP_VAR}" ] && [ "${{SCIF_APPROOT:-}}" != "/scif/apps/{APP_VAR}" ]; then\n'
    + "".join(f"    {line}\n" if line else "\n" for line in APPS_ENV_SH.splitlines())
    + "fi\n"
)


def _app_script(script: str, message: str) -> str:
    return f"""__app={APP_VAR}
if [ -n "$__app" ]; then
    if [ -x "/scif/apps/$__app/scif/{script}" ]; then
        exec "/scif/apps/$__app/scif/{script}" "$@"
    fi
    echo "{message.format(app="$__app")}" >&2
    exit 1
fi
unset __app
"""


#: `run` once the environment is set: the app's runscript, else the image's, else /bin/sh.
RUN_SH = _app_script("runscript", NO_APP_RUNSCRIPT) + f"""if [ -x {SD}/runscript ]; then
    exec {SD}/runscript "$@"
fi
echo "{NO_RUNSCRIPT}" >&2
exec /bin/sh "$@"
"""
#: `test` once the environment is set: the app's test, else the image's, else exit 0.
TEST_SH = _app_script("test", NO_APP_TEST) + f"""if [ -x {SD}/test ]; then
    exec {SD}/test "$@"
fi
echo "{NO_TEST}" >&2
exit 0
"""
#: `instance start` once the environment is set: the app's startscript, else the image's.
START_SH = _app_script("startscript", NO_APP_STARTSCRIPT) + f"""if [ -x {SD}/startscript ]; then
    exec {SD}/startscript "$@"
fi
echo "{NO_STARTSCRIPT}" >&2
exit 0
"""


def launch_environment(name: str) -> dict[str, str]:
    """What a launch with `--app NAME` sets before the image's env scripts run."""
    return {var: name for var in APPNAME_VARS}


def app_environment(name: str) -> dict[str, str]:
    """The SCIF variables of app NAME in a launch with `--app NAME` (what 95-apps.sh and the
    app's env/01-base.sh set), and for its `%appinstall` at build time."""
    r, m, d = f"{APPS}/{name}", f"{APPS}/{name}/scif", f"{DATA}/{name}"
    return {
        "SCIF_APPNAME": name, "SCIF_APPS": APPS, "SCIF_DATA": DATA, "SCIF_APPROOT": r, "SCIF_APPMETA": m,
        "SCIF_APPDATA": d, "SCIF_APPINPUT": f"{d}/input", "SCIF_APPOUTPUT": f"{d}/output",
        "SCIF_APPBIN": f"{r}/bin", "SCIF_APPLIB": f"{r}/lib", "SCIF_APPRUN": f"{m}/runscript",
        "SCIF_APPSTART": f"{m}/startscript", "SCIF_APPTEST": f"{m}/test", "SCIF_APPHELP": f"{m}/runscript.help",
        "SCIF_APPLABELS": f"{m}/labels.json", "SCIF_APPENV": f"{m}/env/90-environment.sh",
    }  # fmt: skip
