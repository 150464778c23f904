/* The job pages' charts: a thin wrapper over uPlot (npm `uplot`, pinned in package-lock.json, copied into
 * static/vendor/uplot/ by `make install`; docs/UI.md). Without that file every chart says so and nothing else
 * breaks. uPlot draws on a canvas and styles its DOM through the CSSOM only: the page CSP needs no change.
 *
 * congCharts.line(el, {title, xLabel, yLabel, series: [{name, points: [[x, y], ...], color}], integerX, xTicks,
 *                      smoothing})
 *   One line per series, with a legend. integerX: ticks on whole numbers only (training steps). xTicks: the
 *   ticks exactly at these values (a sweep's alphas). smoothing in [0, 1): the line is the EMA of the points
 *   (debiased, as TensorBoard's) and every raw point stays drawn; 0 = the raw line. Called again on the same el
 *   it updates the chart in place (same series) or rebuilds it (new series or options).
 * congCharts.scatter(el, {title, points: [[x, y, label], ...], xLabel, yLabel, unit})
 *   Points only; labels beside the points when there are few.
 * congCharts.get(el): the uPlot instance on el (the browser tests read its scales and canvas).
 */
(function () {
  "use strict";
  const COLORS = ["#2f6fdf", "#d9480f", "#1f8a4c", "#7048e8", "#c2255c", "#0b7285", "#5c940d", "#862e9c"];
  const W = 360, H = 220;  // three to a row on a wide page
  // Whole-number tick spacings for step axes; uPlot picks the smallest that leaves room for the labels.
  const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
  const SHOW_POINTS_UP_TO = 60;  // a series with at most this many points draws each one (never a lone one lost)
  const LABELS_UP_TO = 12;       // scatter: labels beside the points when there are at most this many
  const MISSING = "charts need `make install` (static/vendor/uplot/ is missing)";
  const available = typeof window.uPlot === "function";
  const LINEAR = available ? window.uPlot.paths.linear() : null;

  // Axis text, grid and point labels from the page's palette (style.css: --chart-*, light or dark with the system's
  // setting), read when a chart is built: a canvas does not follow CSS by itself.
  function theme() {
    const css = getComputedStyle(document.documentElement);
    const pick = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    return {axis: pick("--chart-axis", "#000"), grid: pick("--chart-grid", "rgba(0,0,0,0.07)"), label: pick("--chart-label", "#344054")};
  }

  function axisColors(axis, t) {  // uPlot deep-merges these into its axis defaults (width, size, filter stay)
    return Object.assign(axis, {stroke: t.axis, grid: {stroke: t.grid}, ticks: {stroke: t.grid}});
  }

  function rgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16 & 255},${n >> 8 & 255},${n & 255},${a})`;
  }

  function fmt(v) {  // a tick or legend number: short, no float noise
    if (v === null || v === undefined || !isFinite(v)) return "-";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  // uPlot wants one shared, sorted x array with a y array per series (null where a series has no point).
  function align(series) {
    const xs = [...new Set(series.flatMap(s => s.points.map(p => p[0])))].filter(x => isFinite(x)).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const ys = series.map(s => {
      const col = new Array(xs.length).fill(null);
      for (const [x, y] of s.points) if (at.has(x) && y !== null && isFinite(y)) col[at.get(x)] = y;
      return col;
    });
    return [xs, ...ys];
  }

  function ema(ys, w) {  // debiased exponential moving average over the non-null values, in x order
    let m = 0, n = 0;
    return ys.map(y => {
      if (y === null) return null;
      m = w * m + (1 - w) * y;
      n++;
      return m / (1 - Math.pow(w, n));
    });
  }

  // A path builder drawing the EMA of a series' points instead of the points themselves.
  function emaPath(u, si, i0, i1, w) {
    const xs = u.data[0], ys = ema(u.data[si], w), p = new Path2D();
    let started = false;
    for (let i = Math.max(0, i0 - 1); i <= Math.min(xs.length - 1, i1 + 1); i++) {
      if (ys[i] === null) continue;
      const px = u.valToPos(xs[i], "x", true), py = u.valToPos(ys[i], "y", true);
      if (started) p.lineTo(px, py); else { p.moveTo(px, py); started = true; }
    }
    return {stroke: p, fill: null, clip: null, band: null, gaps: null, flags: 0};
  }

  function clear(el) {
    const prev = el._congChart;
    if (prev) prev.destroy();
    el._congChart = el._congState = null;
    el.textContent = "";
    el.classList.add("chart");
  }

  function notice(el, title, text) {
    clear(el);
    const p = document.createElement("p");
    p.className = "chart-missing";
    p.textContent = title ? `${title}: ${text}` : text;
    el.appendChild(p);
  }

  // The x axis: whole-number steps, exactly the given ticks, or uPlot's own. What it labels is kept on the
  // element (data-x-ticks) for the browser tests: the canvas has no text to read.
  function xAxis(el, opts) {
    const axis = {scale: "x", label: opts.xLabel || "", labelSize: 18, size: 34};
    const record = labels => { el.dataset.xTicks = JSON.stringify(labels.filter(l => l !== "")); return labels; };
    if (opts.xTicks) {
      const ticks = [...opts.xTicks].sort((a, b) => a - b);
      axis.splits = () => ticks;
      // Every tick gets a grid line; labels thin out when they would not fit (a 21-alpha sweep).
      axis.values = (u, splits) => {
        const every = Math.max(1, Math.ceil(splits.length * 34 / Math.max(1, u.bbox.width / devicePixelRatio)));
        return record(splits.map((v, i) => (i % every === 0 || i === splits.length - 1 ? String(v) : "")));
      };
    } else if (opts.integerX) {
      axis.incrs = INT_INCRS;
      axis.values = (u, splits) => record(splits.map(v => String(v)));
    } else {
      axis.values = (u, splits) => record(splits.map(fmt));
    }
    return axis;
  }

  function xRange(opts) {
    if (opts.xTicks && opts.xTicks.length) {
      const lo = Math.min(...opts.xTicks), hi = Math.max(...opts.xTicks), pad = hi > lo ? (hi - lo) * 0.04 : 0.05;
      return () => [lo - pad, hi + pad];
    }
    // One x value: uPlot's own padding would put it amid ten empty units; one unit each side instead.
    return (u, lo, hi) => (u.data[0].length === 1 ? [u.data[0][0] - 1, u.data[0][0] + 1] : lo === null ? [0, 1] : [lo, hi]);
  }

  function line(el, opts) {
    if (!available) { notice(el, opts.title, MISSING); return; }
    const series = (opts.series || []).map(s => ({...s, points: (s.points || []).filter(p => isFinite(p[0]) && p[1] !== null && isFinite(p[1]))}))
      .filter(s => s.points.length);
    if (!series.length) { notice(el, opts.title, "no data yet"); return; }
    const data = align(series);
    const smoothing = Math.max(0, Math.min(0.99, Number(opts.smoothing) || 0));
    const key = JSON.stringify([opts.title, opts.xLabel, opts.yLabel, !!opts.integerX, opts.xTicks || null,
                                series.map(s => [s.name, s.color || ""])]);
    const counts = data.slice(1).map(col => col.filter(y => y !== null).length);
    el.dataset.series = JSON.stringify(series.map((s, i) => ({name: s.name, points: counts[i]})));
    let u = el._congChart, st = el._congState;
    if (u && st.key === key) {  // same chart: new data (and smoothing), paths rebuilt
      Object.assign(st, {counts, smoothing});
      u.setData(data);
      return u;
    }
    clear(el);
    st = {key, counts, smoothing};
    const colors = series.map((s, i) => s.color || COLORS[i % COLORS.length]), t = theme();
    u = new window.uPlot({
      title: opts.title, width: W, height: H,
      scales: {x: {time: false, range: xRange(opts)}},
      axes: [axisColors(xAxis(el, opts), t),
             axisColors({label: opts.yLabel || "", labelSize: opts.yLabel ? 18 : 0, size: 52, values: (u, s) => s.map(fmt)}, t)],
      legend: {live: true},
      series: [
        {label: opts.xLabel || "x", value: (u, v) => fmt(v)},
        ...series.map((s, i) => ({
          label: s.name, stroke: colors[i], width: 1.6, spanGaps: true, value: (u, v) => fmt(v),
          paths: (uu, si, i0, i1) => (st.smoothing > 0 ? emaPath(uu, si, i0, i1, st.smoothing) : LINEAR(uu, si, i0, i1)),
          points: {
            size: 5, width: 1, stroke: colors[i],
            fill: () => (st.smoothing > 0 ? rgba(colors[i], 0.35) : colors[i]),
            show: (uu, si) => st.smoothing > 0 || st.counts[si - 1] <= SHOW_POINTS_UP_TO,
          },
        })),
      ],
    }, data, el);
    el._congChart = u;
    el._congState = st;
    return u;
  }

  function scatter(el, opts) {
    if (!available) { notice(el, opts.title, MISSING); return; }
    const pts = (opts.points || []).filter(p => isFinite(p[0]) && isFinite(p[1])).sort((a, b) => a[0] - b[0]);
    if (!pts.length) { notice(el, opts.title, "no data"); return; }
    clear(el);
    const color = COLORS[0], labels = pts.map(p => p[2] || ""), t = theme();
    el.dataset.series = JSON.stringify([{name: opts.unit || "points", points: pts.length}]);
    const drawLabels = u => {  // a label beside each point (alphas, methods); on the left near the right edge
      if (pts.length > LABELS_UP_TO || !labels.some(Boolean)) return;
      const ctx = u.ctx, r = devicePixelRatio;
      ctx.save();
      ctx.font = `${11 * r}px sans-serif`;
      ctx.fillStyle = t.label;
      pts.forEach((p, i) => {
        const x = u.valToPos(p[0], "x", true), y = u.valToPos(p[1], "y", true);
        const right = x > u.bbox.left + u.bbox.width - 70 * r;
        ctx.textAlign = right ? "right" : "left";
        ctx.fillText(labels[i], x + (right ? -6 : 6) * r, y - 5 * r);
      });
      ctx.restore();
    };
    const u = new window.uPlot({
      title: opts.title, width: W, height: H,
      scales: {x: {time: false, range: xRange({})}},
      axes: [axisColors(xAxis(el, opts), t),
             axisColors({label: opts.yLabel || "", labelSize: opts.yLabel ? 18 : 0, size: 52, values: (u, s) => s.map(fmt)}, t)],
      series: [
        {label: opts.xLabel || "x", value: (u, v, si, i) => (i === null || i === undefined ? "-" : fmt(v) + (labels[i] ? ` (${labels[i]})` : ""))},
        {label: opts.yLabel || "y", stroke: color, paths: () => null, value: (u, v) => fmt(v),
         points: {show: true, size: labels.some(Boolean) ? 8 : 6, width: 1, stroke: color, fill: rgba(color, 0.6)}},
      ],
      hooks: {draw: [drawLabels]},
    }, [pts.map(p => p[0]), pts.map(p => p[1])], el);
    el._congChart = u;
    return u;
  }

  window.congCharts = {line, scatter, available, get: el => el._congChart || null};
})();
