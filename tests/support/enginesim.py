"""A protocol-faithful engine simulator: vLLM, llama.cpp llama-server, Ollama, SGLang and OpenAI flavours.

Runnable as `python -m tests.support.enginesim --flavour vllm --port 8000 --model m`. It serves the
family's endpoints, SSE framing (data: lines, [DONE], usage chunk, llama-server's `: ping`
comments), /metrics names, llama-server's 503 "Loading model", and knobs for latency and
failures. Knobs can be changed at run time with POST /_sim/config {"knob": value}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

try:
    from tests.support.prefixcache import PrefixCache
    from tests.support.simendpoints import Adapters, Endpoints, lora_modules
except ModuleNotFoundError:  # run as a script from its own folder (the images' /opt/enginesim)
    from prefixcache import PrefixCache  # type: ignore[no-redef]
    from simendpoints import Adapters, Endpoints, lora_modules  # type: ignore[no-redef]

FLAVOURS = ("vllm", "llamacpp", "ollama", "sglang", "openai")


@dataclass
class Knobs:
    ttft_ms: float = 0.0  # before the first chunk (stream) or the whole answer (non-stream)
    itl_ms: float = 0.0  # between chunks
    tokens: int = 8  # completion tokens per answer
    fail_status: int = 0  # answer every completion with this status (0: off)
    drop_after: int = -1  # close the connection after this many chunks (-1: off)
    hang: bool = False  # accept, then never answer
    loading: bool = False  # llama-server: 503 Loading model; vLLM: /health refused
    context: int = 0  # refuse prompts longer than this many tokens (0: no limit)
    ping_every_ms: float = 0.0  # llama-server: SSE ': ping' comments while silent
    api_key: str = ""  # openai and sglang (--api-key) flavours: require this Bearer key
    max_concurrency: int = 0  # 503 when more requests than this are in flight (0: no cap)
    prefill_us_per_token: float = 0.0  # uncached prompt tokens cost this, one prompt at a time (0: free)
    cache_tokens: int = 0  # prompt-prefix cache size in tokens (tests/support/prefixcache.py; 0: none)
    vocab: str = ""  # answers are "<vocab>-0 <vocab>-1 ..." (default: the simulator's name): equal vocabs agree
    differ_every: int = 0  # every Nth answer says every other word differently (A/B agreement tests; 0: never)


@dataclass
class State:
    flavour: str
    name: str
    models: list[str]
    knobs: Knobs = field(default_factory=Knobs)
    running: int = 0
    served: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_request: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)
    cached_tokens: int = 0
    prefill: asyncio.Lock = field(default_factory=asyncio.Lock)  # one prefill at a time, like one GPU
    prefilling: int = 0  # requests waiting for or in prefill: the queue the metrics report
    cache: PrefixCache | None = None
    adapters: Adapters | None = None  # vLLM flavour: LoRA adapters (--lora-module, run-time loading)
    runtime_lora: bool = False  # vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING: the load/unload routes exist
    log: list[dict[str, Any]] = field(default_factory=list)  # every completion: id, status, stream, text (/_sim/log)


def estimate_tokens(body: dict[str, Any]) -> int:
    text = json.dumps(body.get("messages") or body.get("prompt") or body.get("input") or "")
    return max(1, len(text) // 4)


def error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status)


class Sim:
    def __init__(self, state: State) -> None:
        self.s = state

    # --- health and discovery ------------------------------------------------------------
    async def health(self, _: web.Request) -> web.Response:
        if self.s.knobs.loading:
            if self.s.flavour == "llamacpp":
                return web.json_response(
                    {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, status=503
                )
            return web.Response(status=503)
        return web.json_response({"status": "ok"}) if self.s.flavour == "llamacpp" else web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        if denied := self.auth(request):
            return denied
        data = [{"id": m, "object": "model", "created": 0, "owned_by": self.s.flavour} for m in self.s.models]
        if self.s.adapters is not None:
            data = [{**d, "root": d["id"], "parent": None} for d in data] + self.s.adapters.cards()
        return web.json_response({"object": "list", "data": data})

    async def ollama_root(self, _: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def ollama_version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    async def ollama_tags(self, _: web.Request) -> web.Response:
        models = [] if self.s.knobs.loading else [{"name": m, "model": m, "size": 4_920_000_000} for m in self.s.models]
        return web.json_response({"models": models})

    async def ollama_pull(self, request: web.Request) -> web.Response:
        """Ollama's pull: the model is on disk afterwards (no bytes move in the simulator)."""
        model = (await request.json()).get("model") or ""
        if model and model not in self.s.models:
            self.s.models.append(model)
        return web.json_response({"status": "success"})

    async def props(self, _: web.Request) -> web.Response:
        ctx = self.s.knobs.context or 4096
        return web.json_response({"default_generation_settings": {"n_ctx": ctx}, "total_slots": 4})

    async def metrics(self, _: web.Request) -> web.Response:
        k = self.s
        waiting = max(0, k.prefilling - 1)  # behind the one prefill under way
        if k.flavour == "vllm":
            lines = [
                f'vllm:num_requests_running{{model_name="{k.models[0]}"}} {k.running - waiting}',
                f'vllm:num_requests_waiting{{model_name="{k.models[0]}"}} {waiting}',
                f'vllm:kv_cache_usage_perc{{model_name="{k.models[0]}"}} {min(1.0, k.running / 32):.3f}',
                f'vllm:prompt_tokens_total{{model_name="{k.models[0]}"}} {k.prompt_tokens}',
                f'vllm:generation_tokens_total{{model_name="{k.models[0]}"}} {k.completion_tokens}',
            ]
        elif k.flavour == "sglang":
            labels = f'model_name="{k.models[0]}",engine_type="unified",tp_rank="0",pp_rank="0"'
            lines = [
                f"sglang:num_running_reqs{{{labels}}} {k.running - waiting}",
                f"sglang:num_queue_reqs{{{labels}}} {waiting}",
                f"sglang:token_usage{{{labels}}} {min(1.0, k.running / 32):.3f}",
                f"sglang:prompt_tokens_total{{{labels}}} {k.prompt_tokens}",
                f"sglang:generation_tokens_total{{{labels}}} {k.completion_tokens}",
            ]
        elif k.flavour == "llamacpp":
            lines = [
                f"llamacpp:requests_processing {k.running - waiting}",
                f"llamacpp:requests_deferred {waiting}",
                f"llamacpp:prompt_tokens_total {k.prompt_tokens}",
                f"llamacpp:tokens_predicted_total {k.completion_tokens}",
                f"llamacpp:n_decode_total {k.completion_tokens}",
            ]
        else:
            return web.Response(status=404)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def config(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            for key, value in (await request.json()).items():
                setattr(self.s.knobs, key, value)
        return web.json_response(
            {
                **asdict(self.s.knobs),
                "served": self.s.served,
                "running": self.s.running,
                "prompt_tokens": self.s.prompt_tokens,
                "cached_tokens": self.s.cached_tokens,
                "last_request": self.s.last_request,
                "last_headers": self.s.last_headers,
            }
        )

    def auth(self, request: web.Request) -> web.Response | None:
        key = self.s.knobs.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return None

    # --- completions -----------------------------------------------------------------------
    async def completion(self, request: web.Request) -> web.StreamResponse:
        if denied := self.auth(request):
            return denied
        k = self.s.knobs
        if k.loading:
            return error(503, "Loading model", "unavailable_error")
        body = await request.json()
        self.s.last_request = body
        self.s.last_headers = dict(request.headers)
        adapters = self.s.adapters.loaded if self.s.adapters else {}
        if body.get("model") not in self.s.models and body.get("model") not in adapters:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model_not_found")
        if k.max_concurrency and self.s.running >= k.max_concurrency:
            return error(503, "server busy", "unavailable_error")
        entry: dict[str, Any] = {
            "id": request.headers.get("X-Request-Id"),
            "status": k.fail_status or 200,
            "shadow": "X-Roundhouse-Shadow" in request.headers,
            "stream": body.get("stream") is True,  # how it was asked: a gateway's copies must not stream
            "tokens": 0,
            "text": "",
        }
        self.s.log.append(entry)
        if k.fail_status:
            return error(k.fail_status, f"simulated failure {k.fail_status}", "server_error")
        prompt = estimate_tokens(body)
        if k.context and prompt > k.context:
            return error(
                400, f"prompt is {prompt} tokens, context is {k.context}", "BadRequestError", "context_length_exceeded"
            )
        if k.hang:
            await asyncio.sleep(3600)
        kind = "chat" if request.path.endswith("chat/completions") else "text"
        self.s.running += 1
        try:
            if request.path.endswith("embeddings"):
                return await self.embeddings(body)
            n = int(body.get("max_tokens") or body.get("max_completion_tokens") or k.tokens)
            n = min(n, k.tokens)
            words = self.words(n)
            entry["tokens"], entry["text"] = n, "".join(words)
            cached = await self.prefill(body)
            self.s.prompt_tokens += prompt
            self.s.completion_tokens += n
            self.s.served += 1
            if body.get("stream"):
                return await self.stream(request, body, kind, prompt, n, cached, words)
            await asyncio.sleep(k.ttft_ms / 1000)
            return web.json_response(self.whole(body, kind, prompt, n, cached, words),
                                     headers={"X-Sim-Name": self.s.name})  # fmt: skip
        finally:
            self.s.running -= 1

    async def prefill(self, body: dict[str, Any]) -> int:
        """The prompt-cache model: cached tokens of this prompt, after paying for the others in turn."""
        k = self.s.knobs
        if not k.prefill_us_per_token and not k.cache_tokens:
            return 0
        if self.s.cache is None or self.s.cache.capacity != k.cache_tokens // 16:
            self.s.cache = PrefixCache(k.cache_tokens)
        text = json.dumps(body.get("messages") or body.get("prompt") or "")
        self.s.prefilling += 1
        try:
            async with self.s.prefill:
                tokens, cached = self.s.cache.admit(text)
                await asyncio.sleep((tokens - cached) * k.prefill_us_per_token / 1e6)
        finally:
            self.s.prefilling -= 1
        self.s.cached_tokens += cached
        return cached

    def words(self, n: int) -> list[str]:
        k = self.s.knobs
        differ = k.differ_every > 0 and len(self.s.log) % k.differ_every == 0  # the log holds this request already
        # Every other word, not all: such an answer is like the usual one in part (similarity 0.5, not 0).
        return [f"{k.vocab or self.s.name}-{'x' if differ and i % 2 else ''}{i} " for i in range(n)]

    async def sim_log(self, _: web.Request) -> web.Response:
        return web.json_response(self.s.log)

    def whole(self, body: dict[str, Any], kind: str, prompt: int, n: int, cached: int = 0,
              words: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        text = "".join(words or self.words(n))
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
                 "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        if kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
                "logprobs": None,
            }
            return {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        return {
            "id": rid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}],
            "usage": usage,
        }

    async def embeddings(self, body: dict[str, Any]) -> web.Response:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, float(i)]} for i in range(len(items))]
        tokens = estimate_tokens(body)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def stream(
        self, request: web.Request, body: dict[str, Any], kind: str, prompt: int, n: int, cached: int = 0,
        words: list[str] | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        k = self.s.knobs
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Sim-Name": self.s.name}
        )
        await resp.prepare(request)
        rid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        await self.wait(resp, k.ttft_ms)
        for i, word in enumerate(words or self.words(n)):
            if k.drop_after >= 0 and i >= k.drop_after:
                assert request.transport is not None
                request.transport.close()  # an engine that dies mid-stream
                return resp
            if i:
                await self.wait(resp, k.itl_ms)
            if kind == "chat":
                delta: dict[str, Any] = {"content": word} if i else {"role": "assistant", "content": word}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
                chunk = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                    "choices": [choice],
                }
            else:
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [{"index": 0, "text": word, "finish_reason": None, "logprobs": None}],
                }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": body["model"],
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "length"}
                if kind == "chat"
                else {"index": 0, "text": "", "finish_reason": "length"}
            ],
        }
        await resp.write(f"data: {json.dumps(last)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
                     "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip
            tail = {
                "id": rid,
                "object": last["object"],
                "created": created,
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def wait(self, resp: web.StreamResponse, ms: float) -> None:
        """Sleep; llama-server sends ': ping' comments on a silent stream."""
        ping = self.s.knobs.ping_every_ms if self.s.flavour == "llamacpp" else 0
        end = time.monotonic() + ms / 1000
        while ping and end - time.monotonic() > ping / 1000:
            await asyncio.sleep(ping / 1000)
            await resp.write(b": ping\n\n")
        await asyncio.sleep(max(0.0, end - time.monotonic()))


def make_app(state: State) -> web.Application:
    sim = Sim(state)
    app = web.Application()
    r = app.router
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r.add_post(path, sim.completion)
    r.add_get("/v1/models", sim.models)
    Endpoints(sim).add_to(r, state.flavour)
    if state.flavour == "vllm":
        state.adapters = state.adapters or Adapters(state.models[0] if state.models else "model")
        if state.runtime_lora:
            state.adapters.add_to(r)
    r.add_route("*", "/_sim/config", sim.config)
    r.add_get("/_sim/log", sim.sim_log)
    if state.flavour in ("vllm", "llamacpp", "sglang"):
        r.add_get("/health", sim.health)
        r.add_get("/metrics", sim.metrics)
    if state.flavour == "sglang":  # SGLang's /ready: 503 until up, like its /health
        r.add_get("/ready", sim.health)
    if state.flavour == "llamacpp":
        r.add_get("/props", sim.props)
    if state.flavour == "ollama":
        r.add_get("/", sim.ollama_root)
        r.add_get("/api/version", sim.ollama_version)
        r.add_get("/api/tags", sim.ollama_tags)
        r.add_post("/api/pull", sim.ollama_pull)
    return app


def shim(engine: str, args: list[str]) -> list[str] | int:
    """Stand in for an engine's own command line, as the operator renders it (simulator image for e2e).

    Returns the simulator's arguments, or an exit status for one-shot CLI calls (ollama list/pull/show).
    """

    def value(flag: str, default: str) -> str:
        return args[args.index(flag) + 1] if flag in args else default

    if engine == "vllm":  # vllm serve <model> --served-model-name a b --host H --port P ...
        names, i = [], args.index("--served-model-name") + 1 if "--served-model-name" in args else len(args)
        while i < len(args) and not args[i].startswith("--"):
            names.append(args[i])
            i += 1
        models = names or [args[1]]
        loras = [a for n, path in lora_modules(args).items() for a in ("--lora-module", f"{n}={path}")]
        return ["--flavour", "vllm", "--host", value("--host", "0.0.0.0"), "--port", value("--port", "8000"),
                *[a for m in models for a in ("--model", m)], *loras]  # fmt: skip
    if engine == "sglang":  # sglang serve --model-type llm --model-path M --served-model-name N --port P ...
        key = ["--api-key", value("--api-key", "")] if "--api-key" in args else []
        return ["--flavour", "sglang", "--host", value("--host", "0.0.0.0"), "--port", value("--port", "30000"),
                "--model", value("--served-model-name", value("--model-path", "model")), *key]  # fmt: skip
    if engine == "llamacpp":  # llama-server --model F --alias a,b --host H --port P ...
        models = value("--alias", Path(value("--model", "model.gguf")).name).split(",")
        return ["--flavour", "llamacpp", "--host", value("--host", "0.0.0.0"), "--port", value("--port", "8080"),
                *[a for m in models for a in ("--model", m)]]  # fmt: skip
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    port = host.rsplit(":", 1)[-1]
    if args[:1] == ["serve"]:
        return ["--flavour", "ollama", "--host", "0.0.0.0", "--port", port]  # models arrive by pull
    base = f"http://127.0.0.1:{port}"
    try:
        if args[:1] == ["list"]:
            urllib.request.urlopen(f"{base}/api/tags", timeout=2).read()
            return 0
        if args[:1] == ["pull"]:
            req = urllib.request.Request(f"{base}/api/pull", data=json.dumps({"model": args[1]}).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            urllib.request.urlopen(req, timeout=5).read()
            return 0
        if args[:1] == ["show"]:
            tags = json.loads(urllib.request.urlopen(f"{base}/api/tags", timeout=2).read())
            return 0 if any(m["name"] == args[1] for m in tags["models"]) else 1
    except OSError:
        return 1
    return 2


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--shim"]:
        result = shim(argv[1], argv[2:])
        if isinstance(result, int):
            raise SystemExit(result)
        argv = result
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--flavour", choices=FLAVOURS, default="vllm")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default="sim")
    p.add_argument("--model", action="append", default=[], help="served model name (repeatable)")
    p.add_argument("--lora-module", action="append", default=[], help="vLLM: an adapter NAME=PATH loaded at start")
    allowed = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")
    p.add_argument("--runtime-lora", type=lambda v: v.lower() in ("1", "true", "yes"), default=allowed,
                   help="vLLM: serve /v1/load_lora_adapter and /v1/unload_lora_adapter, as with "
                   "VLLM_ALLOW_RUNTIME_LORA_UPDATING")  # fmt: skip
    for f in Knobs.__dataclass_fields__.values():
        default = f.default
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default)
    args = p.parse_args(argv)
    knobs = Knobs(**{f: getattr(args, f) for f in Knobs.__dataclass_fields__})
    state = State(args.flavour, args.name, args.model, knobs, runtime_lora=args.runtime_lora)
    if args.flavour == "vllm":
        modules = dict(m.partition("=")[::2] for m in args.lora_module)
        state.adapters = Adapters(args.model[0] if args.model else "model", modules)
    web.run_app(make_app(state), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
