"""Fuzz target: instance state files (`sifbox.runtime.instances.parse_state`).

    python fuzz/fuzz_instances.py -max_total_time=60

One input is the bytes of `~/.sifbox/instances/app/HOST/USER/NAME/NAME.json`, read as
`instances.load` reads it; a parsed state is written back and listed. `parse_state` answers
ValueError for a file that is not a state (`load` then treats the instance as stale); any
other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.runtime import instances


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    text = data.decode("utf-8", "replace")  # `load` opens the file in text mode
    try:
        state = instances.parse_state(text, "/fuzz/NAME.json")
    except ValueError:
        return
    text = instances.dump_state(state)
    if instances.dump_state(instances.parse_state(text, state.path)) != text:
        raise AssertionError("a state does not survive dump_state/parse_state")
    instances.render_json([state])
    instances.render_table([state])


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
