"""Check the operator's run-time adapter calls against vLLM's own code (run by the vLLM parser venv's
python, as vllm_check.py is):

    python tests/support/vllm_lora_check.py < '{"load": {...}, "unload": {...}}'

It prints one JSON object: the routes vLLM's API server attaches for LoRA without and with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 (entrypoints/serve/lora/api_router.attach_router on a FastAPI app),
the two request bodies as vLLM's own request models read them, and the fields of the ModelCard that
/v1/models lists an adapter with. Stand-ins: vllm_check.py's (no torch), and the declared dependency
model_hosting_container_standards (SageMaker's adapter-handler registration, which only wraps the
route functions) as pass-through decorators.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vllm_check


def _stand_in_sagemaker() -> None:
    def register(**_: Any) -> Any:
        return lambda fn: fn

    package = types.ModuleType("model_hosting_container_standards")
    sagemaker = types.ModuleType("model_hosting_container_standards.sagemaker")
    sagemaker.register_load_adapter_handler = register  # type: ignore[attr-defined]
    sagemaker.register_unload_adapter_handler = register  # type: ignore[attr-defined]
    package.sagemaker = sagemaker  # type: ignore[attr-defined]
    sys.modules.setdefault("model_hosting_container_standards", package)
    sys.modules.setdefault("model_hosting_container_standards.sagemaker", sagemaker)


def _routes(app: Any) -> list[list[Any]]:
    return sorted([r.path, sorted(getattr(r, "methods", None) or [])] for r in app.routes if "lora" in r.path)


def main() -> int:
    vllm_check._install_stand_ins("cuda")
    _stand_in_sagemaker()
    from fastapi import FastAPI
    from vllm.entrypoints.serve.engine.protocol import ModelCard
    from vllm.entrypoints.serve.lora import api_router
    from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

    bodies = json.loads(sys.stdin.read())
    out: dict[str, Any] = {}
    os.environ.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    app = FastAPI()
    api_router.attach_router(app)
    out["routes_without_env"] = _routes(app)
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    app = FastAPI()
    api_router.attach_router(app)
    out["routes_with_env"] = _routes(app)
    out["load"] = LoadLoRAAdapterRequest(**bodies["load"]).model_dump()
    out["unload"] = UnloadLoRAAdapterRequest(**bodies["unload"]).model_dump()
    out["model_card_fields"] = sorted(ModelCard.model_fields)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
