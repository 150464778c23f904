"""Site-wide request limits and the Content-Security-Policy header (settings.MIDDLEWARE).

Both serve every page and API call, not only the REST API; they live here beside the API's parsers
because they enforce the same input rules (docs/SECURITY.md, findings 7 and 9).
"""

from __future__ import annotations

import codecs
from functools import wraps

from django.conf import settings
from django.http import HttpResponse, JsonResponse

UTF8_NAMES = {"utf-8", "ascii"}  # codecs.lookup() names; ASCII is a subset of UTF-8


def _refuse(request, status: int, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class RequestLimitsMiddleware:
    """Refuses, before anything reads the body:

    - a Content-Length over REQUEST_MAX_BYTES (one upload plus its form fields): 413;
    - a body declared in a charset other than UTF-8: 400. Django decodes multipart fields in the
      declared charset, and charsets such as unicode_escape turn "\\ud800" into a lone surrogate that
      no database or JSON encoder can store.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(request, 400, "Content-Length is not a number")
        if length > settings.REQUEST_MAX_BYTES:
            return _refuse(
                request,
                413,
                f"the request body ({length} bytes) is larger than {settings.REQUEST_MAX_BYTES} "
                f"bytes (REQUEST_MAX_BYTES = UPLOAD_MAX_BYTES + DATA_UPLOAD_MAX_MEMORY_SIZE)",
            )
        charset = (request.content_params or {}).get("charset")
        if charset is not None:
            try:
                name = codecs.lookup(charset).name
            except LookupError:
                name = None
            if name not in UTF8_NAMES:
                return _refuse(
                    request,
                    400,
                    f"request bodies must be UTF-8; send Content-Type with charset=utf-8 "
                    f"(or no charset) instead of {charset[:40]!r}",
                )
        return self.get_response(request)


def policy_header(extra: dict[str, str] | None = None) -> str:
    """CONTENT_SECURITY_POLICY as a header value, with ``extra`` sources appended per directive."""
    directives = dict(settings.CONTENT_SECURITY_POLICY)
    for name, sources in (extra or {}).items():
        directives[name] = f"{directives.get(name, settings.CONTENT_SECURITY_POLICY['default-src'])} {sources}"
    return "; ".join(f"{name} {sources}" for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    """Adds settings.CONTENT_SECURITY_POLICY to every response. A view that needs more (the API docs pages'
    inline styles, congweb/urls.py) is wrapped in ``csp_extend``; the policy stays strict everywhere else."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy_header(getattr(response, "csp_extra", None))
        return response


def csp_extend(extra: dict[str, str]):
    """View decorator: this view's responses allow ``extra`` sources on top of the site policy."""

    def decorate(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            response.csp_extra = extra
            return response

        return wrapped

    return decorate
