"""Every error a client sees is JSON: {"error": message, "status": code}, with the right status."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.http_input import HTTPError
from serve import get_logger

logger = get_logger(__name__)


# A 503 says "not now": when to try again, for clients and load balancers that honour it.
RETRY_AFTER_S = 5


def json_error(status: int, message: str, retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s or RETRY_AFTER_S)))} if status in (429, 503) else None
    if status == 401:  # RFC 6750: says which scheme the client should have used
        headers = {"WWW-Authenticate": 'Bearer realm="orders"'}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class BarePrefixIsRoot:
    """ASGI middleware: a request for an application's bare route prefix (POST /styles/x) reaches it
    as the empty path, which no route can match and Starlette would answer with a redirect that makes
    clients send the body twice; it is routed as "/" instead."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("root_path") and scope["path"] == scope["root_path"]:
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
        await self.app(scope, receive, send)


def json_errors_api() -> FastAPI:
    """A FastAPI app whose own errors (404, 405, validation) are JSON in the same shape as ours."""
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    api.router.redirect_slashes = False  # a redirect would make clients re-send large POST bodies
    api.add_middleware(BarePrefixIsRoot)

    @api.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, error: StarletteHTTPException):
        message = {404: f"no such path: {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        return json_error(error.status_code, message.get(error.status_code, str(error.detail)))

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', '')}" for problem in error.errors()[:5])
        return json_error(400, f"invalid request: {problems}")

    @api.exception_handler(HTTPError)
    async def our_error(request: Request, error: HTTPError):
        return json_error(error.status, error.message, error.retry_after_s)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        # Logged with its traceback by Serve; the client gets the documented shape, not plain text.
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_error(500, f"internal error ({type(error).__name__}); the server keeps serving")

    return api
