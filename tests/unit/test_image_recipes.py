"""The images hack/build-images.py assembles without Docker follow the Dockerfile's recipe (the source
for registry builds) and carry the tags the operator pins, so rendered pods run them unchanged."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from roundhouse_api.families import DEFAULT_HELPER_IMAGE, family

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def load_build_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_images", REPO / "hack" / "build-images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_images"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bi = load_build_images()


def stage(name: str) -> str:
    """The text of one Dockerfile stage (FROM ... AS name up to the next FROM)."""
    m = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert m, f"no stage {name}"
    return m.group(1)


def test_both_recipes_install_the_same_pinned_dependencies() -> None:
    # Run the Dockerfile's own requirements snippet against the same pyproject.toml.
    snippet = re.search(r"RUN python - <<'PY' > /tmp/requirements.txt\n(.*?)\nPY\n", DOCKERFILE, re.S)
    assert snippet, "the Dockerfile no longer derives requirements.txt from pyproject.toml"
    out = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == bi.roundhouse_requirements() and out.split()


def test_both_recipes_build_the_wheel_from_the_same_sources_and_install_it_the_same_way() -> None:
    copied = [w for line in re.findall(r"^COPY (?!--)(.+)$", stage("build"), re.M) for w in line.split()[:-1]]
    assert sorted(copied) == sorted(bi.ROUNDHOUSE_SOURCES)
    install = re.search(r"pip install ([^\\\n&]+)", stage("runtime"))
    assert install
    docker_args = shlex.split(install.group(1).replace("/wheels", bi.WHEELS))
    assert docker_args == bi.PIP_INSTALL[1:]


def test_both_recipes_run_as_the_same_user_with_the_same_environment() -> None:
    runtime = stage("runtime")
    assert f"--uid {bi.ROUNDHOUSE_UID} --user-group --no-create-home --home-dir /nonexistent" in runtime
    assert f"USER {bi.ROUNDHOUSE_UID}:{bi.ROUNDHOUSE_UID}" in runtime
    env = dict(kv.split("=") for kv in re.search(r"^ENV (.+)$", runtime, re.M).group(1).split())  # type: ignore[union-attr]
    assert env == bi.ROUNDHOUSE_ENV
    assert [int(p) for p in re.search(r"^EXPOSE (.+)$", runtime, re.M).group(1).split()] == bi.ROUNDHOUSE_PORTS  # type: ignore[union-attr]
    assert "WORKDIR /nonexistent" in runtime and 'CMD ["roundhouse-gateway", "--help"]' in runtime


def test_vllm_standin_uses_the_enginesim_stages_shim() -> None:
    sim = stage("enginesim")
    folder = bi.ENGINESIM_PATH.rsplit("/", 1)[0]
    modules = "tests/support/enginesim.py tests/support/prefixcache.py tests/support/simendpoints.py"
    assert f"COPY {modules} {folder}/" in sim
    loop = re.search(r"for e in (.+?); do", sim)
    assert loop and dict(e.split(":") for e in loop.group(1).split()) == bi.ENGINESIM_SHIMS
    fmt = re.search(r"printf '(.+?)' \"\$\{e%%:\*\}\"", sim)
    assert fmt
    assert fmt.group(1).replace("\\n", "\n") % "vllm" == bi.shim_script("vllm")
    files = bi.vllm_standin_files()
    shim, mode = files[bi.ENGINESIM_SHIMS["vllm"]]
    # The stand-in adds vLLM's own parser in front of the Dockerfile stage's shim, and then runs exactly it.
    assert mode == 0o755 and shim.decode().endswith(bi.shim_script("vllm").split("\n", 1)[1])
    assert f"python {bi.VLLM_PARSER_DIR}/vllm_check.py --argv" in shim.decode()
    assert (
        files[f"{bi.VLLM_PARSER_DIR}/vllm_check.py"][0] == (REPO / "tests" / "support" / "vllm_check.py").read_bytes()
    )
    assert files[bi.ENGINESIM_PATH][0] == (REPO / "tests" / "support" / "enginesim.py").read_bytes()
    # The simulator imports its prefix-cache model and endpoints from its own folder when run as a script.
    for module in ("prefixcache.py", "simendpoints.py"):
        assert files[f"{folder}/{module}"][0] == (REPO / "tests" / "support" / module).read_bytes()


def test_images_carry_the_tags_the_operator_and_the_chart_use() -> None:
    assert family("llamacpp").image in bi.NAMES["llama-server"]
    assert family("ollama").image in bi.NAMES["ollama"]
    assert family("vllm").image in bi.NAMES["vllm"]
    assert family("sglang").image in bi.NAMES["sglang"]
    assert DEFAULT_HELPER_IMAGE in bi.NAMES["roundhouse"]
    chart = yaml.safe_load((REPO / "charts" / "roundhouse" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "roundhouse" / "values.yaml").read_text())
    assert f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}" in bi.NAMES["roundhouse"]
    assert "roundhouse:dev" in bi.NAMES["roundhouse"]  # the Dockerfile's documented tag


@pytest.mark.parametrize(
    ("name", "full"),
    [("roundhouse:dev", "docker.io/library/roundhouse:dev"), ("ollama/ollama:0.17.4", "docker.io/ollama/ollama:0.17.4"),
     ("ghcr.io/ggml-org/llama.cpp:server-cuda-b1", "ghcr.io/ggml-org/llama.cpp:server-cuda-b1"),
     ("localhost/roundhouse/pause:busybox", "localhost/roundhouse/pause:busybox")],
)  # fmt: skip
def test_image_names_are_normalized_like_containerd_does(name: str, full: str) -> None:
    assert bi.full_name(name) == full


def test_oci_archive_is_a_valid_image_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bi, "CACHE", tmp_path)
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "bin" / "alias").symlink_to("hello")
    layer = tmp_path / "layer.tar"
    bi.write_layer(root, layer)
    out = tmp_path / "img.oci.tar"
    bi.write_oci_archive(out, [layer], {"Entrypoint": ["/bin/hello"]}, ["roundhouse:dev", "ghcr.io/x/y:1"])
    with tarfile.open(out) as tar:

        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f
            return f.read()

        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(read("index.json"))
        assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == [
            "docker.io/library/roundhouse:dev", "ghcr.io/x/y:1"]  # fmt: skip
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest_bytes = read(f"blobs/sha256/{digest}")
        assert hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"].split(":")[1]))
        layer_digest = manifest["layers"][0]["digest"]
        assert config["rootfs"]["diff_ids"] == [layer_digest]  # uncompressed: diff id == digest
        assert config["config"]["Entrypoint"] == ["/bin/hello"] and config["os"] == "linux"
        layer_bytes = read("blobs/sha256/" + layer_digest.split(":")[1])
        assert hashlib.sha256(layer_bytes).hexdigest() == layer_digest.split(":")[1]
    (tmp_path / "l.tar").write_bytes(layer_bytes)
    with tarfile.open(tmp_path / "l.tar") as t:
        members = {m.name: m for m in t.getmembers()}
    assert members["bin/hello"].mode & 0o777 == 0o755 and members["bin/alias"].issym()
    assert list(members) == ["bin", "bin/alias", "bin/hello"]


def test_cache_key_follows_the_content_of_the_inputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")

    def key() -> str:
        k = bi.Key("t")
        k.tree("src", src)
        return str(k.hexdigest())

    first = key()
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert key() == first  # build by-products do not count
    (src / "a.py").write_text("x = 2\n")
    assert key() != first
