#!/bin/sh
export PATH="/usr/bin:/bin"
export LANG="${LANG:-"C.UTF-8"}"
export EMPTY="${EMPTY:-}"
