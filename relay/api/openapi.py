"""The API's OpenAPI 3.1 description, served at /v1/openapi.json (tests check it with openapi-spec-validator
and that every route of the application is in it)."""
from __future__ import annotations

from policy.events import TYPES as EVENT_TYPES
from policy.stats import FIELDS as STAT_FIELDS
from policy.suppression import CAUSES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    return {str(s): {"$ref": f"#/components/responses/{s}"} for s in (401, 403, 429, *statuses)}


_ADDRESS = {"name": "address", "in": "path", "required": True, "schema": {"type": "string", "format": "email"}}
_ERROR_TEXT = {400: "Malformed request (names the parameter)", 401: "Missing or wrong API key",
               403: "The key's tenant is suspended or removed, or the key may only read",
               404: "Not found (another tenant's records are not found either)", 413: "Too large",
               422: "A value is not allowed (names it)", 429: "Too many requests: see Retry-After"}

DOCUMENT: dict = {
    "openapi": "3.1.0",
    "info": {"title": "WebSoftTT Relay tenant API", "version": "1",
             "description": "Send mail, and a tenant's own data: its suppression list, its events, its "
                            "messages, its daily counts. Every request carries "
                            "`Authorization: Bearer wst_api_...` (websofttt apikey add)."},
    "servers": [{"url": "/v1"}],
    "security": [{"bearer": []}],
    "paths": {
        "/suppressions": {"get": {
            "summary": "The tenant's suppression list, in address order",
            "parameters": [{"name": "cursor", "in": "query", "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": _json({"type": "object", "required": ["data", "next_cursor"], "properties": {
                "data": {"type": "array", "items": _ref("Suppression")},
                "next_cursor": {"type": ["string", "null"]}}}, "One page; next_cursor is null on the last"),
                **_errors(400)}}},
        "/suppressions:import": {"post": {
            "summary": "Suppress up to 10,000 addresses at once",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["addresses"], "properties": {
                    "addresses": {"type": "array", "items": {"type": "string"}, "maxItems": 10000},
                    "cause": _ref("Cause")}}}}},
            "responses": {"200": _json(_ref("ImportSummary"), "What was added, already there, or invalid"),
                          **_errors(400, 413, 422)}}},
        "/suppressions/{address}": {
            "parameters": [_ADDRESS],
            "get": {"summary": "One entry of the tenant's list",
                    "responses": {"200": _json(_ref("Suppression"), "The entry"), **_errors(400, 404)}},
            "put": {"summary": "Suppress the address for this tenant (applies at the next RCPT)",
                    "requestBody": {"content": {"application/json": {"schema": {
                        "type": "object", "properties": {"cause": _ref("Cause")}}}}},
                    "responses": {"201": _json(_ref("Suppression"), "Added"),
                                  "200": _json(_ref("Suppression"), "Already there (its first cause kept)"),
                                  **_errors(400, 422)}},
            "delete": {"summary": "Remove the address from the tenant's list",
                       "responses": {"204": {"description": "Removed"}, **_errors(400, 404)}}},
        "/messages": {"post": {
            "summary": "Send a message under the same policy as SMTP submission; 202 once it is durable",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200},
                            "description": "A retry with the same key within 24 h gets the first answer"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                _ref("RawMessage"), _ref("StructuredMessage")]}}}},
            "responses": {"202": _json(_ref("Queued"), "Queued: each recipient queued or refused with its reply"),
                          "409": _json(_ref("Error"), "The same Idempotency-Key is being sent right now"),
                          "503": _json(_ref("Error"), "The queue could not be written: retry (Retry-After)"),
                          **_errors(400, 413, 422)}}},
        "/events": {"get": {
            "summary": "The tenant's events in the order they were written, from a cursor (catch up on what was missed)",
            "parameters": [{"name": "after", "in": "query", "schema": {"type": "string", "default": "0"}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                           {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(EVENT_TYPES)}}],
            "responses": {"200": _json({"type": "object", "required": ["data", "next_cursor"], "properties": {
                "data": {"type": "array", "items": _ref("Event")}, "next_cursor": {"type": "string"}}},
                "Events after the cursor; next_cursor continues from the last (the same one when there are none)"),
                **_errors(400)}}},
        "/messages/{queue_id}": {"get": {
            "summary": "What became of each recipient of one of the tenant's messages",
            "parameters": [{"name": "queue_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Message"), "The message's recipients"), **_errors(404)}}},
        "/stats": {"get": {
            "summary": "The tenant's daily aggregates (counts below min_count are null)",
            "parameters": [{"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                           {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}}],
            "responses": {"200": _json({"type": "object", "properties": {
                "data": {"type": "array", "items": _ref("Day")}, "min_count": {"type": "integer"}}}, "One row per day"),
                **_errors(400)}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Cause": {"type": "string", "enum": list(CAUSES), "default": "manual"},
            "Suppression": {"type": "object", "required": ["address", "cause", "created"], "properties": {
                "address": {"type": "string"}, "cause": _ref("Cause"), "source": {"type": ["string", "null"]},
                "created": {"type": "string", "format": "date-time"},
                "expires": {"type": ["string", "null"], "format": "date-time"}}},
            "ImportSummary": {"type": "object", "properties": {
                "added": {"type": "integer"}, "already_present": {"type": "integer"}, "invalid": {"type": "integer"},
                "invalid_lines": {"type": "array", "items": {"type": "object", "properties": {
                    "line": {"type": "integer"}, "text": {"type": "string"}}}}}},
            "Event": {"type": "object", "required": ["id", "type", "timestamp"], "properties": {
                "id": {"type": "string"}, "type": {"type": "string", "enum": list(EVENT_TYPES)},
                "timestamp": {"type": "string", "format": "date-time"}, "queue_id": {"type": ["string", "null"]},
                "recipient": {"type": ["string", "null"]}, "campaign": {"type": ["string", "null"]},
                "detail": {"type": ["string", "null"]}}},
            "Message": {"type": "object", "required": ["queue_id", "recipients"], "properties": {
                "queue_id": {"type": "string"}, "received": {"type": ["string", "null"]},
                "recipients": {"type": "array", "items": {"type": "object", "properties": {
                    "address": {"type": "string"}, "state": {"type": "string"}, "attempts": {"type": "integer"},
                    "last_reply": {"type": ["string", "null"]}, "updated": {"type": ["string", "null"]}}}}}},
            "Day": {"type": "object", "properties": {"day": {"type": "string", "format": "date"}, **{
                f: {"type": ["integer", "null"]} for f in STAT_FIELDS}}},
            "RawMessage": {"type": "object", "required": ["envelope", "raw"], "properties": {
                "envelope": {"type": "object", "required": ["from", "to"], "properties": {
                    "from": {"type": "string"}, "to": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
                "raw": {"type": "string", "contentEncoding": "base64"}}},
            "StructuredMessage": {"type": "object", "required": ["from"], "properties": {
                "from": {"type": "string"}, "reply_to": {"type": "string"}, "subject": {"type": "string"},
                **{f: {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
                   for f in ("to", "cc", "bcc")},
                "text": {"type": "string"}, "html": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "attachments": {"type": "array", "items": {"type": "object", "required": ["filename", "content"],
                                                           "properties": {
                    "filename": {"type": "string"}, "content_type": {"type": "string"},
                    "content": {"type": "string", "contentEncoding": "base64"}}}}}},
            "Queued": {"type": "object", "required": ["queue_id", "recipients"], "properties": {
                "queue_id": {"type": "string"}, "recipients": {"type": "array", "items": {"type": "object", "properties": {
                    "address": {"type": "string"}, "status": {"type": "string", "enum": ["queued", "refused"]},
                    "reply": {"type": "string"}}}}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        },
        "responses": {str(status): _json(_ref("Error"), text) for status, text in _ERROR_TEXT.items()},
    },
}
