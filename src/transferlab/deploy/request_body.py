"""What a /predict request may hold, and how its body becomes the model's input rows.

Two bodies: JSON (every model: one field per input field, each a value or a list of values; images as base64
strings) and multipart/form-data (models with an image field: one `image` part per file, the file's own bytes).
Both go through the same checks, and anything the model could choke on is refused here, before it can share a
batch with other clients' requests: a ValueError (sent as 422) or UnsupportedMedia (415) whose message names the
item. An image field is never a file path: the service opens nothing on its own disk for a client.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.datastructures import UploadFile

from transferlab.errors import UserError

IMAGE_FIELD = "image"  # the input field of image models: an image file
MODEL_FIELD = "model"  # over several adapters: which one answers
MULTIPART = "multipart/form-data"
# content types a file part may declare (clients send the extension's type, octet-stream, or none)
FILE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Limits:
    """What one request may hold, how requests are batched, and how much may wait."""

    max_items: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # inputs waiting for a forward pass; more: 503
    timeout_s: float = 10.0  # a request not answered by then: 504


class UnsupportedMedia(ValueError):
    """A body, or a part of one, of a content type the model does not read (sent as 415)."""


@dataclass(frozen=True)
class Upload:
    """The bytes of one file part of a multipart body, and the name the client gave the file."""

    data: bytes
    filename: str | None


def request_model(inputs: list[str], models: tuple[str, ...] = ()) -> type[BaseModel]:
    """The JSON /predict body of a model whose input rows have the fields `inputs`: each field one value, or a
    list of values (one per input); a field the model does not read is refused. Over several adapters, `model`
    names the one that answers."""
    fields = {name: (str | list[str], Field(description=f"the {name} of one input, or a list of them"))
              for name in inputs}
    if models:
        fields[MODEL_FIELD] = (Literal[models], Field(description=f"which model answers: {', '.join(models)}"))
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), **fields)


def openapi_body(body: type[BaseModel], inputs: list[str]) -> dict:
    """The OpenAPI description of /predict's body: JSON, and multipart files for a model with an image field."""
    content = {"application/json": {"schema": body.model_json_schema()}}
    if IMAGE_FIELD in inputs:
        files = {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one part per image file"}
        content[MULTIPART] = {"schema": {"type": "object", "properties": {IMAGE_FIELD: files},
                                         "required": [IMAGE_FIELD]}}
    return {"requestBody": {"required": True, "content": content}}


def check_value(name: str, value: str, limits: Limits) -> None:
    """Refuse an empty, too long or non-Unicode value (a lone surrogate cannot be tokenized)."""
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if len(value) > limits.max_chars:
        raise ValueError(f"{name} has {len(value):,} characters; the limit is {limits.max_chars:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate at character {err.start}): "
                         "send UTF-8 text") from None


def image_bytes(name: str, data: bytes) -> bytes:
    """The bytes of an image file, checked (not empty, readable, within the pixel limit) before any batch holds
    them."""
    if not data:
        raise ValueError(f"{name} is empty")
    from transferlab.data.images import check_image_bytes  # here: a text model's service never needs PIL

    try:
        check_image_bytes(data, None, name)
    except UserError as err:
        raise ValueError(str(err)) from None
    return data


def base64_image(name: str, value: str) -> bytes:
    """The checked bytes of a base64-encoded image file (an image field of a JSON body)."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64: send the image file's bytes base64-encoded") from None
    return image_bytes(name, data)


def checked(field: str, index: int, value: str | Upload, limits: Limits) -> str | bytes:
    """One input value as the model takes it (an image field's value: the file's bytes)."""
    name = f"{field}[{index}]"
    if isinstance(value, Upload):
        return image_bytes(f"{name} ({value.filename})" if value.filename else name, value.data)
    if field == IMAGE_FIELD:
        return base64_image(name, value)
    check_value(name, value, limits)
    return value


def input_rows(columns: dict[str, list], limits: Limits) -> list[dict]:
    """Rows from one list of values per input field, every value checked; ValueError naming the item."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        counts = " but ".join(f"{n} '{name}' values" for name, n in lengths.items())
        raise ValueError(f"{counts}: send one of each per input")
    first, count = next(iter(lengths.items()))
    if count == 0:
        raise ValueError(f"'{first}' is an empty list: send at least one input")
    if count > limits.max_items:
        raise ValueError(f"{count} inputs in one request; the limit is {limits.max_items}: split the request")
    checked_columns = {name: [checked(name, i, v, limits) for i, v in enumerate(column)]
                       for name, column in columns.items()}
    return [dict(zip(columns, row, strict=True)) for row in zip(*checked_columns.values(), strict=True)]


def request_rows(request: BaseModel, inputs: list[str], limits: Limits) -> list[dict]:
    """The input rows of a JSON request; ValueError (sent as 422, naming the item) for what the model cannot
    take."""
    values = {name: getattr(request, name) for name in inputs}
    if all(isinstance(v, str) for v in values.values()):
        return input_rows({name: [value] for name, value in values.items()}, limits)
    if any(isinstance(v, str) for v in values.values()):
        raise ValueError(f"send every field ({', '.join(inputs)}) as one value, or every field as a list")
    return input_rows(values, limits)


def parse_json(data: bytes, body: type[BaseModel]) -> BaseModel:
    """A JSON body validated against the model's fields; errors as FastAPI reports its own (422, `loc` starting
    with "body"). Python's json module reads it, as FastAPI does: a lone surrogate escape ("\\ud800") reaches
    check_value, which names the item, instead of failing the whole body."""
    try:
        return body.model_validate(json.loads(data) if data else None)
    except json.JSONDecodeError as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": err.msg}}]) from None
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in err.errors(include_url=False, include_context=False)]) from None


async def form_columns(request: Request, inputs: list[str], models: tuple[str, ...], limits: Limits
                       ) -> tuple[dict[str, list], str | None]:
    """The values of a multipart body by input field (files as Upload) and the adapter it names, if any."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    # the body limit (413) bounds the number of parts; counting files here lets the message name the count
    parser = MultiPartParser(request.headers, request.stream(), max_files=math.inf, max_fields=math.inf,
                             max_part_size=4 * limits.max_chars)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise ValueError(f"the multipart body could not be read: {err.message}") from None
    try:
        columns: dict[str, list] = {name: [] for name in inputs}
        model = None
        for key, value in form.multi_items():
            if key == MODEL_FIELD and models:
                if not isinstance(value, str) or value not in models:
                    raise ValueError(f"'{MODEL_FIELD}' must be one of: {', '.join(models)}")
                model = value
            elif key not in columns:
                raise ValueError(f"'{key}' is not a field of this model: it reads {', '.join(inputs)}")
            else:
                columns[key].append(await form_value(f"{key}[{len(columns[key])}]", key, value))
        if IMAGE_FIELD in columns and not columns[IMAGE_FIELD]:
            raise ValueError(f"no '{IMAGE_FIELD}' part: attach at least one image file")
        if models and model is None:
            raise ValueError(f"'{MODEL_FIELD}' is missing: name the model that answers ({', '.join(models)})")
        return columns, model
    finally:
        await form.close()


async def form_value(name: str, field: str, value: str | UploadFile) -> str | Upload:
    """One part of a multipart body: a file for an image field, a text value otherwise."""
    if field != IMAGE_FIELD:
        if not isinstance(value, str):
            raise ValueError(f"{name} is a file: send {field} as a text field")
        return value
    if isinstance(value, str):
        raise ValueError(f"{name} is a text field, not a file: attach the image file itself (curl -F "
                         f"{field}=@photo.jpg); the service never reads a path on its own disk")
    media = (value.content_type or "application/octet-stream").lower()
    if not media.startswith(FILE_TYPES):
        shown = f"{name} ({value.filename})" if value.filename else name
        raise UnsupportedMedia(f"{shown} is sent as {media}: send image files (image/png, image/jpeg, ...) or "
                               "application/octet-stream")
    return Upload(await value.read(), value.filename)


def media_type(header: str | None) -> str | None:
    """The media type of a Content-Type header, without its parameters (None when there is no header)."""
    media = (header or "").partition(";")[0].strip().lower()
    return media or None


async def read_rows(request: Request, body: type[BaseModel], inputs: list[str], models: tuple[str, ...],
                    limits: Limits) -> list[dict]:
    """The checked input rows of a /predict request, JSON or multipart (over several adapters, each row with its
    `model`)."""
    media = media_type(request.headers.get("content-type"))
    if media == MULTIPART:
        if IMAGE_FIELD not in inputs:
            raise UnsupportedMedia(f"this model reads {', '.join(inputs)} as text: send application/json")
        columns, model = await form_columns(request, inputs, models, limits)
        rows = input_rows(columns, limits)
    elif media is None or media == "application/json" or media.endswith("+json"):
        parsed = parse_json(await request.body(), body)
        rows, model = request_rows(parsed, inputs, limits), getattr(parsed, MODEL_FIELD, None)
    else:
        files = f", or {MULTIPART} with one '{IMAGE_FIELD}' part per file" if IMAGE_FIELD in inputs else ""
        raise UnsupportedMedia(f"the body is {media}: send application/json{files}")
    return [{**row, MODEL_FIELD: model} for row in rows] if models else rows
