"""Check `vllm serve` command lines with vLLM's own argument parser.

Run by the python of the venv that hack/build-vllm-parser.sh builds:

    python tests/support/vllm_check.py '<json list of argv after "vllm serve">'
    python tests/support/vllm_check.py < lines.jsonl   # one JSON list per line

For each command line it prints one JSON line:
    {"ok": bool, "stage": str|null, "error": str|null, "parsed": {...},
     "checks": {...}}

What runs is vLLM's code, in the order `vllm serve` runs it:
  1. parse: vLLM's top-level FlexibleArgumentParser with the real `serve`
     subcommand (ServeSubcommand.subparser_init -> make_arg_parser, i.e.
     FrontendArgs + AsyncEngineArgs.add_cli_args), parsing ["serve", *argv]
     (that is what moves `--model` to the positional model tag, etc.);
  2. validate: ServeSubcommand.validate (validate_parsed_serve_args), which
     vllm's main() runs right after parsing;
  3. api_server: validate_api_server_args, which setup_server runs before it
     binds the port (unknown --tool-call-parser / --reasoning-parser);
  4. engine_args: AsyncEngineArgs.from_cli_args (EngineArgs.__post_init__);
  5. quantization: ModelConfig._verify_quantization on a stand-in self whose
     model has no quantization_config of its own (the parser takes any
     string for --quantization);
  6. kv_cache_dtype: CacheConfig's field validator for --kv-cache-dtype
     (likewise any string at parse time);
  7. scheduler: vLLM's SchedulerConfig built as create_engine_config builds
     it, only where the command line itself fixes the numbers it checks
     (--max-model-len as a number and --max-num-batched-tokens). The rest of
     create_engine_config needs the model's HF config and a GPU, so it does
     not run here.

Stand-ins (this machine has no GPU and the venv has no torch):
  * torch (only when no real torch is importable): a permissive fake module,
    see _TorchStub below. vLLM imports torch at import time all over; the
    code paths above never compute with it.
  * vllm._C_stable_libtorch / vllm._qutlass_C: vLLM's compiled CUDA kernels
    (need a real libtorch); replaced by empty modules so that vLLM's real
    CudaPlatform class can be imported.
  * platform detection: forced to vllm.platforms.cuda.CudaPlatform (what a
    GPU pod gets; it changes e.g. the --mm-processor-device choices).
    VLLM_CHECK_PLATFORM=cpu uses vLLM's CpuPlatform instead, =auto leaves
    vLLM's own detection alone.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import types

# Keep stdout for our JSON lines, and keep vLLM and its libraries quiet,
# offline and from compiling anything.
# In the vLLM stand-in image the parser's packages sit in a directory of their own, ahead of the
# image's (its .pth files processed too).
if os.environ.get("VLLM_PARSER_SITE"):
    import site

    sys.path.insert(0, os.environ["VLLM_PARSER_SITE"])
    site.addsitedir(os.environ["VLLM_PARSER_SITE"])

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_TORCH_VERSION = "2.14.0"  # what vllm 0.33.0 pins (torch==2.14.0)


# --------------------------------------------------------------------------
# torch stand-in
# --------------------------------------------------------------------------
class _FakeMeta(abc.ABCMeta):
    """Every attribute of the fake torch is a class of this metaclass: it can
    be subclassed (torch.nn.Module, also together with ABC: hence ABCMeta),
    used in annotations (X | None), called (returns an instance; with one
    function argument and no keywords it is a decorator and hands the function
    back), taken int() of (torch enums), and has attributes of its own."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        sub = _FakeMeta(
            name,
            (_Fake,),
            {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.{name}"},
        )
        type.__setattr__(cls, name, sub)
        return sub

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], (_Fake, _FakeMeta)):
            return args[0]
        return type.__call__(cls)

    def __getitem__(cls, item):
        return cls

    def __int__(cls):
        return 0

    __index__ = __int__

    def __float__(cls):
        return 0.0

    def __repr__(cls):
        return f"<torch stub {cls.__module__}.{cls.__qualname__}>"


class _Fake(metaclass=_FakeMeta):
    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(type(self), name)()

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return type(self)()

    def __bool__(self):  # torch.cuda.is_available() and friends: False
        return False

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __int__(self):
        return 0

    __index__ = __int__

    def __float__(self):
        return 0.0

    def __getitem__(self, k):
        return type(self)()

    def _same(self, *a):
        return self

    def _other(self, other):
        return other if isinstance(other, str) else self

    __add__ = __sub__ = __mul__ = __truediv__ = __floordiv__ = __mod__ = _same
    __pow__ = __and__ = __or__ = __xor__ = __neg__ = __pos__ = __invert__ = _same
    __radd__ = _other
    __rsub__ = __rmul__ = __rtruediv__ = __rfloordiv__ = __rmod__ = __rpow__ = _same

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _IInfo:
    _BITS = {
        "int8": 8,
        "uint8": 8,
        "int16": 16,
        "short": 16,
        "uint16": 16,
        "int32": 32,
        "int": 32,
        "uint32": 32,
        "int64": 64,
        "long": 64,
        "uint64": 64,
    }

    def __init__(self, dtype):
        name = getattr(dtype, "__name__", str(dtype))
        self.bits = self._BITS.get(name, 64)
        unsigned = name.startswith("uint")
        self.min = 0 if unsigned else -(2 ** (self.bits - 1))
        self.max = 2**self.bits - 1 if unsigned else 2 ** (self.bits - 1) - 1
        self.dtype = name


class _FInfo:
    _INFO = {
        "float16": (65504.0, 6.103515625e-05, 0.0009765625, 16),
        "half": (65504.0, 6.103515625e-05, 0.0009765625, 16),
        "bfloat16": (3.3895313892515355e38, 1.1754943508222875e-38, 0.0078125, 16),
        "float32": (3.4028234663852886e38, 1.1754943508222875e-38, 1.1920928955078125e-07, 32),
        "float": (3.4028234663852886e38, 1.1754943508222875e-38, 1.1920928955078125e-07, 32),
    }

    def __init__(self, dtype=None):
        name = getattr(dtype, "__name__", "float32")
        mx, tiny, eps, bits = self._INFO.get(
            name, (1.7976931348623157e308, 2.2250738585072014e-308, 2.220446049250313e-16, 64)
        )
        self.max, self.min, self.tiny, self.smallest_normal = mx, -mx, tiny, tiny
        self.eps, self.bits, self.dtype = eps, bits, name


def _infer_schema(fn, *args, mutates_args=(), **kwargs):
    """Stand-in for torch.library.infer_schema: "(params) -> returns", equal
    for functions with equal names, annotations and defaults (vLLM's IR op
    registry compares these strings), one Tensor per returned value."""
    import inspect
    import typing

    sig = inspect.signature(fn)
    params = ", ".join(
        f"{p.name}: {p.annotation!r}" + ("" if p.default is p.empty else f" = {p.default!r}")
        for p in sig.parameters.values()
    )
    ret = sig.return_annotation
    if ret in (None, type(None), sig.empty):
        rets = "()"
    elif typing.get_origin(ret) is tuple:
        rets = "(" + ", ".join("Tensor" for _ in typing.get_args(ret)) + ")"
    else:
        rets = "Tensor"
    return f"({params}) -> {rets}"


class _FakeModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        sub = _FakeMeta(name, (_Fake,), {"__module__": self.__name__, "__qualname__": name})
        setattr(self, name, sub)
        return sub


class _TorchStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torch` and every `torch.*` submodule as a _FakeModule."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _FakeModule(spec.name)
        m.__path__ = []
        if spec.name == "torch":
            m.__version__ = _TORCH_VERSION
            m.iinfo = _IInfo
            m.finfo = _FInfo
        elif spec.name == "torch.library":
            m.infer_schema = _infer_schema
        elif spec.name == "torch.version":
            m.__version__ = _TORCH_VERSION
            m.cuda = m.hip = m.xpu = None
        return m

    def exec_module(self, module):
        pass


STUBS: list[str] = []


def _install_stand_ins(platform: str) -> None:
    if importlib.util.find_spec("torch") is None:
        sys.meta_path.append(_TorchStub())
        STUBS.append("torch")
    if platform == "cpu":
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    if platform == "cuda":
        for name in ("vllm._C_stable_libtorch", "vllm._qutlass_C"):
            if "torch" in STUBS or importlib.util.find_spec(name) is None:
                sys.modules[name] = types.ModuleType(name)
                STUBS.append(name)
        import vllm.platforms as platforms

        # Before anything resolves current_platform (some modules bind it at
        # import time): a GPU pod's platform, with vLLM's own class.
        platforms.resolve_current_platform_cls_qualname = lambda: "vllm.platforms.cuda.CudaPlatform"
        STUBS.append("platform detection -> vllm.platforms.cuda.CudaPlatform")


# --------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------
PARSED_FIELDS = (
    "model_tag",
    "model",
    "served_model_name",
    "host",
    "port",
    "uds",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "quantization",
    "dtype",
    "kv_cache_dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "enable_auto_tool_choice",
    "tool_call_parser",
    "reasoning_parser",
    "api_key",
    "trust_remote_code",
    "enforce_eager",
    "download_dir",
    "hf_token",
    "lora_modules",
    "chat_template",
    "headless",
    "api_server_count",
    "seed",
    "swap_space",
    "cpu_offload_gb",
    "block_size",
    "revision",
    "tokenizer",
    "disable_log_stats",
    "enable_log_requests",
    "enable_lora",
    "max_loras",
    "max_lora_rank",
    "lora_modules",
)


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _message(e: Exception) -> str:
    """ "Type: message"; a pydantic ValidationError from a vLLM config's
    validator becomes the validator's own ValueError message."""
    errors = getattr(e, "errors", None)
    if type(e).__name__ == "ValidationError" and callable(errors):
        try:
            msgs = [err.get("msg", "") for err in errors()]
        except Exception:
            msgs = []
        if msgs:
            return "ValueError: " + "; ".join(m.removeprefix("Value error, ") for m in msgs)
    return f"{type(e).__name__}: {e}"


class Checker:
    def __init__(self) -> None:
        platform = os.environ.get("VLLM_CHECK_PLATFORM", "cuda")
        _install_stand_ins(platform)
        # vLLM's own modules from here on.
        import vllm
        import vllm.entrypoints.cli.serve as serve
        from vllm.entrypoints.common.cli_args import validate_api_server_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self.vllm_version = vllm.__version__
        # As vllm.entrypoints.cli.main.main() builds it (only the serve
        # subcommand is registered; the others do not change how `serve ...`
        # parses).
        parser = FlexibleArgumentParser(description="vLLM CLI")
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        self.cmds = {}
        for cmd in serve.cmd_init():
            cmd.subparser_init(subparsers).set_defaults(dispatch_function=cmd.cmd)
            self.cmds[cmd.name] = cmd
        self.parser = parser
        self.validate_api_server_args = validate_api_server_args
        from vllm.platforms import current_platform

        self.platform = type(current_platform).__name__

    def check(self, argv: list[str]) -> dict:
        out: dict = {"ok": False, "stage": "parse", "error": None, "parsed": {}, "checks": {}}
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            out["error"] = "input must be a JSON list of strings"
            return out
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
                args = self.parser.parse_args(["serve", *argv])
        except SystemExit as e:
            msg = err.getvalue().strip()
            lines = [ln for ln in msg.splitlines() if ": error: " in ln]
            out["error"] = (lines[-1].split(": error: ", 1)[1] if lines else msg) or f"exit {e.code}"
            if e.code == 0:  # --help / --version
                out.update(ok=True, stage=None, error=None)
            return out
        except Exception as e:  # FlexibleArgumentParser raises ValueError itself
            out["error"] = f"{type(e).__name__}: {e}"
            return out

        # ServeSubcommand.cmd: the positional model tag wins over --model.
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        out["parsed"] = {f: _jsonable(getattr(args, f)) for f in PARSED_FIELDS if hasattr(args, f)}

        stages = [
            ("validate", lambda: self.cmds[args.subparser].validate(args)),
            ("api_server", lambda: self.validate_api_server_args(args)),
            ("engine_args", lambda: self._engine_args(args, out)),
            ("quantization", lambda: self._quantization(out)),
            ("kv_cache_dtype", lambda: self._kv_cache_dtype(out)),
            ("scheduler", lambda: self._scheduler(out)),
        ]
        for stage, fn in stages:
            out["stage"] = stage
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    fn()
            except SystemExit as e:
                out["error"] = f"SystemExit: {e.code}"
                return out
            except Exception as e:
                out["error"] = _message(e)
                return out
            out["checks"].setdefault(stage, "ok")
        out.update(ok=True, stage=None)
        return out

    def _engine_args(self, args, out) -> None:
        import vllm

        self._eargs = vllm.AsyncEngineArgs.from_cli_args(args)

    def _quantization(self, out) -> None:
        """ModelConfig._verify_quantization (vLLM's method, run on a stand-in
        `self`): --quantization against vLLM's QUANTIZATION_METHODS, the
        platform's verify_quantization and the deprecated list. The model's
        own quantization_config (from its HF config) is not known here and is
        taken as absent."""
        from vllm.config.model import ModelConfig

        ea = self._eargs
        stand_in = types.SimpleNamespace(
            quantization=ea.quantization,
            allow_deprecated_quantization=getattr(ea, "allow_deprecated_quantization", False),
            model_arch_config=types.SimpleNamespace(quantization_config=None),
        )
        ModelConfig._verify_quantization(stand_in)
        if ea.quantization is None:
            out["checks"]["quantization"] = "ok (none given)"

    def _kv_cache_dtype(self, out) -> None:
        """CacheConfig's own field validator for --kv-cache-dtype (the parser
        takes any string; CacheConfig rejects unknown ones at start-up)."""
        from vllm.config.cache import CacheConfig

        CacheConfig._validate_cache_dtype(self._eargs.kv_cache_dtype)

    def _scheduler(self, out) -> None:
        """SchedulerConfig as EngineArgs.create_engine_config builds it, for
        the values the command line fixes; a default that depends on the
        model or the GPU is not guessed, and the check is then skipped."""
        from vllm.config import SchedulerConfig

        ea = self._eargs
        mml = ea.max_model_len
        if not isinstance(mml, int) or mml <= 0:
            out["checks"]["scheduler"] = "skipped: --max-model-len not given as a number (comes from the model)"
            return
        if ea.max_num_batched_tokens is None:
            out["checks"]["scheduler"] = "skipped: --max-num-batched-tokens not given (its default depends on the GPU)"
            return
        chunked = ea.enable_chunked_prefill
        note = ""
        if chunked is None:
            # ModelConfig.is_chunked_prefill_supported: True for decoder-only
            # generative models, what this check assumes.
            chunked, note = True, " (chunked prefill assumed on: model default)"
        max_num_seqs = ea.max_num_seqs
        if max_num_seqs is None:
            # _set_default_max_num_seqs_and_batched_tokens_args caps the
            # default at max_num_batched_tokens.
            max_num_seqs = min(SchedulerConfig.DEFAULT_MAX_NUM_SEQS, ea.max_num_batched_tokens)
        SchedulerConfig(
            runner_type="generate",
            max_num_batched_tokens=ea.max_num_batched_tokens,
            max_num_scheduled_tokens=ea.max_num_scheduled_tokens,
            max_num_seqs=max_num_seqs,
            max_num_active_seqs=ea.max_num_active_seqs,
            max_num_queued_reqs=ea.max_num_queued_reqs,
            max_num_queued_tokens=ea.max_num_queued_tokens,
            max_model_len=mml,
            enable_chunked_prefill=chunked,
            disable_chunked_mm_input=ea.disable_chunked_mm_input,
            is_multimodal_model=False,
            is_encoder_decoder=False,
            policy=ea.scheduling_policy,
            scheduler_cls=ea.scheduler_cls,
            long_prefill_token_threshold=ea.long_prefill_token_threshold,
            long_prefill_token_threshold_adaptive=ea.long_prefill_token_threshold_adaptive,
            scheduler_reserve_full_isl=ea.scheduler_reserve_full_isl,
            watermark=ea.watermark,
            prefill_schedule_interval=ea.prefill_schedule_interval,
            disable_hybrid_kv_cache_manager=ea.disable_hybrid_kv_cache_manager,
            async_scheduling=ea.async_scheduling,
            stream_interval=ea.stream_interval,
        )
        out["checks"]["scheduler"] = "ok" + note


def main() -> int:
    checker = Checker()
    if sys.argv[1:2] == ["--argv"]:
        # One command line as a process gets it (the vLLM stand-in's entrypoint): refuse it as vllm would.
        res = checker.check(sys.argv[2:])
        print(json.dumps(res), file=sys.stderr, flush=True)
        if not res["ok"]:
            print(f"vllm: error: {res['stage']}: {res['error']}", file=sys.stderr, flush=True)
        return 0 if res["ok"] else 2
    inputs = sys.argv[1:] if len(sys.argv) > 1 else [ln for ln in sys.stdin if ln.strip()]
    for raw in inputs:
        try:
            argv = json.loads(raw)
        except json.JSONDecodeError as e:
            res = {"ok": False, "stage": "input", "error": f"bad JSON: {e}", "parsed": {}, "checks": {}}
        else:
            res = checker.check(argv)
        res["vllm"] = checker.vllm_version
        res["platform"] = checker.platform
        res["stubbed"] = STUBS
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
