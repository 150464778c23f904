"""The job page's charts in a real browser (issue 18, "Charts you can trust"): uPlot from static/vendor/ (make
install), one chart per metric, one series per pipeline stage.

A ConG pipeline job with the events its stages send (ml.pipeline announces each stage in the log, then the
stage's trainer logs ``sft/loss`` and the rest, ml.stages.callbacks): ConG-S's SFT and WeakSFT share metric
names, which once drew one zigzag line; some events are embedded in the page and some pushed live. A finished
alpha sweep with uneven alphas, and the compare page. No worker: the events are written the way the worker
writes them (jobs.services.event_append, then notify). The canvas has no text: the tests read the legend (DOM),
the tick labels the charts drew (data-x-ticks), uPlot's data, and the canvas pixels where a point must be.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ROOT, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-charts-123"
VENDOR = ROOT / "static" / "vendor" / "uplot" / "uPlot.iife.min.js"
ALPHAS = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]  # uneven: uPlot's own ticks (0, 0.2, 0.4, ...) would not be these
# A pipeline's metric names beyond sft/*: with sft/loss and sft/grad_norm, 11 charts (the old page drew 8).
OTHER_METRICS = [
    "cd_generate/implicit_reward_mean",
    "dpo/loss",
    "dpo/rewards/accuracies",
    "dpo/rewards/margins",
    "wspo/loss",
    "wspo/weak_ce",
    "auxconf/aux_weight",
    "auxconf/loss",
    "eval_cong/gold_mean",
]
FIRST, SECOND = (0x2F, 0x6F, 0xDF), (0xD9, 0x48, 0x0F)  # a chart's first two series colours (charts.js COLORS)


def _chart(page, name: str) -> dict:
    """What the chart of metric ``name`` shows: legend labels, the x tick labels it drew, its x values and each
    series' points (uPlot's aligned data, nulls dropped)."""
    return page.evaluate(
        """name => {
            const el = document.querySelector(`#metrics [data-metric="${CSS.escape(name)}"]`) ||
                       document.getElementById(name);
            const u = window.congCharts.get(el);
            return {
                legend: [...el.querySelectorAll('.u-legend .u-series')].slice(1)
                    .map(tr => tr.querySelector('.u-label').textContent),
                ticks: JSON.parse(el.dataset.xTicks || '[]'),
                xs: u ? [...u.data[0]] : [],
                series: u ? u.data.slice(1).map(ys => [...u.data[0]].map((x, i) => [x, ys[i]])
                    .filter(p => p[1] !== null)) : [],
                canvases: el.querySelectorAll('canvas').length,
            };
        }""",
        name,
    )


def _pixels_near(page, selector: str, x: float, y: float) -> list[list[int]]:
    """RGBA of the canvas pixels within 2 px of data point (x, y) of the chart at ``selector``."""
    return page.evaluate(
        """([sel, x, y]) => {
            const u = window.congCharts.get(document.querySelector(sel));
            const cx = Math.round(u.valToPos(x, 'x', true)), cy = Math.round(u.valToPos(y, 'y', true));
            const d = u.ctx.getImageData(cx - 2, cy - 2, 5, 5).data, out = [];
            for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2], d[i + 3]]);
            return out;
        }""",
        [selector, x, y],
    )


def _has_color(pixels: list[list[int]], rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return any(p[3] > 200 and all(abs(p[i] - rgb[i]) <= tol for i in range(3)) for p in pixels)


def _wait(page, expr: str, want, timeout: float = 20.0):
    """Poll ``expr`` (a function of no argument, run by page.evaluate) until it returns ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        got = page.evaluate(expr)
        if got == want or time.monotonic() > deadline:
            assert got == want, (expr, got)
            return
        time.sleep(0.1)


def test_metric_charts_series_per_stage_ticks_points_and_sweep(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch, settings, redis_url
):
    if not VENDOR.exists():
        pytest.fail(f"{VENDOR.relative_to(ROOT)} is missing: run `make install` (it vendors uPlot from npm)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job
    from jobs.notify import notify
    from jobs.services import event_append

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    user = django_user_model.objects.create_user(username="vera", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="cong", config={}, status="running", stage="sft")

    def emit(type_: str, data: dict) -> None:
        notify(job.pk, event_append(job_id=job.pk, type=type_, data=data))

    def stage(name: str, metrics: dict[str, list[tuple[int, float]]]) -> None:
        emit("log", {"message": f"pipeline: stage {name}"})  # ml.pipeline _Runner.stage
        for metric, points in metrics.items():
            for step, value in points:
                emit("metric", {"name": metric, "value": value, "step": step})

    cong_s_loss = [(s, 2.0 - 0.03 * s) for s in range(4, 53, 4)]  # steps 4..52
    weak_loss = [(s, 2.4 - 0.02 * s) for s in range(4, 29, 4)]  # steps 4..28: WeakSFT runs after ConG-S
    stage("cd_generate", {"cd_generate/implicit_reward_mean": [(8, 1.5), (16, 1.7)]})
    stage("sft_cong_s", {"sft/loss": cong_s_loss, "sft/grad_norm": [(s, 1.0 + 0.01 * s) for s in range(1, 41)]})
    stage("sft_weak", {"sft/loss": weak_loss[:3], "sft/grad_norm": [(8, 0.2)]})  # grad_norm: ONE point
    for i, name in enumerate(OTHER_METRICS):
        stage(name.split("/")[0], {name: [(2, 0.1 * i), (3, 0.1 * i + 0.05)] if i % 2 else [(5, 0.3)]})
    emit("log", {"message": "pipeline: stage sft_weak"})  # back to WeakSFT, live below
    embedded = job.events.count()

    page, base = browser_page, web_stack.base_url
    login(page, base, "vera", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    expect(page.locator("#conn")).to_have_text("live", timeout=20_000)
    for step, value in weak_loss[3:]:  # pushed live: the sft_weak series grows in place
        emit("metric", {"name": "sft/loss", "value": value, "step": step})
    _wait(page, "() => window.congLive.lastSeq", embedded + len(weak_loss) - 3)
    _wait(page, "() => JSON.parse(document.querySelector('[data-metric=\"sft/loss\"]').dataset.series)[1].points", 7)

    # sft/loss: two series with a legend, each on its own steps (no zigzag from step 52 back to step 4).
    loss = _chart(page, "sft/loss")
    assert loss["legend"] == ["sft_cong_s", "sft_weak"], loss["legend"]
    assert loss["series"] == [[list(p) for p in cong_s_loss], [list(p) for p in weak_loss]], loss["series"]
    assert loss["canvases"] >= 1

    # Every metric has its chart (no cap at 8), losses first; every step axis is labelled in whole numbers.
    names = page.locator("#metrics [data-metric]").evaluate_all("els => els.map(e => e.dataset.metric)")
    assert len(names) == 2 + len(OTHER_METRICS) > 8, names
    assert sorted(names) == sorted(["sft/loss", "sft/grad_norm", *OTHER_METRICS])
    assert all("loss" in n for n in names[:4]) and not any("loss" in n for n in names[4:]), names
    assert page.locator("#metrics canvas").count() >= len(names)
    for name in names:
        ticks = _chart(page, name)["ticks"]
        assert ticks and all(re.fullmatch(r"-?\d+", t) for t in ticks), (name, ticks)

    # A series of one point among 40 others' steps is drawn as a point (in its legend colour).
    grad = _chart(page, "sft/grad_norm")
    assert grad["legend"] == ["sft_cong_s", "sft_weak"] and grad["series"][1] == [[8, 0.2]], grad
    sel = '#metrics [data-metric="sft/grad_norm"]'
    assert _has_color(_pixels_near(page, sel, 8, 0.2), SECOND), _pixels_near(page, sel, 8, 0.2)
    # So is a chart whose only series has one point; its axis still has whole-number ticks around it.
    one = _chart(page, "eval_cong/gold_mean")
    assert one["series"] == [[[5, 0.3]]] and one["legend"] == ["eval_cong"] and "5" in one["ticks"], one
    one_sel = '#metrics [data-metric="eval_cong/gold_mean"]'
    assert _has_color(_pixels_near(page, one_sel, 5, 0.3), FIRST)
    screenshot(page, "charts_1_metrics")

    # Smoothing: off by default; on, the line is the moving average and the raw points are still drawn.
    assert page.locator("#metrics-smoothing-value").inner_text() == "off"
    loss_sel = '#metrics [data-metric="sft/loss"]'
    before = page.evaluate("sel => window.congCharts.get(document.querySelector(sel)).ctx.canvas.toDataURL()", loss_sel)
    page.locator("#metrics-smoothing").evaluate("el => { el.value = '0.6'; el.dispatchEvent(new Event('input')); }")
    expect(page.locator("#metrics-smoothing-value")).to_have_text("0.60")
    page.wait_for_timeout(300)  # one animation frame redraws the charts
    after = page.evaluate("sel => window.congCharts.get(document.querySelector(sel)).ctx.canvas.toDataURL()", loss_sel)
    assert after != before
    last = cong_s_loss[-1]  # the last raw point sits away from the (lagging) average, and is still drawn
    assert any(p[3] > 0 for p in _pixels_near(page, loss_sel, *last))
    assert _chart(page, "sft/loss")["series"][0] == [list(p) for p in cong_s_loss]  # the data stays raw
    screenshot(page, "charts_2_smoothed")
    assert page.console_errors == [], page.console_errors  # CSP violations would be console errors

    # A finished alpha sweep: its charts' x ticks and values are its alphas; the live sweep metric too.
    sweep = [
        {"alpha": a, "name": f"a{a}", "gold_mean": 0.2 + 0.5 * a * (1.2 - a), "implicit_mean": 3 - 2.5 * a, "n": 8}
        for a in ALPHAS
    ]
    sj = Job.objects.create(
        owner=user,
        kind="alpha_sweep",
        status="succeeded",
        config={"spec": {"kind": "alpha_sweep", "alphas": ALPHAS}},
        results={"alphas": sweep},
    )
    for k, row in enumerate(sweep):  # ml.execute._sweep: step = the alpha's index in the spec's alphas
        data = {"name": "sweep_gold_mean", "value": row["gold_mean"], "step": k}
        event_append(job_id=sj.pk, type="metric", data=data)
    page.goto(f"{base}/jobs/{sj.pk}/")
    expect(page.locator("#sweep-gold canvas").first).to_be_visible()
    want = [f"{a:g}" for a in ALPHAS]
    for chart in ("sweep-gold", "sweep-implicit", "sweep_gold_mean"):
        c = _chart(page, chart)
        assert c["xs"] == ALPHAS and c["ticks"] == want, (chart, c)
    gold = _chart(page, "sweep-gold")["series"][0]
    assert gold == [[a, pytest.approx(0.2 + 0.5 * a * (1.2 - a))] for a in ALPHAS]
    assert _has_color(_pixels_near(page, "#sweep-gold", ALPHAS[2], gold[2][1]), FIRST)
    # The scatter (implicit vs gold, one point per alpha) stays points only, each labelled.
    scatter = page.evaluate(
        "() => { const u = window.congCharts.get(document.getElementById('scatter')); "
        "return {n: u.data[0].length, paths: u.series[1].paths(u, 1, 0, u.data[0].length - 1)}; }"
    )
    assert scatter == {"n": len(ALPHAS), "paths": None}, scatter
    screenshot(page, "charts_3_sweep")

    # The compare page draws each side's sweep charts the same way.
    page.goto(f"{base}/jobs/compare/?a={job.pk}&b={sj.pk}")
    expect(page.locator('.sweep[data-side="b"] canvas').first).to_be_visible()
    ticks = page.locator('.sweep[data-side="b"]').evaluate_all("els => els.map(e => JSON.parse(e.dataset.xTicks))")
    assert ticks == [want, want], ticks
    screenshot(page, "charts_4_compare")
    assert page.console_errors == [], page.console_errors


def test_a_page_without_the_vendored_library_says_so_and_keeps_working(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    """uPlot's file missing (no `make install`): every chart says so, and the rest of the page still runs."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job
    from jobs.services import event_append

    user = django_user_model.objects.create_user(username="walt", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="cong", config={}, status="succeeded")
    event_append(job_id=job.pk, type="metric", data={"name": "sft/loss", "value": 1.0, "step": 1})
    event_append(job_id=job.pk, type="log", data={"message": "still here"})
    page, base = browser_page, web_stack.base_url
    login(page, base, "walt", PASSWORD)
    page.route("**/static/vendor/uplot/**", lambda route: route.fulfill(status=404, body="not found"))
    page.goto(f"{base}/jobs/{job.pk}/")
    expect(page.locator('#metrics [data-metric="sft/loss"] .chart-missing')).to_contain_text(
        "charts need `make install`"
    )
    expect(page.locator("#log")).to_contain_text("still here")  # the event state machine ran
    assert page.evaluate("() => window.congLive.lastSeq") == 2
    screenshot(page, "charts_5_no_vendor")
    errors = [e for e in page.console_errors if "/static/vendor/uplot/" not in e]  # the 404s we made
    assert errors == [], errors
    assert json.loads(page.locator("#live-config").text_content())["job_id"] == job.pk
