// retryqueue dashboard: live overview refresh and select-all. No dependencies.
(function () {
  "use strict";
  function refreshLive() {
    var live = document.getElementById("live");
    if (!live) { return; }
    var seconds = parseFloat(live.getAttribute("data-seconds")) || 5;
    setInterval(function () {
      fetch(live.getAttribute("data-live-url"), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { live.innerHTML = html; } })
        .catch(function () { /* keep the last figures; try again next tick */ });
    }, seconds * 1000);
  }
  function selectAll() {
    document.querySelectorAll("input.select-all").forEach(function (box) {
      box.addEventListener("change", function () {
        var form = box.closest("form") || document;
        form.querySelectorAll("input.select").forEach(function (item) { item.checked = box.checked; });
      });
    });
  }
  function highlight() {
    var wanted = new URLSearchParams(window.location.search).get("highlight");
    var row = wanted && document.getElementById("audit-" + wanted);
    if (row) { row.classList.add("highlight"); }
  }
  document.addEventListener("DOMContentLoaded", function () { refreshLive(); selectAll(); highlight(); });
})();
