#!/bin/sh
# What /.singularity.d/env/99-base.sh does in an image Apptainer built: append the libs
# directory to LD_LIBRARY_PATH whatever it holds, and give PS1 a default.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
