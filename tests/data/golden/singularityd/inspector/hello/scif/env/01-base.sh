#!/bin/sh

SCIF_APPNAME=hello
SCIF_APPROOT=/scif/apps/hello
SCIF_APPMETA=/scif/apps/hello/scif
SCIF_DATA=/scif/data
SCIF_APPDATA=/scif/data/hello
SCIF_APPINPUT=/scif/data/hello/input
SCIF_APPOUTPUT=/scif/data/hello/output
export SCIF_APPNAME SCIF_APPROOT SCIF_APPMETA SCIF_DATA SCIF_APPDATA SCIF_APPINPUT SCIF_APPOUTPUT
