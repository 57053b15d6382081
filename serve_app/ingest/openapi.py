"""The OpenAPI document served at ``/openapi.json``, built from the pydantic tweet model."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from serve_app.ingest.core import IngestLimits
from serve_app.model.schema import TweetInModel


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


@lru_cache(maxsize=4)
def openapi_document(limits: IngestLimits) -> dict[str, Any]:
    tweet_schema = TweetInModel.model_json_schema(ref_template="#/components/schemas/{model}")
    ids = {"type": "array", "items": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Weather tweets ingestion",
            "version": "1.0.0",
            "description": "Every 202 means the tweet is in Kafka and RabbitMQ and will be "
            "counted exactly once in Redis and Valkey. For sources that send continuously, "
            "the WebSocket `/input/stream` takes one `POST /input` body per text frame and "
            "answers each frame, in order, with one JSON acknowledgement: `frame` (its number "
            "from 0), `status` (what `POST /input` would have answered) and that answer's body "
            f"(plus `retry_after` on a 503); at most {limits.stream_max_in_flight} frames of "
            "a connection are published at once, and no more is read until the oldest is "
            "acknowledged.",
        },
        "paths": {
            "/input": {
                "post": {
                    "summary": "Publish one tweet or a batch of tweets",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "The id of a single tweet (instead of its id field)",
                            "schema": {"type": "string", "maxLength": 128},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/TweetIn"},
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": limits.max_batch_tweets,
                                            "items": {"$ref": "#/components/schemas/TweetIn"},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted: confirmed by both brokers",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "accepted": {"type": "integer"},
                                            "id": {"type": "string"},
                                            "ids": ids,
                                        },
                                    }
                                }
                            },
                        },
                        "400": _error(
                            "Malformed JSON (RFC 8259: UTF-8, no byte order mark, no "
                            "duplicate keys, at most "
                            f"{limits.max_json_depth} levels deep)"
                        ),
                        "413": _error(f"Body over {limits.max_body_bytes} bytes"),
                        "415": _error("Content-Type is not application/json; charset=utf-8"),
                        "422": _error(
                            "Schema violation, or one id with two contents in a batch; "
                            "details name index and field"
                        ),
                        "503": _error(
                            "A broker is unreachable or slow, or its undrained backlog is "
                            "near what it keeps (admission control); retry the same ids "
                            "after Retry-After seconds"
                        ),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "200 when the app and both brokers are reachable",
                    "responses": {"200": {"description": "Healthy"}, "503": _error("Unhealthy")},
                }
            },
            "/stats": {
                "get": {
                    "summary": "Counts in Redis (fed by Kafka) and Valkey (fed by RabbitMQ)",
                    "parameters": [
                        {
                            "name": "latest",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
                        }
                    ],
                    "responses": {
                        "200": {"description": "Both stores side by side"},
                        "400": _error("latest is not a whole number 0-1000"),
                        "503": {"description": "A store is down; the other store's numbers"},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "TweetIn": tweet_schema,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "details": {"type": "array", "items": {"type": "object"}},
                        "ids": ids,
                    },
                },
            }
        },
    }
