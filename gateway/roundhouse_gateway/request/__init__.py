"""A request's way through the gateway, one module per stage, in order:

read (read.py: the body parsed once and checked against the OpenAI shapes, shapes.py and fields.py) ->
admit (admit.py: the key's models, engines and limits) -> decide (decide.py: route, wait for an engine
started on demand, hold during a switch, queue at a cap) -> forward (forward.py: failover until the
first byte, then streaming) -> account (account.py: usage, limits, metrics, the log line).
pipeline.py composes them for the OpenAI endpoints.
"""
