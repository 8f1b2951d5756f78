"""The `safe-serve` HTTP app over a `SafePipeline`: POST /v1/answer (JSON or multipart), GET /healthz, GET /metrics.

Each request is read, decoded and checked on its own (`SafePipeline.prepare`, in a worker thread); a bad one gets
its own 4xx {"error": {"field", "message"}} and never reaches the model. Good ones are answered in dynamic batches
(serve.batcher). A body over the limit is refused with 413 on its Content-Length, or once the bytes read pass it.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.batcher import Batcher, BatchFailed
from serve.codec import FIELDS, BadRequest, decode_audio, decode_image, form_k, from_base64, from_value_error
from serve.metrics import CONTENT_TYPE, Metrics
from shared.loading import load_json
from stage_a.model import BRIDGE_FILE, CONFIG_FILE
from stage_a.pipeline import Request as Prepared, SafePipeline

ANSWER_PATH = "/v1/answer"
RECEIVED = "safe.received"  # the scope key holding the time a request was received
MEDIA_TYPES = ("application/json", "multipart/form-data")


@dataclass(frozen=True)
class ServeSettings:
    """How requests are batched and limited, and the policy folder /healthz reports."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = 16 * 2**20
    policy: str | None = None


def error_response(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


class AnswerGuard:
    """ASGI middleware on /v1/answer: stamps the receipt time, refuses bodies over the limit (declared, then read),
    and counts every response by status code with its latency (a request that raised counts as 500)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ANSWER_PATH:
            await self.app(scope, receive, send)
            return
        received = scope[RECEIVED] = time.perf_counter()
        status = 500
        read = 0

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_body_bytes:
                    raise BadRequest("body", f"more than {read} bytes read; expected at most {self.max_body_bytes} "
                                             "(--max-body-mb)", 413)
            return message

        try:
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                response = error_response(413, "body", f"Content-Length {declared} bytes; expected at most "
                                                       f"{self.max_body_bytes} (--max-body-mb)")
                await response(scope, receive, observed)
            else:
                await self.app(scope, limited, observed)
        finally:
            self.metrics.request_done(status, time.perf_counter() - received)


def _json_fields(body: bytes) -> dict[str, Any]:
    """question, image bytes, audio bytes and k from a JSON object with base64 media."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest("body", f"not valid JSON ({err}); expected a JSON object", 400) from err
    if not isinstance(data, dict):
        raise BadRequest("body", f"a JSON {type(data).__name__}; expected a JSON object", 400)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequest(unknown[0], f"unknown field (all unknown: {unknown}); expected only {', '.join(FIELDS)}")
    if "question" not in data:
        raise BadRequest("question", "missing; expected a non-empty string")
    return {"question": data["question"], "image": from_base64("image", data.get("image")),
            "audio": from_base64("audio", data.get("audio")), "k": data.get("k")}


async def _form_fields(request: Request) -> dict[str, Any]:
    """question and k (text fields), image and audio (uploaded files) from a multipart/form-data body."""
    try:
        async with request.form() as form:
            return await _checked_form(form.multi_items())
    except HTTPException as err:
        raise BadRequest("body", f"malformed multipart/form-data ({err.detail}); expected a valid form", 400) from err


async def _checked_form(items: list[tuple[str, str | UploadFile]]) -> dict[str, Any]:
    """The fields of a parsed form: known names once each, text where text belongs, files where files do."""
    keys = [key for key, _ in items]
    for key in keys:
        if key not in FIELDS:
            raise BadRequest(key, f"unknown form field; expected only {', '.join(FIELDS)}")
        if keys.count(key) > 1:
            raise BadRequest(key, f"given {keys.count(key)} times; expected at most once")
    values = dict(items)
    if "question" not in values:
        raise BadRequest("question", "missing; expected a non-empty text field")
    if not isinstance(values["question"], str):
        raise BadRequest("question", "an uploaded file; expected a text field")
    fields: dict[str, Any] = {"question": values["question"], "k": form_k(values.get("k"))}
    for name in ("image", "audio"):
        value = values.get(name)
        if isinstance(value, str):
            raise BadRequest(name, "a text field; expected an uploaded file")
        fields[name] = await value.read() if isinstance(value, UploadFile) else None
    return fields


def _prepare(pipe: SafePipeline, fields: dict[str, Any]) -> Prepared:
    """Decode the media and check the request with the pipeline (run in a worker thread, never on the model's)."""
    image = None if fields["image"] is None else decode_image(fields["image"])
    audio = None if fields["audio"] is None else decode_audio(fields["audio"], pipe.sample_rate)
    try:
        return pipe.prepare(image, audio, fields["question"], fields["k"])
    except ValueError as err:
        raise from_value_error(err) from err


def recorded_base(pipe: SafePipeline) -> str | None:
    """The base model id the bridge's record names."""
    if pipe.bridge_dir is None:
        return None
    config = load_json(pipe.bridge_dir / CONFIG_FILE, BRIDGE_FILE)
    return ((config.get("record") or {}).get("base") or {}).get("id")


def create_app(pipe: SafePipeline, settings: ServeSettings) -> FastAPI:
    """The app answering with `pipe`; its batcher starts and drains with the app's lifespan."""
    metrics = Metrics(lambda: batcher.waiting)
    batcher = Batcher(pipe.answer, settings.max_batch, settings.max_wait_ms, metrics, pipe.one_generate_call)
    health = {"bridge": str(pipe.bridge_dir), "base": recorded_base(pipe), "policy": settings.policy,
              "k_max": pipe.k_max, "default_k": "auto" if pipe.policy is not None else pipe.default_k}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="safe-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(AnswerGuard, max_body_bytes=settings.max_body_bytes, metrics=metrics)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, None, str(err.detail))

    @app.post(ANSWER_PATH)
    async def answer(request: Request) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if media_type not in MEDIA_TYPES:
                raise BadRequest("content-type", f"{media_type or 'none'}; expected {' or '.join(MEDIA_TYPES)}", 415)
            body = await request.body()
            fields = _json_fields(body) if media_type == "application/json" else await _form_fields(request)
            prepared = await asyncio.to_thread(_prepare, pipe, fields)
        except BadRequest as err:
            return error_response(err.status, err.field, err.message)
        try:
            result, size = await batcher.submit(prepared)
        except BatchFailed as err:
            return error_response(500, None, f"the model failed on this request's batch: {err}")
        latency_ms = 1000.0 * (time.perf_counter() - request.scope[RECEIVED])
        return JSONResponse({**result, "latency_ms": latency_ms, "batch_size": size})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", **health, "queue_depth": batcher.waiting}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app
