"""Fuzz target: sifbox.conf (`sifbox.config.sysconf.parse`).

    python fuzz/fuzz_sysconf.py -max_total_time=60

One input is the bytes of a configuration file, parsed as `load()` parses what it read;
then every directive is read back through its typed getter and the warnings are rendered.
A `ConfigError` is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ("difflib",)):
    from sifbox.config import schema, sysconf
    from sifbox.config.sysconf import ConfigError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    if len(data) > sysconf.MAX_SIZE:
        return  # `load` refuses a larger file before parsing it
    try:
        cfg = sysconf.parse(data, "sifbox.conf")
    except ConfigError:
        return
    for d in schema.SCHEMA:
        getter = {schema.BOOL: cfg.get_bool, schema.INT: cfg.get_int, schema.LIST: cfg.get_list}
        getter.get(d.kind, cfg.get_str)(d.name)
    for setting in cfg.items():
        d = schema.BY_NAME[setting.name]
        d.format(setting.value)
    "\n".join(cfg.warnings)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="sysconf")
