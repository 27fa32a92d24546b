"""The HTTP wire: ASGI types, OpenAI-shaped errors, bodies in and out, request ids, graceful shutdown."""
