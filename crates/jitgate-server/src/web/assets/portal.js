// jitgate portal: progressive enhancement only; every page works without this file.
(function () {
  "use strict";

  // "Enable JIT on N VMs" / "Request access": keep N equal to the number of selected VMs.
  function countSelections() {
    document.querySelectorAll("form[data-count-button]").forEach(function (form) {
      var button = form.querySelector("[data-count-label]");
      if (!button) return;
      var update = function () {
        var n = form.querySelectorAll("input[name=vm]:checked").length;
        button.textContent = button.getAttribute("data-count-label").replace("{n}", String(n)).replace("{s}", n === 1 ? "" : "s");
        if (button.hasAttribute("data-need-selection")) button.disabled = n === 0;
      };
      form.addEventListener("change", function (e) {
        if (e.target && e.target.matches("input[data-select-all]")) {
          form.querySelectorAll("input[name=vm]").forEach(function (c) { c.checked = e.target.checked; });
        }
        update();
      });
      update();
    });
  }

  // Live progress of "Open ports": server-sent events replace the page's progress section.
  function liveProgress() {
    var el = document.querySelector("[data-progress-url]");
    if (!el || !window.EventSource) return;
    var meta = document.querySelector("meta[http-equiv=refresh]");
    if (meta) meta.parentNode.removeChild(meta);
    var source = new EventSource(el.getAttribute("data-progress-url"));
    source.addEventListener("progress", function (e) {
      el.innerHTML = e.data;
    });
    source.addEventListener("done", function (e) {
      el.innerHTML = e.data;
      source.close();
    });
    source.onerror = function () { source.close(); };
  }

  // Time left on active grants.
  function countdowns() {
    var items = document.querySelectorAll("[data-ends]");
    if (!items.length) return;
    var tick = function () {
      var now = Date.now();
      items.forEach(function (el) {
        var left = Math.max(0, Math.floor((Date.parse(el.getAttribute("data-ends")) - now) / 1000));
        var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
        el.textContent = left === 0 ? "ended" : (h ? h + " h " : "") + m + " min " + (h ? "" : s + " s");
      });
    };
    tick();
    setInterval(tick, 1000);
  }

  // Copy buttons next to connection details.
  function copyButtons() {
    document.addEventListener("click", function (e) {
      var b = e.target.closest && e.target.closest("button[data-copy]");
      if (!b || !navigator.clipboard) return;
      e.preventDefault();
      navigator.clipboard.writeText(b.getAttribute("data-copy")).then(function () {
        var old = b.textContent;
        b.textContent = "Copied";
        setTimeout(function () { b.textContent = old; }, 1500);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    countSelections();
    liveProgress();
    countdowns();
    copyButtons();
  });
})();
