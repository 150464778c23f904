"""The API docs work offline and the site has an icon (issue 18).

Swagger UI (/api/v1/docs/) and Redoc (/api/v1/redoc/) load every script, style and image from this
site's /static/ (drf_spectacular_sidecar), found by the staticfiles finders and served; their
Content-Security-Policy names no other origin; the schema they load is the schema view. /favicon.ico
leads to the site's SVG icon, which every page built on base.html links. The same pages in a browser
with the network cut off: tests/e2e/test_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.contrib.staticfiles import finders
from django.urls import resolve
from drf_spectacular.views import SpectacularAPIView

DOCS_PAGES = ["/api/v1/docs/", "/api/v1/redoc/"]
# CSP sources that name no origin: keywords and schemes that stay on this page (data: images, blob: workers).
ORIGINLESS_SOURCES = {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}


class _Refs(HTMLParser):
    """Every URL a page loads by itself: <script src>, <link href>, <img src>, <redoc spec-url>."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        key = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        if key and a.get(key):
            self.refs.append((tag, a[key] or ""))
        if tag == "link":
            self.links.append(a)


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def _static_path(url: str) -> str | None:
    """The staticfiles name behind a /static/ URL, or None for any other URL."""
    prefix = django_settings.STATIC_URL
    return url[len(prefix) :] if url.startswith(prefix) else None


def _csp(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


@pytest.mark.parametrize("url", DOCS_PAGES)
def test_docs_page_loads_only_this_sites_files(client, url):
    res = client.get(url)
    assert res.status_code == 200 and res["Content-Type"].startswith("text/html")
    html = res.content.decode()
    # No absolute or scheme-relative URL anywhere in the page's attributes (a CDN, Google Fonts ...).
    assert not re.findall(r"""=\s*["']?(?:https?:)?//""", html)
    refs = _refs(html).refs
    scripts = [u for tag, u in refs if tag == "script"]
    assert scripts, html  # the page is built by script: no script, nothing to check
    statics = 0
    for tag, ref in refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and ref.startswith("/"), (tag, ref)
        name = _static_path(parts.path)
        if name is None:  # same-origin but not a static file: the split view's start-up script, the schema
            served = client.get(ref)
            assert served.status_code == 200 and served.content, (tag, ref)
            continue
        statics += 1
        found = finders.find(name)
        assert found, (tag, ref)
        with open(str(found), "rb") as f:
            assert f.read(1), (tag, ref)
        served = client.get(ref)
        assert served.status_code == 200, (tag, ref, served.status_code)
        body = b"".join(served.streaming_content) if served.streaming else served.content
        assert body, (tag, ref)
    assert statics >= 1 and any(_static_path(s) for s in scripts)


@pytest.mark.parametrize("url", DOCS_PAGES)
def test_docs_page_policy_allows_no_other_origin(client, url):
    policy = _csp(client.get(url)["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]  # no inline script either
    for directive, sources in policy.items():
        assert set(sources) <= ORIGINLESS_SOURCES, (directive, sources)


def _schema_url(client, url: str) -> str:
    html = client.get(url).content.decode()
    refs = dict((tag, u) for tag, u in _refs(html).refs if tag == "redoc")
    if "redoc" in refs:
        return refs["redoc"]
    # Swagger UI's split view: the page loads its start-up script from itself, which names the schema.
    start = next(u for tag, u in _refs(html).refs if tag == "script" and u.startswith(url))
    script = client.get(start)
    assert script["Content-Type"].startswith("application/javascript")
    found = re.search(r'^\s*url: "([^"]+)",$', script.content.decode(), re.M)
    assert found, script.content.decode()
    return found.group(1)


@pytest.mark.parametrize("url", DOCS_PAGES)
def test_docs_page_loads_the_schema_view(client, url):
    schema_url = _schema_url(client, url)
    assert getattr(resolve(urlsplit(schema_url).path).func, "view_class", None) is SpectacularAPIView
    res = client.get(schema_url)
    assert res.status_code == 200 and b"/api/v1/jobs/" in res.content


def test_favicon_ico_leads_to_the_site_icon_that_pages_link(client):
    res = client.get("/favicon.ico")
    assert res.status_code == 302
    icon = res["Location"]
    name = _static_path(icon)
    assert name and name.endswith(".svg") and finders.find(name)
    served = client.get(icon)
    assert served.status_code == 200 and served["Content-Type"] == "image/svg+xml"
    body = b"".join(served.streaming_content) if served.streaming else served.content
    assert body.lstrip().startswith(b"<svg") and b"</svg>" in body
    # A page built on base.html (the log-in page needs no user) names the same icon.
    links = _refs(client.get("/accounts/login/").content.decode()).links
    assert {"rel": "icon", "href": icon, "type": "image/svg+xml"} in links


def test_production_static_files_hold_what_the_docs_and_the_icon_load(client, settings, tmp_path, monkeypatch):
    """With production's storage (hashed names, collectstatic into STATIC_ROOT, no finders), every static file
    the docs pages and /favicon.ico name is in STATIC_ROOT under the name the page gives."""
    import importlib

    from django.core.management import call_command

    # The production module reads these two from the environment when it is imported (for its STORAGES only).
    monkeypatch.setenv("SECRET_KEY", "test-only-key-for-reading-the-production-settings-module")
    monkeypatch.setenv("ALLOWED_HOSTS", "testserver")
    settings.STORAGES = importlib.import_module("congweb.settings.production").STORAGES
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", interactive=False, verbosity=0)
    names = [_static_path(client.get("/favicon.ico")["Location"])]
    for url in DOCS_PAGES:
        names += [_static_path(ref) for _, ref in _refs(client.get(url).content.decode()).refs]
    names = [n for n in names if n is not None]
    assert len(names) >= 5 and all(re.search(r"\.[0-9a-f]{12}\.\w+$", n) for n in names), names  # hashed
    for name in names:
        assert (tmp_path / "static" / name).stat().st_size > 0, name
