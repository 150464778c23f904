/* Tiny SVG charts (line and scatter) for the job pages. No libraries: nothing outside can be reached.
 * congCharts.line(el, {title, series: [{name, points: [[x, y], ...]}], xLabel, yLabel})
 * congCharts.scatter(el, {title, points: [[x, y], ...], xLabel, yLabel})
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fdf", "#d9480f", "#1f8a4c", "#7048e8", "#c2255c", "#0b7285", "#5c940d", "#862e9c"];
  const W = 340, H = 200, M = {l: 46, r: 10, t: 8, b: 32};

  function node(tag, attrs, parent, text) {
    const n = document.createElementNS(NS, tag);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    if (parent) parent.appendChild(n);
    return n;
  }

  // Tick label with just enough decimals to tell neighbouring ticks (step apart) from each other.
  function fmt(v, step) {
    if (Math.abs(v) >= 1e5) return v.toExponential(1);
    const decimals = Math.min(6, Math.max(0, Math.ceil(-Math.log10(step || 1)) + (step < 1 ? 1 : 0)));
    return (Math.abs(v) < step / 1e3 ? 0 : v).toFixed(decimals);
  }

  function extent(vals) {
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (!isFinite(lo) || !isFinite(hi)) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  // Frame: axes, 4 ticks each way, labels. Returns projection functions.
  function frame(svg, xs, ys, opts) {
    const [x0, x1] = opts.xDomain || extent(xs), [y0, y1] = extent(ys);
    const px = x => M.l + (x - x0) / (x1 - x0) * (W - M.l - M.r);
    const py = y => H - M.b - (y - y0) / (y1 - y0) * (H - M.t - M.b);
    for (let i = 0; i <= 4; i++) {
      const yv = y0 + (y1 - y0) * i / 4, xv = x0 + (x1 - x0) * i / 4;
      node("line", {x1: M.l, x2: W - M.r, y1: py(yv), y2: py(yv), stroke: "#eef0f4"}, svg);
      node("text", {x: M.l - 4, y: py(yv) + 3, "text-anchor": "end"}, svg, fmt(yv, (y1 - y0) / 4));
      node("text", {x: px(xv), y: H - M.b + 12, "text-anchor": "middle"}, svg, fmt(xv, (x1 - x0) / 4));
    }
    node("rect", {x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "none", stroke: "#c9ced8"}, svg);
    if (opts.xLabel) node("text", {x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle"}, svg, opts.xLabel);
    if (opts.yLabel) node("text", {x: 10, y: (M.t + H - M.b) / 2, "text-anchor": "middle",
                                   transform: `rotate(-90 10 ${(M.t + H - M.b) / 2})`}, svg, opts.yLabel);
    return {px, py};
  }

  function shell(el, opts) {
    el.textContent = "";
    el.classList.add("chart");
    if (opts.title) { const t = document.createElement("div"); t.className = "title"; t.textContent = opts.title; el.appendChild(t); }
    return node("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "chart"}, el);
  }

  function line(el, opts) {
    const svg = shell(el, opts);
    const series = (opts.series || []).filter(s => s.points && s.points.length);
    const pts = series.flatMap(s => s.points).filter(p => p[1] !== null && isFinite(p[1]));
    if (!pts.length) { node("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "no data yet"); return; }
    const {px, py} = frame(svg, pts.map(p => p[0]), pts.map(p => p[1]), opts);
    series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      const ok = s.points.filter(p => p[1] !== null && isFinite(p[1]));
      node("polyline", {points: ok.map(p => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" "),
                        fill: "none", stroke: color, "stroke-width": 1.6}, svg);
      if (ok.length <= 30) ok.forEach(p => node("circle", {cx: px(p[0]), cy: py(p[1]), r: 2.5, fill: color}, svg));
      // Legend colour through the CSSOM: a style="" attribute would break the Content-Security-Policy.
      if (series.length > 1) node("text", {x: W - M.r - 4, y: M.t + 12 + 12 * i, "text-anchor": "end"}, svg, s.name).style.fill = color;
    });
  }

  function scatter(el, opts) {
    const svg = shell(el, opts);
    const pts = (opts.points || []).filter(p => isFinite(p[0]) && isFinite(p[1]));
    if (!pts.length) { node("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "no data"); return; }
    const {px, py} = frame(svg, pts.map(p => p[0]), pts.map(p => p[1]), opts);
    pts.forEach(p => {
      const c = node("circle", {cx: px(p[0]), cy: py(p[1]), r: p[2] ? 3.5 : 2.5, fill: "#2f6fdf", "fill-opacity": 0.6}, svg);
      if (p[2]) {  // labelled points (alphas, methods): a label beside each and a tooltip
        node("title", {}, c, `${p[2]}: implicit ${p[0].toFixed(3)}, gold ${p[1].toFixed(3)}`);
        const right = px(p[0]) > W - 70;  // near the right edge: put the label on the left
        if (pts.length <= 12) node("text", {x: px(p[0]) + (right ? -5 : 5), y: py(p[1]) - 4,
                                            "text-anchor": right ? "end" : "start"}, svg, p[2]);
      }
    });
  }

  window.congCharts = {line, scatter};
})();
