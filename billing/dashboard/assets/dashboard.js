// Draws every chart on the page: a <div data-spec="ID"> and its Vega-Lite spec in
// <script type="application/json" id="ID">. Views are kept in window.meterlineCharts
// (by the div's id) and window.meterlineReady resolves once all are drawn.
"use strict";
window.meterlineCharts = {};
window.meterlineReady = Promise.all(
  Array.from(document.querySelectorAll("[data-spec]")).map(function (el) {
    var spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
    return window
      .vegaEmbed(el, spec, { actions: false, renderer: "svg" })
      .then(function (result) {
        window.meterlineCharts[el.id] = result.view;
      });
  })
);
