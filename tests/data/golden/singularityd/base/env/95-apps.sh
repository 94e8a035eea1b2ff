#!/bin/sh
# With --app NAME: the app's variables and paths, then its own environment.
__app=${SIFBOX_APPNAME:-${APPTAINER_APPNAME:-${SINGULARITY_APPNAME:-}}}
if [ -n "$__app" ]; then
    if [ ! -d "/scif/apps/$__app" ]; then
        echo "Could not locate the container application: $__app" >&2
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
    export SCIF_APPNAME SCIF_APPS SCIF_DATA SCIF_APPROOT SCIF_APPMETA SCIF_APPDATA SCIF_APPINPUT \
        SCIF_APPOUTPUT SCIF_APPBIN SCIF_APPLIB SCIF_APPRUN SCIF_APPSTART SCIF_APPTEST SCIF_APPHELP \
        SCIF_APPLABELS SCIF_APPENV
    PATH="$SCIF_APPROOT:$PATH"
    if [ -d "$SCIF_APPBIN" ]; then
        PATH="$SCIF_APPBIN:$PATH"
    fi
    export PATH
    if [ -d "$SCIF_APPLIB" ]; then
        LD_LIBRARY_PATH="$SCIF_APPLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
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
