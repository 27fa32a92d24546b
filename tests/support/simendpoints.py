"""The engine simulator's other OpenAI-compatible endpoints, in the shapes the pinned engines answer:
the Responses API (stream and not), rerank, score, tokenize and detokenize. Which flavour serves
which follows each engine's own routes (vLLM 0.33.0: all; llama-server: no score; Ollama: responses).

And vLLM's LoRA adapters, as vLLM 0.33.0 answers: adapters from --lora-modules at start, and with
VLLM_ALLOW_RUNTIME_LORA_UPDATING POST /v1/load_lora_adapter {lora_name, lora_path} and
/v1/unload_lora_adapter {lora_name} (200 with a plain-text "Success: ...", 400 when already loaded, 404
when unknown; a path that cannot be loaded is a 404 "No adapter found"). /v1/models lists each adapter
with `root` (the path it was loaded from) and `parent` (the base)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

ROUTES = {
    "vllm": ("/v1/responses", "/v1/rerank", "/v1/score", "/tokenize", "/detokenize"),
    "llamacpp": ("/v1/responses", "/v1/rerank", "/tokenize", "/detokenize"),
    "ollama": ("/v1/responses",),
    "sglang": ("/v1/responses", "/v1/rerank", "/v1/score", "/tokenize", "/detokenize"),
}


def _tokens(text: str) -> list[int]:
    return [sum(map(ord, w)) % 32000 for w in text.split()] or [1]


def _error(status: int, message: str) -> web.Response:
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                             status=status)  # fmt: skip


class Endpoints:
    """Handlers bound to the simulator's state: its name, models and served counters."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def add_to(self, router: web.UrlDispatcher, flavour: str) -> None:
        handlers = {"/v1/responses": self.responses, "/v1/rerank": self.rerank, "/v1/score": self.score,
                    "/tokenize": self.tokenize, "/detokenize": self.detokenize}  # fmt: skip
        for path in ROUTES.get(flavour, ()):
            router.add_post(path, handlers[path])

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if denied := self.sim.auth(request):
            return denied  # type: ignore[no-any-return]
        body = await request.json()
        self.sim.s.last_request = body
        if body.get("model") not in self.sim.s.models:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        self.sim.s.served += 1
        return body  # type: ignore[no-any-return]

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        text = body["input"] if isinstance(body["input"], str) else json.dumps(body["input"])
        n = min(int(body.get("max_output_tokens") or self.sim.s.knobs.tokens), self.sim.s.knobs.tokens)
        words = self.sim.words(n)
        prompt = len(_tokens(text))
        usage = {"input_tokens": prompt, "output_tokens": n, "total_tokens": prompt + n,
                 "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
        rid, mid = f"resp_{uuid.uuid4().hex[:16]}", f"msg_{uuid.uuid4().hex[:16]}"

        def response(status: str, content: str | None) -> dict[str, Any]:
            output = [] if content is None else [{
                "type": "message", "id": mid, "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": content, "annotations": []}]}]  # fmt: skip
            return {"id": rid, "object": "response", "created_at": int(time.time()), "model": body["model"],
                    "status": status, "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "usage": usage if status == "completed" else None}  # fmt: skip

        if not body.get("stream"):
            return web.json_response(response("completed", "".join(words)), headers={"X-Sim-Name": self.sim.s.name})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Sim-Name": self.sim.s.name})
        await resp.prepare(request)
        seq = iter(range(10**6))

        async def event(kind: str, **data: Any) -> None:
            payload = {"type": kind, "sequence_number": next(seq), **data}
            await resp.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

        await event("response.created", response=response("in_progress", None))
        for w in words:
            await event("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=w,
                        logprobs=[])  # fmt: skip
        await event("response.output_text.done", item_id=mid, output_index=0, content_index=0, text="".join(words),
                    logprobs=[])  # fmt: skip
        await event("response.completed", response=response("completed", "".join(words)))
        await resp.write_eof()
        return resp

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        query, docs = set(str(body["query"]).lower().split()), [str(d) for d in body["documents"]]
        scores = [len(query & set(d.lower().split())) / (1 + len(query)) for d in docs]
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: body.get("top_n") or len(docs)]
        tokens = sum(len(_tokens(d)) for d in docs) + len(query)
        results = [{"index": i, "document": {"text": docs[i]}, "relevance_score": scores[i]} for i in order]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"id": f"rerank-{uuid.uuid4().hex[:12]}", "model": body["model"], "usage": usage,
                                  "results": results})  # fmt: skip

    async def score(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        one = body["text_1"] if isinstance(body["text_1"], list) else [body["text_1"]]
        two = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        if len(one) == 1:
            one = one * len(two)
        if len(one) != len(two):
            return _error(400, "text_1 and text_2 must have the same length, or text_1 one item")
        data = [{"index": i, "object": "score", "score": len(set(a.split()) & set(b.split())) / (1 + len(b.split()))}
                for i, (a, b) in enumerate(zip(one, two, strict=True))]  # fmt: skip
        tokens = sum(len(_tokens(t)) for t in one + two)
        return web.json_response({"id": f"score-{uuid.uuid4().hex[:12]}", "object": "list", "model": body["model"],
                                  "created": int(time.time()), "data": data,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("prompt") if "prompt" in body else body.get("content")
        if text is None:
            text = json.dumps(body.get("messages"))
        tokens = _tokens(str(text))
        if self.sim.s.flavour == "llamacpp":
            return web.json_response({"tokens": tokens})
        return web.json_response({"count": len(tokens), "max_model_len": self.sim.s.knobs.context or 4096,
                                  "tokens": tokens, "token_strs": None})  # fmt: skip

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        text = " ".join(f"t{t}" for t in body["tokens"])
        return web.json_response({"content": text} if self.sim.s.flavour == "llamacpp" else {"prompt": text})


def _lora_error(status: int, message: str, type_: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": status}},
                             status=status)  # fmt: skip


# A lora_path containing this cannot be loaded (vLLM: the directory or repo does not exist).
MISSING = "missing"


class Adapters:
    """Loaded adapters: name -> path, with the handlers that change them."""

    def __init__(self, base: str, modules: dict[str, str] | None = None) -> None:
        self.base = base
        self.loaded: dict[str, str] = dict(modules or {})
        self.calls: list[tuple[str, str]] = []  # (path, lora_name), for tests

    def cards(self) -> list[dict[str, Any]]:
        return [{"id": n, "object": "model", "created": 0, "owned_by": "vllm", "root": p, "parent": self.base}
                for n, p in self.loaded.items()]  # fmt: skip

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        self.calls.append(("load", str(name)))
        if not name or not path:
            return _lora_error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loaded:
            return _lora_error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if MISSING in path:
            return _lora_error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        self.loaded[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("lora_name")
        self.calls.append(("unload", str(name)))
        if not name:
            return _lora_error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in self.loaded:
            return _lora_error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loaded[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/load_lora_adapter", self.load)
        router.add_post("/v1/unload_lora_adapter", self.unload)


def lora_modules(args: list[str]) -> dict[str, str]:
    """`--lora-modules name=path ...` of a vllm serve command line."""
    if "--lora-modules" not in args:
        return {}
    out, i = {}, args.index("--lora-modules") + 1
    while i < len(args) and not args[i].startswith("--"):
        name, _, path = args[i].partition("=")
        out[name] = path
        i += 1
    return out
