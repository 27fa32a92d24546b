"""Routing decisions: which engines and replicas may serve a request and in what order (route.py, pure),
prefix affinity, exact token counts near a context limit, and mode onDemand's demand reports."""
