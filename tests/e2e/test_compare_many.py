"""Three jobs compared on one page in a real browser (issue 16, "Compare any number of jobs"): ticked on the
dashboard, "Compare selected" opens /jobs/compare/?ids=..., where each metric's chart has one series per job
labelled "job N (name)", on whole-number steps; the table of settings that differ lists alpha; the results sit side
by side. No worker: the metric events are written the way the worker writes them (jobs.services.event_append), as
tests/e2e/test_charts.py does."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ROOT, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-compare-123"
VENDOR = ROOT / "static" / "vendor" / "uplot" / "uPlot.iife.min.js"
METRICS = ("sft/loss", "sft/grad_norm")


def _chart(page, name: str) -> dict:
    """The legend labels and x tick labels of the compare page's chart of metric ``name``, and its series' points."""
    return page.evaluate(
        """name => {
            const el = document.querySelector(`#compare-metrics [data-metric="${CSS.escape(name)}"]`);
            const u = window.congCharts.get(el);
            return {
                legend: [...el.querySelectorAll('.u-legend .u-series')].slice(1)
                    .map(tr => tr.querySelector('.u-label').textContent),
                ticks: JSON.parse(el.dataset.xTicks || '[]'),
                series: u.data.slice(1).map(ys => [...u.data[0]].map((x, i) => [x, ys[i]]).filter(p => p[1] !== null)),
            };
        }""",
        name,
    )


def test_three_jobs_compare_on_one_page(web_stack, browser_page, screenshot, django_user_model, monkeypatch):
    if not VENDOR.exists():
        pytest.fail(f"{VENDOR.relative_to(ROOT)} is missing: run `make install` (it vendors uPlot from npm)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job
    from jobs.services import event_append

    user = django_user_model.objects.create_user(username="cora", password=PASSWORD)
    jobs = []
    for i, (name, alpha) in enumerate((("low", 0.2), ("mid", 0.5), ("high", 0.8))):
        job = Job.objects.create(
            owner=user,
            kind="cd_generate",
            name=name,
            tags=["e2e"],
            status="succeeded",
            config={"kind": "cd_generate", "alpha": alpha, "params": {"max_prompts": 8}},
        )
        for step in range(1, 9):
            event_append(
                job_id=job.pk, type="metric", data={"name": "sft/loss", "value": 2 - 0.1 * step * (i + 1), "step": step}
            )
        event_append(job_id=job.pk, type="metric", data={"name": "sft/grad_norm", "value": 1.0 + i, "step": 4})
        jobs.append(job)
    jobs.reverse()  # the dashboard lists them newest first, and the compare page keeps the order they were ticked in
    labels = [f"job {j.pk} ({j.name})" for j in jobs]

    page, base = browser_page, web_stack.base_url
    login(page, base, "cora", PASSWORD)
    page.goto(f"{base}/?tag=e2e")
    for job in jobs:
        page.locator(f'input[name="ids"][value="{job.pk}"]').check()
    screenshot(page, "compare_many_1_dashboard")
    page.locator("#compare-selected").click()
    page.wait_for_url("**/jobs/compare/?ids=*")
    expect(page.locator("#compare-metrics canvas").first).to_be_visible()
    expect(page.locator('#compare-metrics [data-metric="sft/grad_norm"] canvas').first).to_be_visible()

    # One chart per metric, one series per job, each labelled with the job's number and name, on the jobs' steps.
    assert page.locator("#compare-metrics [data-metric]").evaluate_all("els => els.map(e => e.dataset.metric)") == [
        "sft/loss",
        "sft/grad_norm",
    ]
    loss = _chart(page, "sft/loss")
    assert loss["legend"] == labels, loss
    assert [len(s) for s in loss["series"]] == [8, 8, 8]
    assert loss["series"][0][0] == [1, pytest.approx(1.7)]  # "high": 2 - 0.1 * 3 at step 1
    assert all(float(t).is_integer() for t in loss["ticks"]), loss["ticks"]  # whole-number steps only
    grad = _chart(page, "sft/grad_norm")
    assert grad["legend"] == labels and [s[0][1] for s in grad["series"]] == [3.0, 2.0, 1.0]

    # The settings that differ: alpha (0.8, 0.5, 0.2); max_prompts is the same in all three and is not listed.
    alpha_row = page.locator('#config-diff tr[data-setting="alpha"] td')
    expect(alpha_row).to_have_text(["alpha", "0.8", "0.5", "0.2"])
    assert page.locator('#config-diff tr[data-setting="cd_generate.max_prompts"]').count() == 0
    header = page.locator("#config-diff thead th").all_text_contents()
    assert header == ["setting", *labels], header
    # The results side by side: a card per job.
    assert page.locator(".card.side").count() == 3
    screenshot(page, "compare_many_2_compare")

    # Smoothing redraws every chart with the same series.
    page.locator("#metrics-smoothing").fill("0.5")
    expect(page.locator("#metrics-smoothing-value")).to_have_text("0.50")
    assert _chart(page, "sft/loss")["legend"] == labels
    screenshot(page, "compare_many_3_smoothed")
    assert page.console_errors == [], page.console_errors


def test_an_experiment_page_draws_bands_error_bars_and_every_cells_metrics(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    """Two alphas x two seeds, finished (results written as a cong job writes them): the page's gold-vs-alpha chart
    has a series per method with a band per alpha, the methods chart an error bar per setting, and each metric one
    series per cell."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Experiment, Job
    from jobs.services import event_append

    user = django_user_model.objects.create_user(username="exa", password=PASSWORD)
    exp = Experiment.objects.create(
        owner=user, name="grid", grid={"alpha": [0.2, 0.6], "params.seed": [0, 1]}, baseline="weak_sft"
    )
    for alpha in (0.2, 0.6):
        for seed in (0, 1):
            gold = {"weak_sft": 0.3 + 0.05 * seed, "cong": 0.4 + alpha / 2 + 0.1 * seed}
            job = Job.objects.create(
                owner=user,
                kind="cong",
                status="succeeded",
                experiment=exp,
                name=f"grid [alpha={alpha}, seed={seed}]",
                config={"alpha": alpha, "params": {"seed": seed}},
                results={"methods": {m: {"label": m, "gold_mean": g} for m, g in gold.items()}, "kind": "cong"},
            )
            for step in range(1, 6):
                event_append(
                    job_id=job.pk, type="metric", data={"name": "sft/loss", "value": 2 - step * alpha, "step": step}
                )

    page, base = browser_page, web_stack.base_url
    login(page, base, "exa", PASSWORD)
    page.goto(f"{base}/experiments/{exp.pk}/")
    expect(page.locator("#gold-vs-alpha canvas").first).to_be_visible()
    bands = page.locator("#gold-vs-alpha").evaluate("el => JSON.parse(el.dataset.intervals)")
    # weak_sft at alpha 0.2 over seeds 0, 1: mean 0.325, t(1) interval 0.325 +- 12.706 * 0.025.
    assert len(bands) == 2 and [p[0] for p in bands[0]] == [0.2, 0.6]
    assert bands[0][0][1] == pytest.approx(0.325 - 12.706 * 0.025) and bands[0][0][2] == pytest.approx(
        0.325 + 12.706 * 0.025
    )
    bars = page.locator("#methods-intervals").evaluate("el => JSON.parse(el.dataset.intervals)")
    assert [len(b) for b in bars] == [2, 2]  # a bar per setting, for each of the two methods
    loss = page.locator('#experiment-metrics [data-metric="sft/loss"]')
    expect(loss.locator("canvas").first).to_be_visible()
    legend = loss.locator(".u-legend .u-series .u-label").all_text_contents()[1:]
    assert len(legend) == 4 and all(label.startswith("job ") and "alpha=" in label for label in legend), legend
    assert page.locator("#aggregate tbody tr").count() == 4  # 2 settings x 2 methods
    screenshot(page, "experiment_page")
    assert page.console_errors == [], page.console_errors
