/* Compare page: each job's alpha-sweep charts (sweeps-data), x ticks at that job's alphas; and one chart per metric
   with one series per job (metrics-data: jobs.compare_data.metric_series), on whole-number steps, with the
   smoothing slider. A file rather than an inline <script>: the Content-Security-Policy allows scripts from 'self'
   only. */
(function () {
  const sweeps = JSON.parse(document.getElementById("sweeps-data").textContent);
  document.querySelectorAll(".sweep").forEach(el => {
    const pts = sweeps[el.dataset.side] || [];
    if (!pts.length) { el.remove(); return; }
    const y = el.dataset.y;  // gold and implicit reward have different scales: one chart each
    congCharts.line(el, {title: `${y} reward vs alpha`, xLabel: "alpha", xTicks: pts.map(p => p.alpha),
      series: [{name: y, points: pts.map(p => [p.alpha, p[y]]), color: y === "gold" ? "#2f6fdf" : "#d9480f"}]});
  });

  const metrics = JSON.parse(document.getElementById("metrics-data").textContent);
  const box = document.getElementById("compare-metrics");
  if (!box) return;
  const charts = Object.keys(metrics).map(name => {
    const el = document.createElement("div");
    el.dataset.metric = name;
    box.appendChild(el);
    return [el, name];
  });
  function draw(smoothing) {
    charts.forEach(([el, name]) => congCharts.line(el, {
      title: name, xLabel: "step", integerX: true, smoothing,
      series: metrics[name].map(s => ({name: s.name, points: s.points})),
    }));
  }
  draw(0);
  const slider = document.getElementById("metrics-smoothing");
  slider.addEventListener("input", () => {
    const w = Number(slider.value) || 0;
    document.getElementById("metrics-smoothing-value").textContent = w ? w.toFixed(2) : "off";
    draw(w);
  });
})();
