"""Thin HTTP routers, one module per area: parse, call the data plane, shape the answer."""
