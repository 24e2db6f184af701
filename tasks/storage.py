"""Logo storage on S3 (boto3): upload under a key derived from the saga, delete to compensate."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from saga import PermanentError, RetryPolicy, StepContext, TransientError
from tasks.settings import job_posting_settings

# S3 error codes worth another try; any other client error (AccessDenied, NoSuchBucket...) is permanent.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "503", "500"}
RETRY = RetryPolicy(max_attempts=6, initial_delay=0.5, multiplier=2.0, max_delay=10.0,
                    transient=(TransientError,))


def image_type(data: bytes) -> str | None:
    """'png' or 'jpeg' from the file's magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


@lru_cache(maxsize=1)
def _client() -> Any:
    settings = job_posting_settings()
    # Our retry policy decides about retries, so boto3 makes one attempt per call.
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def logo_key(ctx: StepContext[Any], kind: str) -> str:
    return f"logos/{ctx.saga_id}.{'png' if kind == 'png' else 'jpg'}"


def _classified(exc: Exception) -> Exception:
    """The error a tenant may see for a boto3 failure (the HTTP status, never S3's text, host or key); raised from
    `exc`, so the ledger keeps S3's own words for operators."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientError(f"S3 unavailable ({code if code in _TRANSIENT_CODES else status})")
        return PermanentError(f"S3 refused the request ({status})")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # refused, timed out, or cut off
        return TransientError("S3 unreachable")
    if isinstance(exc, BotoCoreError):
        return TransientError("S3 call failed")
    return exc


def upload_logo(ctx: StepContext[Any]) -> dict[str, str]:
    """Put the logo under a key derived from the saga, so a retry overwrites instead of adding one."""
    data = base64.b64decode(ctx.input.logo)
    kind = image_type(data) or "png"
    key, bucket = logo_key(ctx, kind), job_posting_settings().s3_bucket
    try:
        _client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=f"image/{kind}",
                             Metadata={"saga-id": str(ctx.saga_id)})
    except (ClientError, BotoCoreError) as exc:
        raise _classified(exc) from exc
    return {"bucket": bucket, "key": key}


def delete_logo(ctx: StepContext[Any]) -> None:
    """Delete the logo; deleting a key that was never written is not an error in S3."""
    bucket = job_posting_settings().s3_bucket
    keys = [ctx.result["key"]] if ctx.result else [f"logos/{ctx.saga_id}.png", f"logos/{ctx.saga_id}.jpg"]
    try:
        for key in keys:
            _client().delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise _classified(exc) from exc
