"""One exception type for every HTTP error, and the handlers that render it.

Routes raise APIError; nothing else reaches the client. The OpenAI routes (/v1/...) answer with
OpenAI's error object, so the `openai` client raises its typed exceptions; every other route uses
TGI's `{"error": ..., "error_type": ...}` with DJLServing's `code` added. Unexpected exceptions
become a 500 whose body never holds a traceback (it goes to the log).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
    413: "invalid_request_error", 424: "model_error", 500: "internal_error",
    503: "service_unavailable", 504: "timeout_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# The `param` of an error about the request body as a whole (not JSON, not UTF-8, not an object).
BODY = "body"


def validation_message(error: ValidationError | RequestValidationError, body=None) -> tuple[str, str]:
    """'parameters.temperature: Input should be ...' for the first problem, and its field path.
    body: the request's JSON (parsed, or its bytes), to tell its fields from Pydantic's labels."""
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", BODY
    loc = list(first.get("loc", ()))
    if isinstance(error, RequestValidationError) and loc[:1] == ["body"]:
        loc = loc[1:]  # FastAPI's root of body errors, not a field
    elif isinstance(error, RequestValidationError) and loc[:1] in (["query"], ["path"], ["header"]):
        # A URL or header parameter (?synchronous=maybe), which the body's JSON does not hold.
        field = ".".join(map(str, loc[1:])) or str(loc[0])
        return f"{field}: {first.get('msg', 'invalid value')}", field
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError:
            body = _UNKNOWN
    field = ".".join(_field_path(loc, body, first.get("type") == "missing")) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return (f"{field}: {msg}" if field else f"the request body: {msg}"), field or BODY


_UNKNOWN = object()


def _field_path(loc: list, body, missing: bool) -> list[str]:
    """The steps of `loc` that are steps into the request's JSON. The others are the labels Pydantic
    gives the branches of a union (`stop.str`, `prompt.list[int]`, `function-after[...]`): no
    pattern tells them from field names or dict keys, but they are the steps the body lacks. A
    missing field, the last step of its error, is kept too."""
    if body is _UNKNOWN:
        return [str(part) for part in loc]
    path, value = [], body
    for i, part in enumerate(loc):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        elif not (missing and i == len(loc) - 1):
            continue
        path.append(str(part))
    return path


def _unparsed(cause: ValueError | RecursionError) -> str:
    """Why Python's JSON parser failed on a body of valid syntax, or of bytes no JSON holds."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid JSON: it is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the request body could not be read: its JSON nests arrays and objects too deeply"
    # int()'s limit on digits; the advice after ";" is for the server's operator, not the client
    return f"the request body could not be read: {str(cause).split(';')[0]}"


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict:
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": status}}
    return {"error": message, "error_type": _TYPES.get(status, "error"), "code": status}


def error_response(request: Request, status: int, message: str, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message, param), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(request, exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, field = validation_message(exc, exc.body)
        content_type = request.headers.get("content-type", "")
        if field == BODY and "json" not in content_type:  # e.g. curl -d's form encoding
            message = (f"the body must be a JSON object sent as content-type application/json, "
                       f"got content-type {content_type or 'none'!r} ({message})")
        return error_response(request, 400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's JSON parsing of the body failed other than on its syntax (it answers "There
            # was an error parsing the body"): say what is wrong.
            return error_response(request, 400, _unparsed(exc.__cause__), BODY)
        return error_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal server error (details in the server log)")
