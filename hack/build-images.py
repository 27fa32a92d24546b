#!/usr/bin/env python3
"""Build Roundhouse's container images without Docker, as OCI archives, cached by content.

    hack/build-images.py [build] [IMAGE ...]       build (or reuse) images; print one archive path a line
    hack/build-images.py import --address SOCK [IMAGE ...]   build, then `ctr -n k8s.io images import`
    hack/build-images.py list                      the images and the names (tags) each archive carries

IMAGE is one of: pause, llama-server, ollama, roundhouse, vllm (default: every image whose inputs
exist here; an engine image whose binary has not been built is skipped with the reason).

Each image is a plain root filesystem per layer (an uncompressed tar), written as an OCI image layout
(oci-layout, index.json, blobs/sha256) inside one tar with the standard library only. The archive is
named by a hash of everything that goes into it (recipe, binaries, shared libraries, sources), under
~/.cache/roundhouse/images/: same inputs, no rebuild.

- pause: busybox-static from Debian (`apt-get download busybox-static`), a shell that blocks
  forever and exits at once on SIGTERM. It is the node's sandbox image (containerd `sandbox_image`,
  pinned, so image GC never removes it).
- llama-server: our CPU build of llama.cpp's server at the upstream entrypoint `/app/llama-server`,
  with the shared libraries `ldd` names; tagged as the image the operator pins.
- ollama: `ollama` at /usr/bin/ollama with its libraries, busybox as /bin/sh (upstream has a shell).
- roundhouse: the Dockerfile's recipe without Docker: a Debian bookworm rootfs with python3.11
  (debootstrap --variant=minbase), then the project's wheel and its pinned dependencies installed
  with pip from a wheel directory (`pip install --no-index --find-links`), uid 10001, both
  entrypoints. The Dockerfile stays the source for registry builds; tests/unit/test_image_recipes.py
  checks that both recipes install the same things.
- vllm: a stand-in for vllm/vllm-openai: the roundhouse image plus the engine simulator with a
  `vllm` shim (like the Dockerfile's enginesim stage); see `vllm_standin_files`.

Standard library only (it runs before any virtualenv exists); needs root for debootstrap/chroot.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support import tools  # noqa: E402 - the table of what each make target installs (standard library only)

CACHE_ROOT = Path(os.environ.get("ROUNDHOUSE_CACHE", Path.home() / ".cache" / "roundhouse"))
CACHE = CACHE_ROOT / "images"
APT_INSTALL = REPO / "hack" / "apt-install"  # every apt-get of the project, under one lock
RECIPE_VERSION = "1"  # bump to rebuild every image whatever the inputs say

# The tags the operator pins for the upstream images (crds/roundhouse_api/families/*.py) and the ones
# the chart and the Dockerfile use for our own image, so rendered pods run unchanged.
LLAMACPP_BUILD = "11312"
OLLAMA_VERSION = "0.17.4"
VLLM_VERSION = "0.33.0"
SGLANG_VERSION = "0.5.23"
CHART_APP_VERSION = "0.1.0"
NAMES = {
    "pause": ["localhost/roundhouse/pause:busybox"],
    "llama-server": [f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMACPP_BUILD}"],
    "ollama": [f"ollama/ollama:{OLLAMA_VERSION}"],
    "roundhouse": [f"ghcr.io/roundhouse-dev/roundhouse:{CHART_APP_VERSION}", "roundhouse:dev"],
    "vllm": [f"vllm/vllm-openai:v{VLLM_VERSION}", "roundhouse-enginesim:dev"],
    "sglang": [f"lmsysorg/sglang:v{SGLANG_VERSION}"],
    # The chart's gateway.state.redis.image; its content is Debian bookworm's redis-server (7.0.15).
    "redis": ["redis:7.0.15"],
}
PAUSE_IMAGE = NAMES["pause"][0]

# The Roundhouse image, as the Dockerfile's runtime stage has it.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ROUNDHOUSE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ["python3.11", "ca-certificates"]
PIP_VERSION = "25.3"  # the Makefile's pin
ROUNDHOUSE_UID = 10001
ROUNDHOUSE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
ROUNDHOUSE_PORTS = [8080, 8081]
ROUNDHOUSE_SOURCES = ["pyproject.toml", "README.md", "crds", "operator", "gateway"]  # what the wheel is built from
# The engine simulator's shims, as the Dockerfile's enginesim stage writes them.
ENGINESIM_PATH = "/opt/enginesim/enginesim.py"
ENGINESIM_SHIMS = {"vllm": "/usr/local/bin/vllm", "llamacpp": "/app/llama-server", "ollama": "/usr/local/bin/ollama"}
# The runtime stage's install, word for word (the wheel directory is /wheels there, WHEELS here).
WHEELS = "/tmp/roundhouse-build/wheels"
PIP_INSTALL = ["install", "--no-cache-dir", "--no-index", "--find-links", WHEELS, "roundhouse"]
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"


def log(msg: str) -> None:
    print(f"[build-images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc  # type: ignore[no-any-return]


# --- recipes shared with the Dockerfile ------------------------------------------------------------


def roundhouse_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The pinned runtime dependencies, read exactly as the Dockerfile's build stage reads them."""
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def shim_script(engine: str) -> str:
    """The shim the Dockerfile's enginesim stage writes (`printf '#!/bin/sh\\nexec python ...'`)."""
    return f'#!/bin/sh\nexec python {ENGINESIM_PATH} --shim {engine} "$@"\n'


VLLM_PARSER_DIR = "/opt/vllm-parser"
VLLM_SHIM = f"""#!/bin/sh
# The vLLM stand-in: vLLM's own `vllm serve` parser and GPU-free start-up checks (the pinned version,
# {VLLM_PARSER_DIR}) judge the command line first and refuse it as vLLM would; then the engine
# simulator serves vLLM's protocol in its place (vLLM itself needs a GPU).
if [ "$1" = serve ]; then
  shift
  VLLM_PARSER_SITE={VLLM_PARSER_DIR}/site-packages python {VLLM_PARSER_DIR}/vllm_check.py --argv "$@" || exit 2
  exec python {ENGINESIM_PATH} --shim vllm serve "$@"
fi
exec python {ENGINESIM_PATH} --shim vllm "$@"
"""


def vllm_standin_files() -> dict[str, tuple[bytes, int]]:
    """What the vLLM stand-in adds on top of the Roundhouse image: {path in image: (content, mode)}:
    the engine simulator and vLLM's checker behind a `vllm` shim (the parser's packages: vllm_parser_site)."""
    sim = (REPO / "tests" / "support" / "enginesim.py").read_bytes()
    support = REPO / "tests" / "support"
    cache = (support / "prefixcache.py").read_bytes()  # the simulator imports these two
    endpoints = (support / "simendpoints.py").read_bytes()
    check = (support / "vllm_check.py").read_bytes()
    return {ENGINESIM_PATH: (sim, 0o644), ENGINESIM_PATH.replace("enginesim.py", "prefixcache.py"): (cache, 0o644),
            ENGINESIM_PATH.replace("enginesim.py", "simendpoints.py"): (endpoints, 0o644),
            ENGINESIM_SHIMS["vllm"]: (VLLM_SHIM.encode(), 0o755),
            f"{VLLM_PARSER_DIR}/vllm_check.py": (check, 0o644)}  # fmt: skip


SGLANG_PARSER_DIR = "/opt/sglang-parser"
SGLANG_SHIM_PATH = "/usr/local/bin/sglang"
SGLANG_SHIM = f"""#!/bin/sh
# The SGLang stand-in: SGLang's own `sglang serve` handling (the pinned version, {SGLANG_PARSER_DIR})
# judges the command line first and refuses it as SGLang would; then the engine simulator serves
# SGLang's protocol in its place (SGLang itself needs a GPU).
if [ "$1" = serve ]; then
  shift
  SGLANG_PARSER_SITE={SGLANG_PARSER_DIR}/site-packages python {SGLANG_PARSER_DIR}/sglang_check.py --argv "$@" || exit 2
  exec python {ENGINESIM_PATH} --shim sglang serve "$@"
fi
echo "sglang stand-in: only 'sglang serve' is here" >&2
exit 2
"""


def sglang_standin_files() -> dict[str, tuple[bytes, int]]:
    """What the SGLang stand-in adds on top of the vLLM stand-in's simulator files: SGLang's checker
    (with vllm_check.py, whose torch stand-in it uses) behind a `sglang` shim."""
    support = REPO / "tests" / "support"
    sim = {k: v for k, v in vllm_standin_files().items() if k.startswith(ENGINESIM_PATH.rsplit("/", 1)[0])}
    return {**sim, SGLANG_SHIM_PATH: (SGLANG_SHIM.encode(), 0o755),
            f"{SGLANG_PARSER_DIR}/sglang_check.py": ((support / "sglang_check.py").read_bytes(), 0o644),
            f"{SGLANG_PARSER_DIR}/vllm_check.py": ((support / "vllm_check.py").read_bytes(), 0o644)}  # fmt: skip


def parser_site(script: str, what: str) -> Path:
    """site-packages of the venv a hack/build-*-parser.sh script made."""
    python = run(str(REPO / "hack" / script), "path").stdout.strip()
    found = sorted(Path(python).parent.parent.glob("lib/python3*/site-packages"))
    if not found or not (Path(python).parent.parent / ".roundhouse-complete").exists():
        raise SystemExit(f"{what} is not built: run hack/{script} (make engines)")
    return found[0]


def vllm_parser_site() -> Path:
    """site-packages of the venv hack/build-vllm-parser.sh made (vLLM without its GPU dependencies)."""
    return parser_site("build-vllm-parser.sh", "vLLM's parser")


def vllm_parser_wanted(rel: Path) -> bool:
    """Leave out what the parser never loads: vLLM's compiled CUDA kernels (about 760 MiB) and caches."""
    if "__pycache__" in rel.parts or rel.suffix in (".pyc", ".pyo"):
        return False
    return not (rel.parts[0] == "vllm" and rel.suffix == ".so")


# --- hashing, layers and OCI layouts ---------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / name


RECIPE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # this file is an input too


class Key:
    """A running hash of everything an image is made from."""

    def __init__(self, image: str, recipe: bool = True) -> None:
        # `recipe`: this file's own content counts (off for the slow, rarely changing base layers,
        # which RECIPE_VERSION and their explicit inputs cover).
        self.h = hashlib.sha256(f"roundhouse-image {RECIPE_VERSION} {image} {RECIPE_HASH if recipe else ''}\n".encode())

    def text(self, label: str, value: object) -> None:
        self.h.update(f"{label}={json.dumps(value, sort_keys=True)}\n".encode())

    def file(self, label: str, path: Path) -> None:
        self.h.update(f"{label}:{oct(path.stat().st_mode & 0o777)}:{sha256_file(path)}\n".encode())

    def tree(self, label: str, root: Path) -> None:
        for p in tree_files(root):
            self.file(f"{label}/{p.relative_to(root.parent)}", p)

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:16]


def _tarinfo_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if info.isdev() or info.type == tarfile.FIFOTYPE:
        return None  # /dev is the runtime's
    info.uname = info.gname = ""
    return info


SKIP_IN_LAYER = re.compile(
    r"^(dev|proc|sys|run)/.|^var/cache/apt/.|^var/lib/apt/lists/.|^usr/share/(doc|man|info|locale)/.|^tmp/."
)


def write_layer(root: Path, out: Path, skip: re.Pattern[str] | None = None) -> None:
    """A plain tar of the root filesystem at `root` (directories first, sorted, hard links kept)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for name in [*sorted(dirnames), *sorted(filenames)]:
                p = base / name
                rel = p.relative_to(root).as_posix()
                if skip is not None and skip.search(rel):
                    continue
                if p.is_socket():
                    continue
                tar.add(p, arcname=rel, recursive=False, filter=_tarinfo_filter)
            dirnames[:] = [d for d in dirnames if not (skip and skip.search(f"{(base / d).relative_to(root)}/x"))]


def blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def full_name(name: str) -> str:
    """How containerd and the kubelet name an image: registry/repository:tag."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def write_oci_archive(out: Path, layers: list[Path], config: dict[str, object], names: list[str]) -> None:
    """index.json + oci-layout + blobs/sha256, in one tar that `ctr images import` reads."""
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        blobs = Path(tmp) / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_descs, diff_ids = [], []
        for layer in layers:
            digest = sha256_file(layer)
            try:  # the layers are in the cache already: a hard link, not a copy
                os.link(layer, blobs / digest)
            except OSError:
                shutil.copy(layer, blobs / digest)
            layer_descs.append({"mediaType": LAYER_MEDIA, "digest": f"sha256:{digest}", "size": layer.stat().st_size})
            diff_ids.append(f"sha256:{digest}")  # uncompressed: the diff id is the layer's digest
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"hack/build-images.py (recipe {RECIPE_VERSION})"} for _ in layers],
        }
        cfg = blob(blobs, json.dumps(image_config, sort_keys=True).encode())
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                    "config": {"mediaType": CONFIG_MEDIA, **cfg}, "layers": layer_descs}  # fmt: skip
        man = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA,
                    **man,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": full_name(n),
                        "org.opencontainers.image.ref.name": n.rsplit(":", 1)[1],
                    },
                }
                for n in names
            ],
        }
        (Path(tmp) / "index.json").write_text(json.dumps(index, sort_keys=True))
        (Path(tmp) / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("oci-layout", "index.json"):
                tar.add(Path(tmp) / name, arcname=name, filter=_tarinfo_filter)
            tar.add(Path(tmp) / "blobs", arcname="blobs", filter=_tarinfo_filter)
        partial.rename(out)


# --- root filesystems ------------------------------------------------------------------------------


@dataclass
class Rootfs:
    """A small root filesystem assembled from host files."""

    root: Path

    def mkdir(self, path: str, mode: int = 0o755) -> Path:
        p = self.root / path.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(mode)
        return p

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)

    def copy(self, src: Path, dest: str, mode: int | None = None) -> None:
        p = self.root / dest.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, p)  # follows symlinks: the soname becomes a file
        p.chmod(mode if mode is not None else (src.stat().st_mode & 0o777))

    def symlink(self, target: str, path: str) -> None:
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(target)

    def skeleton(self) -> None:
        for d in ("bin", "etc", "proc", "sys", "dev", "root", "usr/bin", "lib", "lib64", "var"):
            self.mkdir(d)
        self.mkdir("tmp", 0o1777)
        self.write(
            "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        )
        self.write("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        self.write("etc/nsswitch.conf", b"hosts: files dns\n")

    def busybox(self, applets: bool = True) -> None:
        self.copy(busybox_static(), "/bin/busybox", 0o755)
        self.symlink("busybox", "/bin/sh")
        if applets:
            names = run(str(busybox_static()), "--list").stdout.split()
            for n in names:
                if n not in ("busybox", "sh") and not (self.root / "bin" / n).exists():
                    self.symlink("busybox", f"/bin/{n}")

    def binary_with_libs(self, binary: Path, dest: str, private_lib_dir: str) -> None:
        """`binary` at `dest`, with every shared library `ldd` resolves: system libraries at their own
        paths, the build's own (libggml*, libllama*, anything outside the system dirs) in
        `private_lib_dir` (on LD_LIBRARY_PATH in the image config)."""
        self.copy(binary, dest, 0o755)
        for lib in ldd(binary):
            if str(lib).startswith(("/lib/", "/lib64/", "/usr/lib/")):
                self.copy(lib, str(lib))
            else:
                self.copy(lib, f"{private_lib_dir}/{lib.name}")
        # Libraries the binary opens at run time (ggml backends) sit next to it in a build tree.
        for extra in sorted(binary.parent.glob("lib*.so*")):
            if not (self.root / private_lib_dir.lstrip("/") / extra.name).exists():
                self.copy(extra, f"{private_lib_dir}/{extra.name}")


def ldd(binary: Path) -> list[Path]:
    out = run("ldd", str(binary), env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise SystemExit(f"{binary}: {line}")
        m = re.search(r"=> (/\S+)", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def busybox_static() -> Path:
    """Debian's busybox-static, downloaded once with apt-get and extracted with dpkg-deb."""
    dest = CACHE / "busybox-static" / "bin" / "busybox"
    if dest.exists():
        return dest
    log("downloading busybox-static (apt-get download)")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            run(str(APT_INSTALL), "--update")  # under the project's apt lock: other set-up installs meanwhile
            run("apt-get", "download", "busybox-static", cwd=tmp)
        deb = next(Path(tmp).glob("busybox-static_*.deb"))
        run("dpkg-deb", "-x", str(deb), str(Path(tmp) / "x"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "x" / "bin" / "busybox", dest)
        (dest.parent.parent / "VERSION").write_text(deb.name)
    return dest


# --- the images ------------------------------------------------------------------------------------


@dataclass
class Built:
    layers: list[Path]
    config: dict[str, object]


@dataclass
class Recipe:
    name: str
    available: Callable[[], str | None]  # None when it can be built, else why not
    key: Callable[[Key], None]  # feeds every input into the key
    build: Callable[[Path], Built]  # builds the layers into a work directory
    names: list[str] = field(default_factory=list)


def engine_binary(env: str, tool: str, default: Path) -> Path:
    """An engine binary: $ENV, else what `hack/build-engines.sh paths` prints for it ("<tool> <path>"
    lines), else the default path."""
    if os.environ.get(env):
        return Path(os.environ[env])
    script = REPO / "hack" / "build-engines.sh"
    if script.exists():
        proc = subprocess.run([str(script), "paths"], capture_output=True, text=True)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            words = line.split(maxsplit=1)
            if len(words) == 2 and words[0] == tool:
                return Path(words[1])
    return default


def llama_server_bin() -> Path:
    return engine_binary("ROUNDHOUSE_LLAMA_SERVER", "llama-server",
                         CACHE_ROOT / f"llama.cpp-b{LLAMACPP_BUILD}" / "bin" / "llama-server")  # fmt: skip


def ollama_bin() -> Path:
    return engine_binary("ROUNDHOUSE_OLLAMA", "ollama", CACHE_ROOT / f"ollama-v{OLLAMA_VERSION}" / "bin" / "ollama")


def missing(path: Path) -> str | None:
    return None if path.exists() else f"{path} is not built yet (hack/build-engines.sh)"


def small_rootfs(work: Path, fill: Callable[[Rootfs], None], smoke: list[str] | None = None) -> Path:
    """One layer: the skeleton plus what `fill` adds; `smoke` is run inside it (chroot) as a check
    that the binary finds everything it links against."""
    fs = Rootfs(work / "rootfs")
    fs.skeleton()
    fill(fs)
    if smoke:
        run("chroot", str(fs.root), *smoke, env={"PATH": PATH_ENV, "HOME": "/root"})
    layer = work / "layer.tar"
    write_layer(fs.root, layer)
    return layer


PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]


def pause_key(k: Key) -> None:
    k.file("busybox", busybox_static())
    k.text("cmd", PAUSE_CMD)


def pause_build(work: Path) -> Built:
    def fill(fs: Rootfs) -> None:
        fs.busybox(applets=False)
        fs.symlink("busybox", "/bin/sleep")

    layer = small_rootfs(work, fill)
    return Built([layer], {"Entrypoint": PAUSE_CMD, "Env": [f"PATH={PATH_ENV}"], "WorkingDir": "/"})


def llama_key(k: Key) -> None:
    binary = llama_server_bin()
    k.file("llama-server", binary)
    for lib in [*ldd(binary), *sorted(binary.parent.glob("lib*.so*"))]:
        k.file(f"lib {lib}", lib)
    k.file("busybox", busybox_static())


def llama_build(work: Path) -> Built:
    def fill(fs: Rootfs) -> None:
        fs.busybox()
        fs.binary_with_libs(llama_server_bin(), "/app/llama-server", "/app")

    layer = small_rootfs(work, fill, ["/app/llama-server", "--version"])
    # As upstream's server images: WORKDIR /app, LLAMA_ARG_HOST=0.0.0.0, ENTRYPOINT /app/llama-server.
    env = [f"PATH={PATH_ENV}", "LLAMA_ARG_HOST=0.0.0.0", "LD_LIBRARY_PATH=/app"]
    return Built([layer], {"Entrypoint": ["/app/llama-server"], "Env": env, "WorkingDir": "/app",
                           "ExposedPorts": {"8080/tcp": {}}})  # fmt: skip


def ollama_key(k: Key) -> None:
    binary = ollama_bin()
    k.file("ollama", binary)
    for lib in [*ldd(binary), *sorted(binary.parent.glob("lib*.so*"))]:
        k.file(f"lib {lib}", lib)
    k.file("busybox", busybox_static())


def ollama_build(work: Path) -> Built:
    def fill(fs: Rootfs) -> None:
        fs.busybox()
        fs.binary_with_libs(ollama_bin(), "/usr/bin/ollama", "/usr/lib/ollama")
        fs.mkdir("root/.ollama", 0o700)

    layer = small_rootfs(work, fill, ["/usr/bin/ollama", "--version"])
    # As upstream: ENTRYPOINT /bin/ollama, CMD serve, OLLAMA_HOST=0.0.0.0:11434 (we use /usr/bin).
    env = [f"PATH={PATH_ENV}", "OLLAMA_HOST=0.0.0.0:11434", "HOME=/root", "LD_LIBRARY_PATH=/usr/lib/ollama"]
    return Built([layer], {"Entrypoint": ["/usr/bin/ollama"], "Cmd": ["serve"], "Env": env,
                           "ExposedPorts": {"11434/tcp": {}}})  # fmt: skip


def redis_bin() -> Path:
    # Debian's /usr/bin/redis-server is a link to redis-check-rdb: one binary that acts on argv[0].
    return Path(tools.find("redis-server") or "/usr/bin/redis-server").resolve()


def redis_key(k: Key) -> None:
    binary = redis_bin()
    k.file("redis-server", binary)
    for lib in ldd(binary):
        k.file(f"lib {lib}", lib)


def redis_build(work: Path) -> Built:
    """The chart's Redis (gateway.state.redis) from the redis-server the state store tests use."""

    def fill(fs: Rootfs) -> None:
        fs.binary_with_libs(redis_bin(), "/usr/bin/redis-server", "/usr/lib/redis")

    layer = small_rootfs(work, fill, ["/usr/bin/redis-server", "--version"])
    return Built([layer], {"Entrypoint": ["redis-server"], "Env": [f"PATH={PATH_ENV}"], "WorkingDir": "/data",
                           "ExposedPorts": {"6379/tcp": {}}})  # fmt: skip


# The Roundhouse image: base rootfs (debootstrap) + one layer with the wheels pip installed.


def ensure_debootstrap() -> None:
    """Debian's debootstrap, installed once (apt-get)."""
    if shutil.which("debootstrap") is not None:
        return
    log("installing debootstrap (apt-get)")
    run(str(APT_INSTALL), "debootstrap")


def debootstrap_version() -> str:
    # Installed first: a key computed before the install named no version, and the next call (after it)
    # named one, so one build made two base roots and pruned the one the next layer was built on.
    ensure_debootstrap()
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True)
    return proc.stdout.strip() or "missing"


def base_key() -> str:
    k = Key("debian-base", recipe=False)
    k.text("debootstrap", [DEBIAN_SUITE, "minbase", BASE_PACKAGES, debootstrap_version()])
    return k.hexdigest()


def base_rootfs() -> tuple[Path, Path]:
    """The Debian bookworm minbase rootfs with python3.11 (a directory, and its layer tar), cached."""
    d = CACHE / f"debian-{DEBIAN_SUITE}-py311-{base_key()}"
    rootfs, layer = d / "rootfs", d / "layer.tar"
    if layer.exists():
        return rootfs, layer
    ensure_debootstrap()
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"debootstrap --variant=minbase {DEBIAN_SUITE} (+ {', '.join(BASE_PACKAGES)}): a few minutes, once")
    debs = CACHE / "debootstrap-debs"  # the downloaded .debs: a rebuild of the base needs no download
    debs.mkdir(exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", f"--cache-dir={debs}",
        DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR)  # fmt: skip
    run("chroot", str(rootfs), "apt-get", "clean")
    log(f"debootstrap done in {time.monotonic() - t0:.0f}s")
    write_layer(rootfs, layer, SKIP_IN_LAYER)
    prune(d, f"debian-{DEBIAN_SUITE}-py311-*")
    return rootfs, layer


def deps_key() -> str:
    k = Key("roundhouse-deps", recipe=False)
    k.text("deps", [base_key(), roundhouse_requirements(), PIP_VERSION, ROUNDHOUSE_UID])
    return k.hexdigest()


def roundhouse_key(k: Key) -> None:
    k.text("deps", deps_key())
    k.text("env", [ROUNDHOUSE_UID, ROUNDHOUSE_ENV, ROUNDHOUSE_PORTS])
    for src in ROUNDHOUSE_SOURCES:
        k.tree("src", REPO / src)


def pip(*args: str) -> None:
    py = os.environ.get("ROUNDHOUSE_WHEEL_PYTHON", sys.executable)
    run(py, "-m", "pip", *args, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def project_wheel(wheels: Path) -> None:
    """As the Dockerfile's build stage: `pip wheel --no-deps .` from a clean copy of the sources."""
    with tempfile.TemporaryDirectory() as src:
        for name in ROUNDHOUSE_SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(
                    REPO / name, Path(src) / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                shutil.copy(REPO / name, Path(src) / name)
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), src)


@contextlib.contextmanager
def overlay(lowers: list[Path], upper: Path | None = None) -> Iterator[Path]:
    """`lowers` (first on top) merged with overlayfs; writes go to `upper`, or it is read-only."""
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        merged, work = Path(tmp) / "merged", Path(tmp) / "work"
        merged.mkdir()
        work.mkdir()
        opts = f"lowerdir={':'.join(map(str, lowers))}"
        opts = f"{opts},upperdir={upper},workdir={work}" if upper else f"ro,{opts}"
        run("mount", "-t", "overlay", "overlay", "-o", opts, str(merged))
        try:
            yield merged
        finally:
            run("umount", str(merged))


def chroot_pip_install(lowers: list[Path], upper: Path, wheels: Path, targets: list[str]) -> None:
    """`pip install` (the Dockerfile's flags) run by the image's own python over `lowers`; what it
    writes lands in `upper`, which becomes the layer. pip runs from its own wheel (no pip in the image)."""
    pip_whl = next(wheels.glob("pip-*.whl"))
    with overlay(lowers, upper) as merged:
        inside = merged / WHEELS.lstrip("/")
        inside.mkdir(parents=True)
        run("mount", "--bind", "-o", "ro", str(wheels), str(inside))
        try:
            run(
                "chroot", str(merged), "/usr/bin/python3.11", f"{WHEELS}/{pip_whl.name}/pip",
                *PIP_INSTALL[:-1], *targets, "--quiet",
                # Debian marks its python EXTERNALLY-MANAGED; the python:3.11 image's is not.
                "--break-system-packages", "--no-warn-script-location",
                env={"PATH": PATH_ENV, "HOME": "/root", "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )  # fmt: skip
        finally:
            run("umount", str(inside))
    for junk in ("tmp", "root"):  # the wheel mount point, pip's scratch
        shutil.rmtree(upper / junk, ignore_errors=True)
    whiteouts = [p for p in upper.rglob("*") if p.is_char_device()]
    if whiteouts:
        raise SystemExit(f"pip removed files of a lower layer: {whiteouts[:5]}")


def deps_layer() -> tuple[Path, Path]:
    """The pinned dependencies installed over the base (and the user), cached by what they are."""
    d = CACHE / f"roundhouse-deps-{deps_key()}"
    upper, layer = d / "rootfs", d / "layer.tar"
    if layer.exists():
        return upper, layer
    base, _ = base_rootfs()
    shutil.rmtree(d, ignore_errors=True)
    upper.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        wheels = Path(tmp)
        log("pip wheel: the pinned dependencies")
        (wheels / "requirements.txt").write_text("\n".join(roundhouse_requirements()) + "\n")
        pip("wheel", "--quiet", "--wheel-dir", str(wheels), "-r", str(wheels / "requirements.txt"))
        shutil.copy(pip_wheel(), wheels)
        chroot_pip_install([base], upper, wheels, ["-r", f"{WHEELS}/requirements.txt"])
    fs = Rootfs(upper)
    # The Dockerfile's `useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent`.
    for name in ("passwd", "group"):
        text = (base / "etc" / name).read_text()
        line = (f"roundhouse:x:{ROUNDHOUSE_UID}:{ROUNDHOUSE_UID}::/nonexistent:/usr/sbin/nologin\n" if name == "passwd"
                else f"roundhouse:x:{ROUNDHOUSE_UID}:\n")  # fmt: skip
        fs.write(f"/etc/{name}", (text + line).encode())
    fs.symlink("/usr/bin/python3.11", "/usr/local/bin/python")  # the python:3.11 images have `python`
    fs.symlink("/usr/bin/python3.11", "/usr/local/bin/python3")
    write_layer(upper, layer)
    prune(d, "roundhouse-deps-*")
    return upper, layer


def prune(keep: Path, pattern: str) -> None:
    """Remove the cached builds of `pattern` other than `keep` (their inputs changed)."""
    for old in CACHE.glob(pattern):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def roundhouse_build(work: Path) -> Built:
    """Three layers, as the Dockerfile has them: base system, dependencies, then the project."""
    base, base_layer = base_rootfs()
    deps, deps_tar = deps_layer()
    wheels = work / "wheels"
    wheels.mkdir()
    project_wheel(wheels)
    shutil.copy(pip_wheel(), wheels)
    app = work / "app"
    app.mkdir()
    chroot_pip_install([deps, base], app, wheels, ["roundhouse"])
    layer = work / "app.tar"
    write_layer(app, layer)
    config: dict[str, object] = {
        "Env": [f"PATH={PATH_ENV}", *[f"{k}={v}" for k, v in ROUNDHOUSE_ENV.items()]],
        "User": f"{ROUNDHOUSE_UID}:{ROUNDHOUSE_UID}",
        "WorkingDir": "/nonexistent",
        "ExposedPorts": {f"{p}/tcp": {} for p in ROUNDHOUSE_PORTS},
        "Cmd": ["roundhouse-gateway", "--help"],
    }
    # Smoke test the result: both entrypoints start in the assembled filesystem, as uid 10001.
    with overlay([app, deps, base]) as merged:
        for entry in ("roundhouse-operator", "roundhouse-gateway"):
            run("chroot", "--userspec", f"{ROUNDHOUSE_UID}:{ROUNDHOUSE_UID}", str(merged), f"/usr/local/bin/{entry}",
                "--help", env={"PATH": PATH_ENV, "HOME": "/nonexistent", **ROUNDHOUSE_ENV})  # fmt: skip
    return Built([base_layer, deps_tar, layer], config)


def pip_wheel() -> Path:
    """pip's own wheel (pinned), downloaded once: it runs pip inside the rootfs without installing it."""
    d = CACHE / "pip"
    found = sorted(d.glob(f"pip-{PIP_VERSION}-*.whl"))
    if not found:
        pip("download", "--quiet", "--no-deps", "--dest", str(d), f"pip=={PIP_VERSION}")
        found = sorted(d.glob(f"pip-{PIP_VERSION}-*.whl"))
    return found[0]


def roundhouse_roots() -> list[Path]:
    """The Roundhouse image's lower root filesystems (dependencies, base): python and the simulator's needs."""
    return [deps_layer()[0], base_rootfs()[0]]


def vllm_key(k: Key) -> None:
    roundhouse_key(k)
    for path, (data, mode) in sorted(vllm_standin_files().items()):
        k.text(f"file {path} {oct(mode)}", hashlib.sha256(data).hexdigest())
    # The parser venv is built from pinned versions: its marker names them.
    site = vllm_parser_site()
    k.text("vllm-parser", (site.parent.parent.parent / ".roundhouse-complete").read_text())


def vllm_build(work: Path) -> Built:
    base = oci_layers(build_one("roundhouse"))
    parser = Rootfs(work / "parser")
    site = vllm_parser_site()
    for src in tree_files(site):
        rel = src.relative_to(site)
        if vllm_parser_wanted(rel):
            parser.copy(src, f"{VLLM_PARSER_DIR}/site-packages/{rel}", src.stat().st_mode & 0o755 | 0o644)
    parser_layer = work / "vllm-parser.tar"
    write_layer(parser.root, parser_layer)
    fs = Rootfs(work / "rootfs")
    for path, (data, mode) in vllm_standin_files().items():
        fs.write(path, data, mode)
    layer = work / "enginesim.tar"
    write_layer(fs.root, layer)
    # Smoke test: the shim refuses a command line vLLM refuses, in the assembled image, as uid 10001.
    base_roots = [work / "parser", work / "rootfs"]
    with overlay([*base_roots, *roundhouse_roots()]) as merged:
        env = {"PATH": PATH_ENV, "HOME": "/nonexistent", **ROUNDHOUSE_ENV}
        user = ["chroot", "--userspec", f"{ROUNDHOUSE_UID}:{ROUNDHOUSE_UID}", str(merged)]
        ok = subprocess.run([*user, "/bin/sh", "-c", f"VLLM_PARSER_SITE={VLLM_PARSER_DIR}/site-packages python"
                             f" {VLLM_PARSER_DIR}/vllm_check.py --argv org/m --port 8000"], env=env,
                            capture_output=True, text=True)  # fmt: skip
        bad = subprocess.run([*user, ENGINESIM_SHIMS["vllm"], "serve", "org/m", "--quantization", "marlin"], env=env,
                             capture_output=True, text=True)  # fmt: skip
        if ok.returncode != 0 or bad.returncode != 2 or "Unknown quantization method" not in bad.stderr:
            raise SystemExit(f"vLLM stand-in smoke test failed:\n{ok.stderr[-2000:]}\n{bad.stderr[-2000:]}")
    config = json.loads(json.dumps(base[1]))
    config["Cmd"] = ["python", ENGINESIM_PATH, "--help"]
    return Built([*base[0], parser_layer, layer], config)


def sglang_key(k: Key) -> None:
    roundhouse_key(k)
    for path, (data, mode) in sorted(sglang_standin_files().items()):
        k.text(f"file {path} {oct(mode)}", hashlib.sha256(data).hexdigest())
    site = parser_site("build-sglang-parser.sh", "SGLang's parser")
    k.text("sglang-parser", (site.parent.parent.parent / ".roundhouse-complete").read_text())


def sglang_build(work: Path) -> Built:
    base = oci_layers(build_one("roundhouse"))
    parser = Rootfs(work / "parser")
    site = parser_site("build-sglang-parser.sh", "SGLang's parser")
    for src in tree_files(site):
        rel = src.relative_to(site)
        if "__pycache__" not in rel.parts and rel.suffix not in (".pyc", ".pyo"):
            parser.copy(src, f"{SGLANG_PARSER_DIR}/site-packages/{rel}", src.stat().st_mode & 0o755 | 0o644)
    parser_layer = work / "sglang-parser.tar"
    write_layer(parser.root, parser_layer)
    fs = Rootfs(work / "rootfs")
    for path, (data, mode) in sglang_standin_files().items():
        fs.write(path, data, mode)
    layer = work / "enginesim.tar"
    write_layer(fs.root, layer)
    # Smoke test: the shim refuses what SGLang refuses, in the assembled image, as uid 10001.
    with overlay([work / "parser", work / "rootfs", *roundhouse_roots()]) as merged:
        env = {"PATH": PATH_ENV, "HOME": "/nonexistent", **ROUNDHOUSE_ENV}
        user = ["chroot", "--userspec", f"{ROUNDHOUSE_UID}:{ROUNDHOUSE_UID}", str(merged)]
        check = (f"SGLANG_PARSER_SITE={SGLANG_PARSER_DIR}/site-packages python {SGLANG_PARSER_DIR}/sglang_check.py"
                 " --argv --model-type llm --model-path org/m")  # fmt: skip
        ok = subprocess.run([*user, "/bin/sh", "-c", check], env=env, capture_output=True, text=True)
        bad = subprocess.run([*user, SGLANG_SHIM_PATH, "serve", "--model-path", "org/m", "--quantization", "marlin"],
                             env=env, capture_output=True, text=True)  # fmt: skip
        if ok.returncode != 0 or bad.returncode != 2 or "invalid choice: 'marlin'" not in bad.stderr:
            raise SystemExit(f"SGLang stand-in smoke test failed:\n{ok.stderr[-2000:]}\n{bad.stderr[-2000:]}")
    config = json.loads(json.dumps(base[1]))
    config["Cmd"] = [SGLANG_SHIM_PATH, "serve", "--help"]
    return Built([*base[0], parser_layer, layer], config)


def oci_layers(archive: Path) -> tuple[list[Path], dict[str, object]]:
    """The layers (extracted next to the archive) and the config of an archive we built."""
    d = archive.with_suffix(".layers")
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))  # type: ignore[arg-type]
        config = json.load(tar.extractfile("blobs/sha256/" + manifest["config"]["digest"].split(":")[1]))  # type: ignore[arg-type]
        layers = []
        for desc in manifest["layers"]:
            digest = desc["digest"].split(":")[1]
            p = d / digest
            if not p.exists():
                d.mkdir(exist_ok=True)
                with tar.extractfile(f"blobs/sha256/{digest}") as src, open(p, "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst, 1 << 20)
            layers.append(p)
    return layers, config["config"]


def needs_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (debootstrap, chroot, mount)"


RECIPES = {
    r.name: r
    for r in [
        Recipe("pause", lambda: None, pause_key, pause_build),
        Recipe("llama-server", lambda: missing(llama_server_bin()), llama_key, llama_build),
        Recipe("ollama", lambda: missing(ollama_bin()), ollama_key, ollama_build),
        Recipe("roundhouse", needs_root, roundhouse_key, roundhouse_build),
        Recipe("vllm", needs_root, vllm_key, vllm_build),
        Recipe("sglang", needs_root, sglang_key, sglang_build),
        Recipe("redis", lambda: None if tools.find("redis-server") else tools.message("redis-server"), redis_key,
               redis_build),
    ]
}  # fmt: skip


def archive_path(name: str) -> Path:
    k = Key(name)
    k.text("names", NAMES[name])
    RECIPES[name].key(k)
    return CACHE / f"{name}-{k.hexdigest()}.oci.tar"


def build_one(name: str, force: bool = False) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = archive_path(name)
    if out.exists() and not force:
        log(f"{name}: cached {out.name}")
        return out
    t0 = time.monotonic()
    log(f"{name}: building {out.name}")
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        built = RECIPES[name].build(Path(work))
        write_oci_archive(out, built.layers, built.config, NAMES[name])
    for old in CACHE.glob(f"{name}-*.oci.tar"):  # one archive per image: the current one
        if old != out:
            old.unlink()
            shutil.rmtree(old.with_suffix(".layers"), ignore_errors=True)
    log(f"{name}: built in {time.monotonic() - t0:.1f}s ({out.stat().st_size / 2**20:.0f} MiB)")
    return out


def select(names: list[str]) -> list[str]:
    if names:
        unknown = set(names) - set(RECIPES)
        if unknown:
            raise SystemExit(f"unknown image(s) {sorted(unknown)}; known: {', '.join(RECIPES)}")
        for n in names:
            if why := RECIPES[n].available():
                raise SystemExit(f"{n}: {why}")
        return names
    chosen = []
    for n, r in RECIPES.items():
        if why := r.available():
            log(f"{n}: skipped: {why}")
        else:
            chosen.append(n)
    return chosen


def import_images(archives: list[Path], address: str) -> None:
    for a in archives:
        t0 = time.monotonic()
        run("ctr", "--address", address, "-n", "k8s.io", "images", "import", str(a))
        log(f"imported {a.name} into {address} in {time.monotonic() - t0:.1f}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="build (or reuse) images; prints the archives")
    i = sub.add_parser("import", help="build, then import into a containerd (namespace k8s.io)")
    i.add_argument("--address", required=True, help="containerd socket")
    for s in (b, i):
        s.add_argument("images", nargs="*")
        s.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    sub.add_parser("list", help="images and their names")
    args = p.parse_args(sys.argv[1:] if sys.argv[1:2] and sys.argv[1] in ("build", "import", "list", "-h", "--help")
                        else ["build", *sys.argv[1:]])  # fmt: skip
    if args.cmd == "list":
        for n, names in NAMES.items():
            why = RECIPES[n].available()
            print(f"{n:13} {' '.join(names)}" + (f"   (unavailable: {why})" if why else ""))
        return 0
    archives = [build_one(n, args.force) for n in select(args.images)]
    if args.cmd == "import":
        import_images(archives, args.address)
    for a in archives:
        print(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
