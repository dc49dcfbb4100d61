// modelyard dashboard: the only script (CSP: script-src 'self'). Live pages refresh their <main> in place;
// buttons marked data-confirm ask first. No inline handlers anywhere.
(function () {
  "use strict";

  function refresh(main, seconds) {
    var timer = null;
    function tick() {
      if (document.hidden) { schedule(); return; }
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected || !response.ok) { return null; }
          return response.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("main");
          if (fresh) {
            main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
            main.setAttribute("data-updated", String(Date.now()));
          }
        })
        .catch(function () {})
        .then(schedule);
    }
    function schedule() { timer = window.setTimeout(tick, seconds * 1000); }
    schedule();
    return function () { window.clearTimeout(timer); };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.getElementById("main");
    var seconds = main && parseFloat(main.getAttribute("data-refresh") || "0");
    if (main && seconds > 0) { refresh(main, seconds); }
    document.addEventListener("submit", function (event) {
      var form = event.target;
      var question = form.getAttribute && form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) { event.preventDefault(); return; }
      var busy = form.getAttribute && form.getAttribute("data-busy");
      if (busy) {
        Array.prototype.forEach.call(form.querySelectorAll("button[type=submit], button:not([type])"), function (b) {
          b.disabled = true;
          b.textContent = busy;
        });
      }
    });
    document.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("[data-copy]");
      if (!button) { return; }
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (source && navigator.clipboard) { navigator.clipboard.writeText(source.textContent.trim()); }
    });
  });
})();
