// ingress-box dashboard: refreshes the overview's numbers and charts, and copies ingress URLs
// and a delivery's curl command.
// The server computes every number and every chart coordinate; this only copies them in.
"use strict";
(function () {
  var prefix = "/admin/ui";

  function refresh() {
    fetch(prefix + "/api/overview", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        Object.keys(data.stats).forEach(function (key) {
          var el = document.querySelector('[data-stat="' + key + '"]');
          if (el) { el.textContent = data.stats[key]; }
        });
        Object.keys(data.charts).forEach(function (name) {
          var chart = data.charts[name];
          var max = document.querySelector('[data-max="' + name + '"]');
          if (max) { max.textContent = chart.max; }
          Object.keys(chart.series).forEach(function (series) {
            var key = name + "." + series;
            var line = document.querySelector('[data-line="' + key + '"]');
            var area = document.querySelector('[data-area="' + key + '"]');
            if (line) { line.setAttribute("points", chart.series[series].line); }
            if (area) { area.setAttribute("points", chart.series[series].area); }
          });
        });
        var updated = document.querySelector('[data-stat="updated"]');
        if (updated) { updated.textContent = new Date(data.now * 1000).toISOString().slice(0, 19).replace("T", " "); }
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); });
  }

  function copy(button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    var isInput = source.tagName === "INPUT";  // an ingress URL; else a <pre> (the curl)
    var select = function () {
      if (isInput) { source.focus(); source.select(); }
      else { window.getSelection().selectAllChildren(source); }
    };
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(isInput ? source.value : source.textContent).then(done, select);
    } else {  // plain http on a LAN address: leave the text selected for the user to copy
      select();
      try { if (document.execCommand("copy")) { done(); } } catch (e) { /* selected anyway */ }
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) { copy(button); }
  });
  if (document.querySelector("[data-chart]")) {
    setInterval(function () { if (!document.hidden) { refresh(); } }, 5000);
  }
})();
