/* Experiment page (templates/jobs/experiment_detail.html; data from jobs.services.experiments.experiment_summary
 * and jobs.compare_data.metric_series, embedded as experiment-data):
 *   gold vs alpha: one line per method (and other grid values), its 95% interval drawn as a band;
 *   methods: each setting's methods as points with 95% error bars (x: the setting's # in the table, each method
 *   a little apart so the bars do not overlap);
 *   the cells' metrics: one chart per metric, one series per cell's job, with the smoothing slider.
 * Charts are congCharts.line (static/jobs/charts.js); bands and bars are drawn by a draw hook on its uPlot chart.
 * The intervals drawn are kept on the element (data-intervals) for the tests: a canvas has no text to read. */
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("experiment-data").textContent);
  const $ = id => document.getElementById(id);

  function color(u, i) {
    const s = u.series[i].stroke;
    return typeof s === "function" ? s(u, i) : s;
  }

  function withAlpha(c, a) {
    if (typeof c !== "string" || c[0] !== "#") return c;
    const n = parseInt(c.slice(1), 16);
    return `rgba(${n >> 16 & 255},${n >> 8 & 255},${n & 255},${a})`;
  }

  // sets[i] = [[x, lo, hi], ...] for series i + 1; band: a filled band through them, else an error bar at each.
  function intervals(el, sets, band) {
    const u = congCharts.get(el);
    el.dataset.intervals = JSON.stringify(sets);
    if (!u) return;
    const draw = uu => {
      const ctx = uu.ctx, r = devicePixelRatio, box = uu.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(box.left, box.top, box.width, box.height);
      ctx.clip();  // a zoomed-in chart's intervals stay inside the plot
      sets.forEach((pts, i) => {
        const ok = pts.filter(p => p[1] !== null && p[2] !== null && isFinite(p[1]) && isFinite(p[2]));
        if (!ok.length) return;
        const X = p => uu.valToPos(p[0], "x", true), Y = v => uu.valToPos(v, "y", true);
        ctx.strokeStyle = ctx.fillStyle = withAlpha(color(uu, i + 1), band ? 0.18 : 0.9);
        ctx.lineWidth = 1.4 * r;
        if (band && ok.length > 1) {
          ctx.beginPath();
          ok.forEach((p, k) => (k ? ctx.lineTo(X(p), Y(p[2])) : ctx.moveTo(X(p), Y(p[2]))));
          [...ok].reverse().forEach(p => ctx.lineTo(X(p), Y(p[1])));
          ctx.closePath();
          ctx.fill();
          return;
        }
        ok.forEach(p => {  // an error bar with caps (a band of one point is a bar too)
          const x = X(p), lo = Y(p[1]), hi = Y(p[2]), cap = 4 * r;
          ctx.beginPath();
          ctx.moveTo(x, lo); ctx.lineTo(x, hi);
          ctx.moveTo(x - cap, lo); ctx.lineTo(x + cap, lo);
          ctx.moveTo(x - cap, hi); ctx.lineTo(x + cap, hi);
          ctx.stroke();
        });
      });
      ctx.restore();
    };
    (u.hooks.draw = u.hooks.draw || []).push(draw);
    // The y range covers the intervals too, not only the means uPlot was given (two seeds: a wide t interval).
    const ys = [...sets.flatMap(pts => pts.flatMap(p => [p[1], p[2]])), ...u.data.slice(1).flat()]
      .filter(v => v !== null && isFinite(v));
    if (ys.length) {
      const lo = Math.min(...ys), hi = Math.max(...ys), pad = (hi - lo) * 0.05 || 0.05;
      u.setScale("y", {min: lo - pad, max: hi + pad});
    }
    u.redraw();
  }

  // Gold vs alpha, when the grid varies alpha.
  const byAlpha = data.plots.gold_vs_alpha;
  if (byAlpha && byAlpha.length) {
    const alphas = [...new Set(byAlpha.flatMap(s => s.points.map(p => p.alpha)))];
    congCharts.line($("gold-vs-alpha"), {
      title: "gold reward vs alpha (95% bands over seeds)", xLabel: "alpha", xTicks: alphas,
      series: byAlpha.map(s => ({name: s.name, points: s.points.map(p => [p.alpha, p.mean])})),
    });
    intervals($("gold-vs-alpha"), byAlpha.map(s => s.points.map(p => [p.alpha, p.ci[0], p.ci[1]])), true);
  } else {
    $("gold-vs-alpha").remove();
  }

  // Every setting's methods with their intervals.
  const pts = data.plots.methods.filter(p => p.mean !== null);
  if (pts.length) {
    const settings = [...new Set(data.plots.methods.map(p => p.setting))];
    const methods = [...new Set(pts.map(p => p.label))];
    // Inside the padding congCharts leaves around the ticks (4% of their span, 0.05 for one): no point is cut off.
    const pad = settings.length > 1 ? (settings.length - 1) * 0.04 : 0.05;
    const step = methods.length > 1 ? 1.2 * pad / (methods.length - 1) : 0;
    const x = (p, m) => settings.indexOf(p.setting) + (m - (methods.length - 1) / 2) * step;
    congCharts.line($("methods-intervals"), {
      title: "gold reward by setting and method (95% intervals)", xLabel: "setting (# in the table)",
      xTicks: settings.map((s, i) => i),
      series: methods.map((name, m) => ({name, points: pts.filter(p => p.label === name).map(p => [x(p, m), p.mean])})),
    });
    const chart = congCharts.get($("methods-intervals"));
    if (chart) methods.forEach((_, m) => { chart.series[m + 1].paths = () => null; });  // points, no lines
    intervals($("methods-intervals"), methods.map((name, m) => pts.filter(p => p.label === name)
      .map(p => [x(p, m), p.ci[0], p.ci[1]])), false);
  } else {
    $("methods-intervals").innerHTML = '<p class="muted">No cell has succeeded yet: nothing to plot.</p>';
  }

  // The cells' metrics, overlaid: one chart per metric, one series per cell.
  const box = $("experiment-metrics");
  if (!box) return;
  const charts = Object.keys(data.metrics).map(name => {
    const el = document.createElement("div");
    el.dataset.metric = name;
    box.appendChild(el);
    return [el, name];
  });
  const draw = smoothing => charts.forEach(([el, name]) => congCharts.line(el, {
    title: name, xLabel: "step", integerX: true, smoothing,
    series: data.metrics[name].map(s => ({name: s.name, points: s.points})),
  }));
  draw(0);
  const slider = $("metrics-smoothing");
  slider.addEventListener("input", () => {
    const w = Number(slider.value) || 0;
    $("metrics-smoothing-value").textContent = w ? w.toFixed(2) : "off";
    draw(w);
  });
})();
