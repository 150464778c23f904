/* The job page's charts (static/jobs/charts.js draws them): the live metrics, fed by job_live.js's event state
 * machine in seq order, and the results plots the server embeds (the alpha sweep, implicit vs gold).
 *
 * congJobCharts(cfg, changed) -> {metric(data), log(message), render(), results(), metrics}
 *   metric/log take a metric event's data and a log line; render() redraws the charts whose data changed;
 *   changed() is called when the smoothing slider asks for a redraw.
 *
 * One chart per metric name, one series per stage. A pipeline's stages share metric names (ConG-S's SFT and
 * WeakSFT both log sft/loss) and a metric event carries only {name, value, step}: its stage is the one the
 * pipeline announced last in the log ("pipeline: stage sft_weak", ml.pipeline _Runner.stage). Outside a
 * pipeline a metric has one series, named after it.
 */
(function () {
  "use strict";
  const STAGE_LOG = /^pipeline: stage (\S+)/;
  // ml.execute._sweep reports sweep_gold_mean with the alpha's index in the spec's alphas as its step.
  const SWEEP_METRIC = "sweep_gold_mean";

  window.congJobCharts = function (cfg, changed) {
    const $ = id => document.getElementById(id);
    const alphasEl = $("sweep-alphas");  // the spec's alphas (a sweep), embedded by the template
    const sweepAlphas = alphasEl ? JSON.parse(alphasEl.textContent) : null;
    const metrics = new Map();  // name -> series key (pipeline stage, "" outside one) -> Map step -> value
    const charts = new Map();   // name -> its chart's element
    const dirty = new Set();
    let stage = "", smoothing = 0;

    function log(message) {
      const m = STAGE_LOG.exec(message || "");
      if (m) stage = m[1];
    }

    function metric(d) {
      if (typeof d.value !== "number" || !d.name) return;
      const byKey = metrics.get(d.name) || new Map();
      const pts = byKey.get(stage) || new Map();
      let x = typeof d.step === "number" ? d.step : pts.size;
      if (d.name === SWEEP_METRIC && Array.isArray(sweepAlphas) && typeof sweepAlphas[d.step] === "number") {
        x = sweepAlphas[d.step];
      }
      pts.set(x, d.value);  // a resumed stage logs its steps again: a step's latest value counts
      byKey.set(stage, pts);
      metrics.set(d.name, byKey);
      dirty.add(d.name);
    }

    // Losses first (the curve people look for), then by name; no cap on their number.
    function render() {
      if (!dirty.size) return;
      let added = false;
      for (const name of dirty) {
        let el = charts.get(name);
        if (!el) {
          el = document.createElement("div");
          el.dataset.metric = name;
          charts.set(name, el);
          added = true;
        }
        const sweep = name === SWEEP_METRIC && Array.isArray(sweepAlphas);
        congCharts.line(el, {
          title: name, xLabel: sweep ? "alpha" : "step", integerX: !sweep, xTicks: sweep ? sweepAlphas : null, smoothing,
          series: [...metrics.get(name)].map(([key, pts]) => ({name: key || name, points: [...pts]})),
        });
      }
      dirty.clear();
      if (!added) return;
      $("metrics-empty") && $("metrics-empty").remove();
      const box = $("metrics");
      [...charts.keys()].sort((a, b) => (!/loss/i.test(a)) - (!/loss/i.test(b)) || a.localeCompare(b))
        .forEach(n => box.appendChild(charts.get(n)));  // moved into order; a canvas keeps its drawing
    }

    const slider = $("metrics-smoothing");
    if (slider) slider.addEventListener("input", () => {
      smoothing = Number(slider.value) || 0;
      $("metrics-smoothing-value").textContent = smoothing ? smoothing.toFixed(2) : "off";
      charts.forEach((el, name) => dirty.add(name));
      changed();
    });

    // The results plots (data embedded by the server): x ticks at the sweep's own alphas.
    function results() {
      if (cfg.sweep && cfg.sweep.length && $("sweep-gold")) {
        const alphas = cfg.sweep.map(p => p.alpha);
        congCharts.line($("sweep-gold"), {title: "gold reward vs alpha", xLabel: "alpha", xTicks: alphas,
          series: [{name: "gold", points: cfg.sweep.map(p => [p.alpha, p.gold])}]});
        const implicit = cfg.sweep.filter(p => typeof p.implicit === "number" && isFinite(p.implicit));
        if (implicit.length) {
          congCharts.line($("sweep-implicit"), {title: "implicit reward vs alpha", xLabel: "alpha", xTicks: alphas,
            series: [{name: "implicit", points: implicit.map(p => [p.alpha, p.implicit]), color: "#d9480f"}]});
        } else {  // truly none: neither the sweep's results nor its stored pairs carry an implicit reward
          $("sweep-implicit").innerHTML = '<p class="muted">implicit reward vs alpha: neither this sweep\'s results nor its pairs carry an implicit reward.</p>';
        }
      }
      const sc = cfg.scatter || {};
      if (sc.points && sc.points.length && $("scatter")) {
        congCharts.scatter($("scatter"), {title: `implicit vs gold reward (${sc.points.length} ${sc.unit})`,
          points: sc.points, unit: sc.unit, xLabel: "implicit reward", yLabel: "gold"});
      }
    }

    return {metric, log, render, results, metrics};
  };
})();
