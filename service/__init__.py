"""Gatehouse HTTP service: thin FastAPI routes over a transport-neutral data plane."""
