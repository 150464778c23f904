"""Dark mode (issue 16): with the system set to dark (prefers-color-scheme, emulated in Chromium), the job page's
background is dark and its text light, and the charts' canvas draws its axes in the light palette colour that
style.css gives it (charts.js reads --chart-axis and --chart-grid); with the system set to light, the same page
is light. Screenshots of both go to the e2e artifacts."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ROOT, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-dark-123"
VENDOR = ROOT / "static" / "vendor" / "uplot" / "uPlot.iife.min.js"
ALPHAS = [0.0, 0.25, 0.5, 1.0]


def _luminance(css_color: str) -> float:
    """Relative luminance (0 black .. 1 white) of a computed colour, rgb(...) or rgba(...)."""
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css_color)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _colors(page) -> dict:
    return page.evaluate(
        """() => {
            const css = el => getComputedStyle(document.querySelector(el));
            return {body: css('body').backgroundColor, text: css('h1').color, card: css('.card').backgroundColor,
                    badge: css('.badge').backgroundColor};
        }"""
    )


def _axis_pixels(page, selector: str) -> list[float]:
    """Luminance of every opaque pixel the chart drew in its bottom axis band (tick labels and the axis label)."""
    return page.evaluate(
        """sel => {
            const u = window.congCharts.get(document.querySelector(sel)), c = u.ctx.canvas;
            const top = Math.round(u.bbox.top + u.bbox.height) + 2;
            const d = u.ctx.getImageData(0, top, c.width, c.height - top).data, out = [];
            for (let i = 0; i < d.length; i += 4)
                if (d[i + 3] > 200) out.push((0.2126 * d[i] + 0.7152 * d[i + 1] + 0.0722 * d[i + 2]) / 255);
            return out;
        }""",
        selector,
    )


def test_the_job_page_follows_the_systems_dark_setting(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the ORM below runs beside Playwright's event loop
    if not VENDOR.exists():
        pytest.fail(f"{VENDOR.relative_to(ROOT)} is missing: run `make install` (it vendors uPlot from npm)")
    from jobs.models import Job

    user = django_user_model.objects.create_user(username="nox", password=PASSWORD)
    sweep = [{"alpha": a, "gold_mean": 0.2 + 0.4 * a * (1.1 - a), "implicit_mean": 2 - a, "n": 8} for a in ALPHAS]
    job = Job.objects.create(
        owner=user,
        kind="alpha_sweep",
        status="succeeded",
        config={"spec": {"kind": "alpha_sweep", "alphas": ALPHAS}},
        results={"alphas": sweep},
    )
    page, base = browser_page, web_stack.base_url
    login(page, base, "nox", PASSWORD)

    page.emulate_media(color_scheme="dark")
    page.goto(f"{base}/jobs/{job.pk}/")
    expect(page.locator("#sweep-gold canvas").first).to_be_visible()
    dark = _colors(page)
    assert _luminance(dark["body"]) < 0.03 and _luminance(dark["card"]) < 0.05, dark
    assert _luminance(dark["text"]) > 0.7, dark
    assert _luminance(dark["badge"]) < 0.1, dark  # the status badge too, not a light chip on a dark page
    # The chart's canvas: axes in the dark palette's colours, and what it drew there is light.
    strokes = page.evaluate(
        """() => { const u = window.congCharts.get(document.querySelector('#sweep-gold'));
                   return [u.axes[0].stroke(u, 0), u.axes[0].grid.stroke(u, 0), u.axes[1].stroke(u, 1)]; }"""
    )
    assert strokes == ["#c3cad6", "rgba(255, 255, 255, .1)", "#c3cad6"], strokes
    drawn = _axis_pixels(page, "#sweep-gold")
    assert drawn and max(drawn) > 0.5, drawn[:20]
    screenshot(page, "dark_job_page")

    page.goto(f"{base}/settings/notifications/")  # the new page is dark too
    assert _luminance(page.evaluate("() => getComputedStyle(document.body).backgroundColor")) < 0.03

    page.emulate_media(color_scheme="light")
    page.goto(f"{base}/jobs/{job.pk}/")
    expect(page.locator("#sweep-gold canvas").first).to_be_visible()
    light = _colors(page)
    assert _luminance(light["body"]) > 0.85 and _luminance(light["text"]) < 0.05, light
    drawn = _axis_pixels(page, "#sweep-gold")
    assert drawn and min(drawn) < 0.2, drawn[:20]  # black labels, uPlot's own default
    screenshot(page, "light_job_page")
    assert page.console_errors == [], page.console_errors
