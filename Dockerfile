# One image, two entrypoints: roundhouse-operator and roundhouse-gateway.
# Build: docker build -t roundhouse:dev .   (target enginesim: the engine simulator for kind e2e tests)
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, in their own layer: they change far less often than the code.
COPY pyproject.toml README.md ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
RUN pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
COPY crds ./crds
COPY operator ./operator
COPY gateway ./gateway
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels roundhouse \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent roundhouse
# Not the source tree: the package is installed as a wheel; nothing is written at run time.
WORKDIR /nonexistent
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT []
CMD ["roundhouse-gateway", "--help"]

# Engine simulator image for kind end-to-end tests: the same runtime plus the simulator.
# The operator renders each engine's own command line; shims named like the engines' binaries
# (vllm, /app/llama-server, ollama) start the simulator with the same flags.
FROM runtime AS enginesim
USER 0
COPY tests/support/enginesim.py tests/support/prefixcache.py tests/support/simendpoints.py /opt/enginesim/
RUN for e in vllm:/usr/local/bin/vllm llamacpp:/app/llama-server ollama:/usr/local/bin/ollama; do \
      mkdir -p "$(dirname "${e#*:}")"; \
      printf '#!/bin/sh\nexec python /opt/enginesim/enginesim.py --shim %s "$@"\n' "${e%%:*}" > "${e#*:}"; \
      chmod 755 "${e#*:}"; \
    done
USER 10001:10001
CMD ["python", "/opt/enginesim/enginesim.py", "--help"]
