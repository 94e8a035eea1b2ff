#!/bin/sh
# The directory GPU libraries are bound into, and a prompt when there is none.
case ":${LD_LIBRARY_PATH:-}:" in
*:/.singularity.d/libs:*) ;;
::) LD_LIBRARY_PATH=/.singularity.d/libs ;;
*) LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs" ;;
esac
if [ -z "${PS1:-}" ]; then
    PS1="Sifbox> "
fi
export LD_LIBRARY_PATH PS1
