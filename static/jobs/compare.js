/* Compare page: one alpha-sweep chart per job and reward (data from the page's sweeps-data block), x ticks at
   that job's alphas. A file rather than an inline <script>: the Content-Security-Policy allows scripts from
   'self' only. */
(function () {
  const sweeps = JSON.parse(document.getElementById("sweeps-data").textContent);
  document.querySelectorAll(".sweep").forEach(el => {
    const pts = sweeps[el.dataset.side] || [];
    if (!pts.length) { el.remove(); return; }
    const y = el.dataset.y;  // gold and implicit reward have different scales: one chart each
    congCharts.line(el, {title: `${y} reward vs alpha`, xLabel: "alpha", xTicks: pts.map(p => p.alpha),
      series: [{name: y, points: pts.map(p => [p.alpha, p[y]]), color: y === "gold" ? "#2f6fdf" : "#d9480f"}]});
  });
})();
