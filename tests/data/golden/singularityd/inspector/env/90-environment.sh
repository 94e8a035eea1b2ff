#!/bin/sh
# Custom environment shell code should follow


export test="testing"
export e2e="e2e testing"

