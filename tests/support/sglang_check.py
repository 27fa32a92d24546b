"""Check `sglang serve` command lines with SGLang's own argument handling.

Run by the python of the venv that hack/build-sglang-parser.sh builds:

    python tests/support/sglang_check.py < lines.jsonl   # one JSON list (the args after "sglang serve") per line
    python tests/support/sglang_check.py --argv ARGS...  # one command line, as the stand-in image's shim

For each command line it prints one JSON line: {"ok": bool, "stage": str|null, "error": str|null,
"parsed": {...}}. What runs is SGLang's code, in the order `sglang serve` runs it:
  1. backend: sglang.cli.serve's own `_extract_model_type_override` takes `--model-type` out, and
     its backend registry must know the name (the rendered `llm` skips auto-detection);
  2. parse: `prepare_server_args` (sglang.srt.server_args), the parser and ServerArgs that
     `sglang serve` hands to run_server.
What follows in run_server (resolve_once) reads the model's Hugging Face config and needs a GPU.

Stand-ins (no GPU here, and the venv has neither torch, triton nor IPython): torch is vllm_check.py's
permissive fake module, with torch.cuda saying one GPU is there (what an engine pod sees), and no
NPU, HPU, MPS or MUSA; triton and IPython are the same kind of fake module.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# In the SGLang stand-in image the parser's packages sit in a directory of their own, ahead of the image's.
if os.environ.get("SGLANG_PARSER_SITE"):
    import site

    sys.path.insert(0, os.environ["SGLANG_PARSER_SITE"])
    site.addsitedir(os.environ["SGLANG_PARSER_SITE"])

import vllm_check  # the torch stand-in, next to this file

os.environ.setdefault("SGLANG_LOG_LEVEL", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GIB = 1 << 30
ABSENT = {"npu", "hpu", "mps", "musa"}  # sglang tests hasattr(torch, ...) for these accelerators
PARSED_FIELDS = (
    "model_path", "served_model_name", "host", "port", "tp_size", "dp_size", "pp_size", "context_length",
    "mem_fraction_static", "max_running_requests", "chunked_prefill_size", "kv_cache_dtype", "quantization",
    "enable_metrics", "api_key", "revision", "enable_lora", "lora_paths",
)  # fmt: skip
STUBS: list[str] = []


class _Torch(vllm_check._FakeModule):
    def __getattr__(self, name: str) -> object:
        if name in ABSENT:
            raise AttributeError(name)
        return super().__getattr__(name)


class _Device:
    name, total_memory, major, minor, multi_processor_count = "NVIDIA H200", 141 * GIB, 9, 0, 132


def _cuda() -> types.ModuleType:
    cuda = vllm_check._FakeModule("torch.cuda")
    cuda.__path__ = []  # type: ignore[attr-defined]
    cuda.is_available = lambda: True  # type: ignore[attr-defined]
    cuda.device_count = lambda: 1  # type: ignore[attr-defined]
    cuda.current_device = lambda: 0  # type: ignore[attr-defined]
    cuda.get_device_name = lambda *a: _Device.name  # type: ignore[attr-defined]
    cuda.get_device_capability = lambda *a: (_Device.major, _Device.minor)  # type: ignore[attr-defined]
    cuda.get_device_properties = lambda *a: _Device()  # type: ignore[attr-defined]
    cuda.mem_get_info = lambda *a: (140 * GIB, _Device.total_memory)  # type: ignore[attr-defined]
    return cuda


class _Stub(vllm_check._TorchStub):
    """vllm_check's torch, as a GPU pod sees it, and fake triton and IPython packages."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        if not (spec.name == "torch" or spec.name.startswith("torch.")):
            m = vllm_check._FakeModule(spec.name)
            m.__path__ = []
            m.__version__ = "3.6.0"
            return m
        m = super().create_module(spec)
        if spec.name == "torch":
            m.__class__ = _Torch
            m.cuda = sys.modules["torch.cuda"] = _cuda()
        elif spec.name == "torch.version":
            m.cuda, m.musa = "12.9", None
        return m


def _install_stand_ins() -> None:
    # sglang subclasses torch.nn.Module together with ABC, and takes int() of torch enums.
    meta = vllm_check._FakeMeta
    assert issubclass(meta, abc.ABCMeta) and hasattr(meta, "__int__"), "vllm_check's stand-in changed"
    names = [n for n in ("torch", "triton", "IPython") if importlib.util.find_spec(n) is None]
    if names:
        sys.meta_path.append(_Stub(names))
        STUBS.extend(names)


class Checker:
    def __init__(self) -> None:
        _install_stand_ins()
        with contextlib.redirect_stdout(sys.stderr):
            import sglang
            from sglang.cli import serve
            from sglang.srt.server_args import prepare_server_args

        self.version = sglang.__version__
        self.serve = serve
        self.registry = serve._create_backend_registry()
        self.prepare_server_args = prepare_server_args

    def check(self, argv: list[str]) -> dict[str, object]:
        out: dict[str, object] = {"ok": False, "stage": "backend", "error": None, "parsed": {}}
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            out["error"] = "input must be a JSON list of strings"
            return out
        try:
            backend, argv = self.serve._extract_model_type_override(argv)
            if backend != "auto":
                self.registry.get(backend)
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        out["backend"] = backend
        out["stage"] = "parse"
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
                args = self.prepare_server_args(list(argv))
        except SystemExit as e:
            lines = [ln for ln in err.getvalue().splitlines() if ": error: " in ln]
            out["error"] = (lines[-1].split(": error: ", 1)[1] if lines else err.getvalue().strip()) or f"exit {e.code}"
            return out
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        out["parsed"] = {f: vllm_check._jsonable(getattr(args, f, None)) for f in PARSED_FIELDS}
        out.update(ok=True, stage=None)
        return out


def main() -> int:
    checker = Checker()
    if sys.argv[1:2] == ["--argv"]:
        # One command line as a process gets it (the stand-in's entrypoint): refuse it as sglang would.
        res = checker.check(sys.argv[2:])
        print(json.dumps(res), file=sys.stderr, flush=True)
        if not res["ok"]:
            print(f"sglang serve: error: {res['stage']}: {res['error']}", file=sys.stderr, flush=True)
        return 0 if res["ok"] else 2
    for raw in [ln for ln in sys.stdin if ln.strip()]:
        try:
            res = checker.check(json.loads(raw))
        except json.JSONDecodeError as e:
            res = {"ok": False, "stage": "input", "error": f"bad JSON: {e}", "parsed": {}}
        res["sglang"] = checker.version
        res["stubbed"] = STUBS
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
