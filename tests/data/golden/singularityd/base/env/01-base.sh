#!/bin/sh
# The image's base environment: sourced first; sets nothing.
