// Warden dashboard: draws the uPlot charts of the agent page from their data-history attribute
// (JSON columns: unix_s, score, phi, cpu, memory, error_rate, latency_ms, pressure), again after
// every htmx refresh. No build step.
(function () {
  "use strict";
  var COLUMNS = ["unix_s", "score", "phi", "cpu", "memory", "error_rate", "latency_ms", "pressure"];
  var COLOURS = { score: "#1f9d55", phi: "#c53030", cpu: "#3182ce", memory: "#805ad5",
                  error_rate: "#dd6b20", latency_ms: "#d69e2e", pressure: "#718096" };
  function draw(root) {
    if (typeof uPlot === "undefined") { return; }
    var charts = (root || document).querySelectorAll(".chart[data-history]");
    charts.forEach(function (el) {
      var data;
      try { data = JSON.parse(el.getAttribute("data-history")); } catch (e) { return; }
      var wanted = el.getAttribute("data-series").split(",");
      var cols = [data[0]];
      var series = [{}];
      wanted.forEach(function (name) {
        var i = COLUMNS.indexOf(name);
        if (i < 1) { return; }
        cols.push(data[i]);
        series.push({ label: name, stroke: COLOURS[name] || "#333", width: 2, spanGaps: false });
      });
      el.textContent = "";
      var width = Math.max(300, el.clientWidth - 16);
      // A fixed top for bounded quantities (score 0–100, shares 0–1); others grow from 0.
      var top = parseFloat(el.getAttribute("data-max"));
      var y = { range: function (u, min, max) {
        return [0, isNaN(top) ? Math.max(1, max * 1.1) : Math.max(top, max)];
      } };
      new uPlot({ title: el.getAttribute("data-title"), width: width, height: 200,
                  series: series, scales: { x: { time: true }, y: y } }, cols, el);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (e) { draw(e.target); });
})();
