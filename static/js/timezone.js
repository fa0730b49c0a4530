// Preselect the browser's time zone on forms whose time zone is still the default.
(function () {
  "use strict";
  let zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    return;
  }
  document.querySelectorAll("select[data-tz-default='yes']").forEach(function (select) {
    const option = Array.prototype.find.call(select.options, function (o) { return o.value === zone; });
    if (option) {
      select.value = zone;
    }
  });
})();
