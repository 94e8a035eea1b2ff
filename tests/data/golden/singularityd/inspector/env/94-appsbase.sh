# The SCIF app hello

SCIF_APPDATA_hello=/scif/data/hello
SCIF_APPMETA_hello=/scif/apps/hello/scif
SCIF_APPROOT_hello=/scif/apps/hello
SCIF_APPBIN_hello=/scif/apps/hello/bin
SCIF_APPLIB_hello=/scif/apps/hello/lib

export SCIF_APPDATA_hello SCIF_APPMETA_hello SCIF_APPROOT_hello SCIF_APPBIN_hello SCIF_APPLIB_hello
export SCIF_APPENV_hello=/scif/apps/hello/scif/env/90-environment.sh
export SCIF_APPLABELS_hello=/scif/apps/hello/scif/labels.json
export SCIF_APPRUN_hello=/scif/apps/hello/scif/runscript
export SCIF_APPSTART_hello=/scif/apps/hello/scif/startscript

# The SCIF app world

SCIF_APPDATA_world=/scif/data/world
SCIF_APPMETA_world=/scif/apps/world/scif
SCIF_APPROOT_world=/scif/apps/world
SCIF_APPBIN_world=/scif/apps/world/bin
SCIF_APPLIB_world=/scif/apps/world/lib

export SCIF_APPDATA_world SCIF_APPMETA_world SCIF_APPROOT_world SCIF_APPBIN_world SCIF_APPLIB_world
export SCIF_APPLABELS_world=/scif/apps/world/scif/labels.json
export SCIF_APPRUN_world=/scif/apps/world/scif/runscript
