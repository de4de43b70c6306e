"""The Gate explorer web page, offline API docs, server-side gate pictures, and CORS.

Everything the page shows comes from the public HTTP API; this package only ships the page's
files and a few endpoints that exist for people rather than programs.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..settings import Settings
from . import comparison, docs, pages, pictures


def install(app: FastAPI, settings: Settings) -> None:
    # The report before the pages: `/ui/{view}` would take its path for a view name.
    for module in (comparison, pages, docs, pictures):
        app.include_router(module.router)
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
            expose_headers=["retry-after", "location", "x-request-id"],
            max_age=600,
        )
