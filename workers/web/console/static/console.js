// unship console: small progressive enhancements. Everything reads without this file; it keeps the relative
// times and countdowns ticking, shows whether the live stream is connected, and marks entries that arrive live.
(function () {
  "use strict";
  function span(seconds) {
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 172800) return (Math.round(seconds / 360) / 10).toString() + " h";
    return Math.floor(seconds / 86400) + " d";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-countdown]").forEach(function (el) {
      var left = (Date.parse(el.getAttribute("datetime")) - now) / 1000;
      el.textContent = left >= 0 ? "in " + span(left) : span(-left) + " overdue";
    });
    document.querySelectorAll("time[data-ago]").forEach(function (el) {
      var age = (now - Date.parse(el.getAttribute("datetime"))) / 1000;
      el.textContent = age >= 0 ? span(age) + " ago" : span(-age) + " from now";
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
  });
  document.addEventListener("htmx:sseOpen", function () { document.body.classList.add("live"); });
  document.addEventListener("htmx:sseError", function () { document.body.classList.remove("live"); });
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    // Keep a half-typed reason: the action form is only replaced when what one can do changed.
    var active = document.activeElement;
    if (evt.detail && evt.detail.type === "actions" && active && active.id === "reason" && active.value) {
      evt.preventDefault();
    }
  });
  document.addEventListener("htmx:afterSettle", function (evt) {
    if (evt.target && evt.target.id === "timeline") {
      var items = evt.target.querySelectorAll("li.event:not(.seen)");
      items.forEach(function (li) { li.classList.add("seen"); });
    }
    tick();
  });
})();
