"""Routes for operators: ``/health``, ``/ready``, ``/metrics``, the OpenAPI document and its
Swagger UI, and the admin's snapshot and table of processes. Runs in every HTTP worker, and in
the one process of ``--workers 0``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import swagger_ui
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from server import _openapi
from server import _validate as v
from server._cluster import cluster_view
from server._errors import ApiError
from server._port import RemoteCalls, Unauthorized, Unavailable
from server._supervisor import processes as supervised_processes
from server._supervisor import workers_not_up
from server.api._auth import admin
from server.api._deps import NOT_READY_REASON, Deps, call
from server.api._render import json_response, timestamp

PROCESS_STARTED_US = time.time_ns() // 1000
# Swagger UI 5 (it reads OpenAPI 3.1) from the swagger-ui-py package's static files: no CDN.
SWAGGER_UI_STATIC = Path(swagger_ui.__file__).parent / "static"
DOCS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Wallet ledger API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"""


class Operations:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._openapi: bytes | None = None  # built on the first request, then kept

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = json.dumps(_openapi.build()).encode()
        return Response(self._openapi, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        return Response(DOCS_PAGE, media_type="text/html")

    async def scrape(self, request: Request) -> Response:
        return Response(await self._deps.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        port = self._deps.ledger.current
        if port is None:
            return json_response({"status": "recovering", "reason": NOT_READY_REASON}, 503)
        try:
            status = await port.status()
        except (Unavailable, Unauthorized) as error:
            return json_response({"status": "unavailable", "reason": str(error)}, 503)
        if status.reason is not None:
            state = "unavailable" if isinstance(port, RemoteCalls) else "failed"
            return json_response({"status": state, "reason": status.reason}, 503)
        data_dir = self._deps.data_dir
        starting = None if data_dir is None or not isinstance(port, RemoteCalls) else workers_not_up(data_dir)
        if starting is not None:
            return json_response({"status": "starting", "reason": starting}, 503)
        return json_response({"status": "ready", "durable_lsn": status.durable_lsn})

    async def processes(self, request: Request) -> Response:
        """Admin: the supervisor's table of processes (``--workers N``), or this one process."""
        await admin(self._deps, request)
        v.query(request, set())
        data_dir = self._deps.data_dir
        items = [] if data_dir is None else supervised_processes(data_dir)
        if not items:
            items = [{"role": "ledger", "pid": os.getpid(), "started_at": timestamp(PROCESS_STARTED_US),
                      "restarts": 0}]
        return json_response({"items": [
            {"role": item["role"], "pid": item["pid"], "started_at": item["started_at"],
             "restarts": item["restarts"]} for item in items
        ]})

    async def cluster(self, request: Request) -> Response:
        """Admin: the cluster's groups, their owners and standbys, and the log's nodes (from
        ``wallet cluster up``'s files on this host, else from NATS); 404 ``not_found`` outside a
        cluster."""
        await admin(self._deps, request)
        v.query(request, set())
        data_dir = self._deps.data_dir
        view = None if data_dir is None else cluster_view(data_dir)
        if view is None and self._deps.cluster is not None:
            view = await self._deps.cluster()
        if view is None:
            raise ApiError(404, "not_found", "Not found", "this server is not part of a cluster (wallet cluster up)")
        return json_response(view)

    async def take_snapshot(self, request: Request) -> Response:
        """Admin: snapshot the durable ledger now (in a child process) and compact the log."""
        await admin(self._deps, request)
        v.fields(await v.json_object(request, optional=True), {})
        lsn, last_lsn = await call(self._deps.port().take_snapshot())
        if lsn is None:
            return json_response({"lsn": last_lsn, "taken": False})
        return json_response({"lsn": lsn, "taken": True}, 201)
