"""CDI specs: parsing (JSON, YAML), device lookup, edits and mounts (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sifbox.hpc import cdi
from sifbox.runtime.plan import Mount
from sifbox.util.errors import SifboxError, UsageError

SPEC_YAML = """
cdiVersion: 0.6.0
kind: nvidia.com/gpu
containerEdits:
  env: [NVIDIA_SPEC=1]
  hooks:
    - hookName: createContainer
      path: /usr/bin/nvidia-ctk
      args: [nvidia-ctk, hook, update-ldcache]
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/nvidia0
  - name: all
    containerEdits:
      deviceNodes:
        - {path: /dev/nvidia0}
        - {path: /dev/nvidia1}
      mounts:
        - {hostPath: /usr/lib/libcuda.so.1, containerPath: /usr/lib/libcuda.so.1, options: [ro, nosuid, bind]}
"""


def test_device_names() -> None:
    assert cdi.parse_device_name("nvidia.com/gpu=0") == ("nvidia.com/gpu", "0")
    assert cdi.parse_device_name("vendor.org/fpga-x=dev:1") == ("vendor.org/fpga-x", "dev:1")
    for bad in ("gpu=0", "nvidia.com/gpu", "nvidia.com/gpu=", "/gpu=0", "a/b/c=d"):
        with pytest.raises(UsageError, match="not a CDI device name"):
            cdi.parse_device_name(bad)


def test_yaml_and_json_specs(tmp_path: Path) -> None:
    spec = cdi.parse_spec(SPEC_YAML, "/etc/cdi/nvidia.yaml")
    assert spec.kind == "nvidia.com/gpu" and sorted(spec.devices) == ["0", "all"]
    as_json = cdi.parse_spec(json.dumps({"cdiVersion": "0.5.0", "kind": "a.b/c", "devices": [{"name": "x"}]}), "s.json")
    assert as_json.devices == {"x": {}}


@pytest.mark.parametrize(("text", "path", "reason"), [
    ("{", "x.json", "can't read CDI spec `x.json`: "),
    ("[1]", "x.json", "the top level is not a mapping"),
    ('{"kind": "a.b/c"}', "x.json", "`cdiVersion` is missing"),
    ('{"cdiVersion": "0.5.0", "kind": "nokind"}', "x.json", "`kind` must look like vendor.com/class"),
    ('{"cdiVersion": "0.5.0", "kind": "a.b/c", "devices": [{}]}', "x.json", "device 0 has no valid `name`"),
    ("kind: [unclosed", "x.yaml", "can't read CDI spec `x.yaml`: "),
    ('{"cdiVersion": "0.5.0", "kind": "a.b/c", "containerEdits": {"env": "A=1"}}', "x.json", "`env` is not a list"),
])  # fmt: skip
def test_bad_specs(text: str, path: str, reason: str) -> None:
    with pytest.raises(SifboxError, match=None) as err:
        cdi.parse_spec(text, path)
    assert reason in err.value.message and "\n" not in err.value.message


def test_resolve_and_plan(tmp_path: Path) -> None:
    (tmp_path / "nvidia.yaml").write_text(SPEC_YAML)
    (tmp_path / "README").write_text("not a spec")
    specs = cdi.load_specs([str(tmp_path), str(tmp_path / "missing")])
    edits = cdi.resolve(["nvidia.com/gpu=all"], specs, [str(tmp_path)])
    assert edits.env == {"NVIDIA_SPEC": "1"}
    assert [h["path"] for h in edits.hooks] == ["/usr/bin/nvidia-ctk"]
    own = cdi.plan_mounts(edits, dev_is_host=False, exists=lambda p: True, isdir=lambda p: False)
    assert own == [Mount("bind", "/dev/nvidia0", "/dev/nvidia0", False, None, True),
                   Mount("bind", "/dev/nvidia1", "/dev/nvidia1", False, None, True),
                   Mount("bind", "/usr/lib/libcuda.so.1", "/usr/lib/libcuda.so.1", True, None, True)]  # fmt: skip
    shared = cdi.plan_mounts(edits, dev_is_host=True, exists=lambda p: True, isdir=lambda p: False)
    assert shared == own[2:]  # the host's /dev has the nodes already
    with pytest.raises(SifboxError, match="does not exist on this host"):
        cdi.plan_mounts(edits, dev_is_host=False, exists=lambda p: False)


def test_unknown_device_lists_known(tmp_path: Path) -> None:
    specs = [cdi.parse_spec(SPEC_YAML, "/etc/cdi/nvidia.yaml")]
    with pytest.raises(SifboxError) as err:
        cdi.resolve(["nvidia.com/gpu=7"], specs, cdi.DEFAULT_DIRS)
    assert err.value.message == "can't use device `nvidia.com/gpu=7`: no CDI spec in /etc/cdi, /var/run/cdi defines it"
    assert err.value.hint == "known devices: nvidia.com/gpu=0, nvidia.com/gpu=all"


def test_later_directory_wins(tmp_path: Path) -> None:
    one = cdi.parse_spec('{"cdiVersion":"0.5.0","kind":"a.b/c","devices":[{"name":"x","containerEdits":{"env":["V=etc"]}}]}', "/etc/cdi/a.json")
    two = cdi.parse_spec('{"cdiVersion":"0.5.0","kind":"a.b/c","devices":[{"name":"x","containerEdits":{"env":["V=run"]}}]}', "/var/run/cdi/a.json")
    assert cdi.resolve(["a.b/c=x"], [one, two], cdi.DEFAULT_DIRS).env == {"V": "run"}
