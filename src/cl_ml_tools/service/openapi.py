"""The OpenAPI document of the service, as ``GET /openapi.json`` serves it (with the API key when one is set).

FastAPI's own document describes what its routes declare: no body for ``POST /jobs/{plugin}`` (the upload is
parsed by a streaming parser, :mod:`cl_ml_tools.service.uploads`), 200 and 422 where the service answers 202, 400,
401, 404, 409, 413 or 415. This starts from FastAPI's document (so every route is in it) and makes it say
what the service does: one ``POST /jobs/<plugin>`` per enabled plugin with its multipart body (the file and
the plugin's options, their defaults and bounds from the server's config), the real status codes and the
JSON bodies of the answers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from . import plugins
from .plugins import ARCHIVE, BOUNDS, PLUGINS
from .service_config import ServiceConfig
from .storage import JOB_ID

ERROR = {"$ref": "#/components/schemas/Error"}
STATUS = {"$ref": "#/components/schemas/JobStatus"}
RESULT = {"$ref": "#/components/schemas/Result"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_WHEN = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "every refused request: a short code and a sentence saying what to change",
        "required": ["error", "message"],
        "additionalProperties": False,
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "JobStatus": {
        "type": "object",
        "required": ["job_id", "plugin", "status", "progress", "attempts", "options", "created_at", "links"],
        "properties": {
            "job_id": {"type": "string", "pattern": JOB_ID.pattern},
            "plugin": {"type": "string"},
            "status": {"enum": ["queued", "running", "done", "error"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "message": _NULLABLE_TEXT,
            "error": _NULLABLE_TEXT,
            "attempts": {"type": "integer", "minimum": 0},
            "options": {"type": "object"},
            "file": {
                "type": ["object", "null"],
                "properties": {
                    "name": {"type": "string"},
                    "size": {"type": "integer"},
                    "kind": {"type": "string"},
                    "format": _NULLABLE_TEXT,
                    "mime": {"type": "string"},
                    "media_id": {"type": "string"},
                },
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _WHEN,
            "finished_at": _WHEN,
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Result": {
        "type": "object",
        "description": "a finished job: the rows of its step's table for the file (an archive job: its tables)",
        "required": ["job_id", "plugin", "step", "status", "error", "rows", "files"],
        "properties": {
            "job_id": {"type": "string", "pattern": JOB_ID.pattern},
            "plugin": {"type": "string"},
            "step": {"type": "string"},
            "status": {"enum": ["ok", "error"]},
            "error": _NULLABLE_TEXT,
            "file": {"type": ["object", "null"]},
            "columns": {"type": ["array", "null"], "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "object"}},
            "files": {"type": "object", "additionalProperties": {"type": "string"}},
            "tables": {"type": "object"},
            "log": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_WHY = {
    400: "the request or an option is wrong (the message names it)",
    401: "no or a wrong 'Authorization: Bearer <api key>'",
    404: "no such plugin, job or file",
    408: "the upload stalled (server.upload_idle_seconds)",
    409: "the job has not finished yet",
    413: "the file is larger than server.max_upload_bytes",
    415: "not multipart/form-data, or a kind of file the plugin does not take",
    429: "worker.max_queued_jobs jobs are queued already; see Retry-After",
    503: "the server is stopping, or is receiving server.max_uploads uploads already; see Retry-After",
    507: "the server's storage is full or below storage.min_free_bytes; see Retry-After",
}
# The refusals each route can answer, besides 401 (every route that needs the key) and 400 (every route
# with parameters). Routes not listed (added later) keep those two.
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/jobs/{plugin}"): (400, 408, 413, 415, 429, 503, 507),
    ("post", "/jobs/archive"): (404,),
    ("get", "/jobs/{job_id}/status"): (400, 404, 503),
    ("get", "/jobs/{job_id}/results"): (400, 404, 409, 503),
    ("get", "/jobs/{job_id}/files/{name}"): (404, 409),
    ("get", "/jobs"): (400,),
    ("delete", "/jobs/{job_id}"): (404,),
}
_ANSWERS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/jobs/{plugin}"): {"202": ("the job, queued", STATUS)},
    ("post", "/jobs/archive"): {
        "202": ("the archive job, queued", STATUS),
        "200": ("the archive job already queued or running", STATUS),
    },
    ("get", "/jobs/{job_id}/status"): {"200": ("the job's status", STATUS)},
    ("get", "/jobs/{job_id}/results"): {"200": ("the job's result", RESULT)},
}
_LOCATION = {"Location": {"description": "the job's status URL", "schema": {"type": "string"}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _option_schemas(plugin: plugins.Plugin, config: dict[str, Any]) -> dict[str, Any]:
    """Each option's form field as the server reads it: text options as text, the others as JSON text whose
    ``contentSchema`` is the option's schema, with the server's config as its default and the server's
    limits on cost as its bounds."""
    step = plugin.step
    out = {}
    for name, schema in plugins.option_schemas(plugin).items():
        key = plugins.ALIASES.get(plugin.name, {}).get(name, name)
        schema = {k: v for k, v in copy.deepcopy(schema).items() if k != "default"}
        if name != key:
            out[name] = {
                "type": "string",
                "enum": schema["items"]["enum"],
                "description": f"{key} as one name (or a JSON list)",
            }
            continue
        if key in config.get(step, {}):
            schema["default"] = config[step][key]
        if key in BOUNDS.get(step, {}):
            section, bound_key, side = BOUNDS[step][key]
            if side == "max":
                schema["maximum"] = config[section][bound_key]
            elif side == "min":
                schema.pop("exclusiveMinimum", None)
                schema["minimum"] = config[section][bound_key]
            elif not config[section][bound_key]:
                schema["const"] = False  # off on this server: a client may not turn it on
        if schema.get("type") == "string" or ("enum" in schema and all(isinstance(v, str) for v in schema["enum"])):
            out[name] = {"type": "string", **schema}
            continue
        described = {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}
        if schema.get("type") == "array":
            described["description"] = "a JSON list; one item alone (JSON or bare text) is taken as a list of one"
        out[name] = described
    return out


def _upload(plugin: plugins.Plugin, config: dict[str, Any]) -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {
            "file": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": f"the file ({plugin.describe_kinds()}; its kind is sniffed from its bytes)",
            },
            **_option_schemas(plugin, config),
        },
    }
    return {"required": True, "content": {"multipart/form-data": {"schema": body}}}


def _guarded_by(app: FastAPI, check: Callable[..., Any]) -> set[tuple[str, str]]:
    """(method, path) of every route that has ``check`` among its dependencies."""
    return {
        (method.lower(), route.path_format)
        for route in app.routes
        if any(d.call is check for d in getattr(getattr(route, "dependant", None), "dependencies", ()))
        for method in getattr(route, "methods", ())
    }


def document(app: FastAPI, config: ServiceConfig, key_check: Callable[..., Any]) -> dict[str, Any]:
    """The document of ``app`` as this server runs it; ``key_check`` is the dependency that asks for the key."""
    doc = get_openapi(title=app.title, version=__version__, routes=app.routes)
    keyed = config.server["api_key"] is not None
    needs_key = _guarded_by(app, key_check)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(copy.deepcopy(SCHEMAS))
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            has_params = "422" in responses
            responses.pop("422", None)
            answers = _ANSWERS.get((method, path))
            if answers:
                responses.pop("200", None)
                for code, (why, schema) in answers.items():
                    responses[code] = _json(why, schema)
                    if code == "202":
                        responses[code]["headers"] = _LOCATION
            codes = set(_ERRORS.get((method, path), ())) | ({400} if has_params else set())
            if keyed and (method, path) in needs_key:
                codes.add(401)
                operation["security"] = [{"bearer": []}]
            for code in sorted(codes):
                responses[str(code)] = _json(_WHY[code], ERROR)
    upload = doc["paths"].pop("/jobs/{plugin}")["post"]
    for name in config.enabled_plugins:
        if name == ARCHIVE or name not in PLUGINS:
            continue
        plugin = PLUGINS[name]
        operation = copy.deepcopy(upload)
        operation["operationId"] = f"submit_{name}"
        operation["summary"] = f"a {name} job: the {plugin.step} step's rows for one file"
        operation["parameters"] = [p for p in operation.get("parameters", ()) if p["name"] != "plugin"]
        if not operation["parameters"]:
            del operation["parameters"]
        operation["requestBody"] = _upload(plugin, config.raw)
        doc["paths"][f"/jobs/{name}"] = {"post": operation}
    return doc
