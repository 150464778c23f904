"""The API's parsers (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]): DRF's, plus the checks of
jobs.api.json_checks and a size limit, so bad input is a 400/413 before any view or service runs.

- JSON bodies: lone surrogates, nesting deeper than JSON_MAX_DEPTH and numbers out of 64-bit range
  are a 400 naming where they are; a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 (DRF hands these
  parsers request.body, which Django limits; ServiceAPIView.initial turns that error into the 413,
  and ``read_limited`` holds the limit for any stream handed over directly).
- Form bodies: the same; Django's "too many fields"/"too big" errors from multipart parsing become
  400/413 with a message instead of a bare 400 page.
- Every parsed field name, value and file name is checked for lone surrogates: a multipart body may
  declare a charset such as unicode_escape that decodes to them (jobs.api.middleware refuses those
  first; this is the second line).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser, MultiPartParser

from jobs.api import json_checks


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


def body_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {body_limit()} bytes "
        f"(DATA_UPLOAD_MAX_MEMORY_SIZE); send less data, or upload files as multipart files"
    )


def read_limited(stream) -> bytes:
    """The body, refusing one over the limit by reading at most one byte past it."""
    if stream is None:
        return b""
    data = stream.read(body_limit() + 1)
    if len(data) > body_limit():
        raise too_large()
    return data


def refusal(exc: json_checks.UnsafeJSON, what: str) -> ParseError:
    """A 400 keyed by the top-level field at fault, like the serializers' errors ({"params": [...]});
    {"detail": ...} when the whole body is."""
    if exc.path and isinstance(exc.path[0], str):
        return ParseError({exc.path[0]: [f"{what}: {exc}"]})
    return ParseError(f"{what}: {exc}")


def check_form(data, files=None) -> None:
    """Lone surrogates in form field names, values or file names are a 400."""
    values = {k: data.getlist(k) for k in data} if hasattr(data, "getlist") else dict(data or {})
    if files:
        values["(file names)"] = [f.name for f in files.values() if getattr(f, "name", None)]
    try:
        json_checks.check_value(values, depth_limit=3)
    except json_checks.UnsafeJSON as exc:
        raise refusal(exc, "form data refused") from None


class SafeJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = read_limited(stream)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return json_checks.loads(raw.decode(encoding))
        except json_checks.UnsafeJSON as exc:
            raise refusal(exc, "JSON refused") from None
        except ValueError as exc:  # not UTF-8 / not JSON: the same words DRF's parser uses
            raise ParseError(f"JSON parse error - {exc}") from None
        except LookupError:
            raise ParseError(f'Unsupported charset "{encoding}" in request Content-Type header.') from None


class SafeMultiPartParser(MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            result = super().parse(stream, media_type, parser_context)
        except RequestDataTooBig:
            raise too_large() from None
        except (TooManyFieldsSent, TooManyFilesSent) as exc:
            raise ParseError(f"multipart form refused: {exc}") from None
        check_form(result.data, result.files)
        return result
