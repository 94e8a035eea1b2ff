"""The oras:// artifact manifest sifbox pushes (Apptainer's media types) and the checks a pulled
one passes before a byte of the SIF is downloaded."""

from __future__ import annotations

import hashlib
import json

import pytest

from sifbox.oci import oras
from sifbox.oci.registry import RegistryError

DIGEST = "sha256:" + "ab" * 32


def test_manifest_is_apptainers() -> None:
    doc = json.loads(oras.manifest_for(DIGEST, 1234, "app.sif"))
    assert doc == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.sylabs.sif.config.v1+json", "size": 2,
                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
        "layers": [{"mediaType": "application/vnd.sylabs.sif.layer.v1.sif", "size": 1234, "digest": DIGEST,
                    "annotations": {"org.opencontainers.image.title": "app.sif"}}],
    }  # fmt: skip
    assert oras.sif_layer(doc, "x") == (DIGEST, 1234)
    doc["layers"][0]["mediaType"] = oras.SIF_LAYER_PROTO  # Singularity < 3.7's pushes still pull
    assert oras.sif_layer(doc, "x") == (DIGEST, 1234)


@pytest.mark.parametrize("change, reason", [
    ({"mediaType": "application/vnd.oci.image.index.v1+json"}, "not a SIF artifact"),
    ({"layers": []}, "0 layers"),
    ({"layers": "x"}, "no list of layers"),
    ({"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 1, "digest": DIGEST}]},
     "not `application/vnd.sylabs.sif.layer.v1.sif`"),
    ({"layers": [{"mediaType": oras.SIF_LAYER, "size": 1, "digest": "sha256:../../etc"}]}, "invalid digest"),
    ({"layers": [{"mediaType": oras.SIF_LAYER, "size": 1 << 60, "digest": DIGEST}]}, "invalid size"),
    ({"layers": [{"mediaType": oras.SIF_LAYER, "size": "12", "digest": DIGEST}]}, "invalid size"),
    ({"layers": [{"mediaType": oras.SIF_LAYER, "size": True, "digest": DIGEST}]}, "invalid size"),
])  # fmt: skip
def test_bad_manifests_are_refused(change: dict[str, object], reason: str) -> None:
    doc = {**json.loads(oras.manifest_for(DIGEST, 1, "a.sif")), **change}
    with pytest.raises(RegistryError) as info:
        oras.sif_layer(doc, "can't pull `oras://r/x`")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_uris() -> None:
    ref = oras.parse_uri("oras://127.0.0.1:5000/group/app:1.0", "pull")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "group/app", "1.0")
    for bad in ("docker://x/y", "oras://"):
        with pytest.raises(Exception, match="can't pull"):
            oras.parse_uri(bad, "pull")
