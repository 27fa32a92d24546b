"""The engines as this gateway sees them: the catalog (plain data), each replica's health, load and
requests in flight (fleet.py), the probes, and the HTTP client that reaches them."""
