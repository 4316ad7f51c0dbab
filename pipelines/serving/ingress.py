"""The HTTP face of the application: the JSON API and the web page, one FastAPI app.

    POST /v1/segment   multipart: image (file), question, [prompt_mode], [overlay=true]
    GET  /v1/model     what the model deployment serves (name, version, alias, ...)
    GET  /healthz      200 when a model replica answers, 503 otherwise
    GET  /             the page (static files from `web/`, nothing fetched from elsewhere)

The ingress validates and decodes uploads itself, so a bad request never occupies a model
replica; it forwards `SegmentQuery` objects to the model deployment and turns its answers (or
failures) into JSON. Errors are `{"error": "<one line>"}` with a 4xx (the request) or 5xx (the
model or the service) status.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class on the
# route methods that `serve.ingress` re-wraps.
import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.serving.config import ServeConfig
from pipelines.serving.errors import MAX_REASON_CHARS, ModelFailure, one_line
from pipelines.serving.figures import overlay_pictures
from pipelines.serving.queries import RequestError, RequestLimits, read_segment_form

LOG = logging.getLogger("ray.serve")
WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
HEALTH_TIMEOUT_S = 10.0
# The page loads only its own files and shows data: URLs; the browser blocks anything else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def error_response(status: int, reason: str) -> JSONResponse:
    line = " ".join(reason.split())[:MAX_REASON_CHARS]
    return JSONResponse({"error": line}, status_code=status)


api = FastAPI(title="READ reasoning segmentation", docs_url=None, redoc_url=None)


@api.exception_handler(StarletteHTTPException)
async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods answer in the API's error shape too."""
    return error_response(error.status_code, f"{request.method} {request.url.path}: {error.detail}")


def unavailable(error: BaseException) -> bool:
    """Errors that mean "no replica could take the request" (503) rather than a model fault."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    kinds: tuple[type[BaseException], ...] = (
        ray_errors.RayActorError, ray_errors.ActorUnavailableError,
        serve_errors.BackPressureError, serve_errors.DeploymentUnavailableError,
        TimeoutError,
    )
    return isinstance(error, kinds)


def _static(name: str) -> Response:
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
    media = "text/html" if name == "index.html" else STATIC_FILES[name]
    return FileResponse(WEB_DIR / name, media_type=media, headers=headers)


@serve.ingress(api)
class ReadIngress:
    """Validates requests, calls the model deployment, renders answers."""

    def __init__(self, model: Any, settings: ServeConfig, limits: RequestLimits) -> None:
        self._model = model  # DeploymentHandle of ReadModel
        self._settings = settings
        self._limits = limits

    @api.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        try:
            query, overlay = await read_segment_form(request, self._limits)
        except RequestError as error:
            return error_response(error.status, error.reason)
        try:
            result = await self._model.segment.remote(query)
        except ModelFailure as error:  # raised in the replica; Ray wraps it, `cause` is ours
            return error_response(500, str(getattr(error, "cause", None) or error))
        except Exception as error:
            if unavailable(error):
                return error_response(503, f"model unavailable: {one_line(error)}")
            LOG.exception("segment request failed")
            return error_response(500, f"model failed: {one_line(error)}")
        body = result.to_json()
        if overlay:
            body.update(await asyncio.to_thread(overlay_pictures, query.image, result,
                                                self._settings.overlay_max_side))
        return JSONResponse(body)

    @api.get("/v1/model")
    async def model(self) -> Response:
        try:
            description = await asyncio.wait_for(self._model.describe.remote(),
                                                 HEALTH_TIMEOUT_S)
        except Exception as error:
            return error_response(503, f"model unavailable: {one_line(error)}")
        return JSONResponse(description)

    @api.get("/healthz")
    async def healthz(self) -> Response:
        try:
            description = await asyncio.wait_for(self._model.describe.remote(),
                                                 HEALTH_TIMEOUT_S)
        except Exception as error:
            return error_response(503, f"model unavailable: {one_line(error)}")
        if description["version"] is None:
            return error_response(503, f"no model loaded: {description['unusable']}")
        return JSONResponse({"status": "ok", "version": description["version"]})

    @api.get("/")
    async def page(self) -> Response:
        return _static("index.html")

    @api.get("/static/{name}")
    async def static(self, name: str) -> Response:
        if name not in STATIC_FILES:
            return error_response(404, f"no static file {name!r}")
        return _static(name)


INGRESS_MAX_ONGOING_REQUESTS = 256

ReadIngressDeployment = serve.deployment(
    ReadIngress,
    name="ReadIngress",
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
)
