// The admin inspector's select-all checkboxes: the one in a table's header ticks or
// clears every row's "ids" checkbox; ticking rows by hand keeps the header box in step.
"use strict";

document.addEventListener("change", (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || box.type !== "checkbox") {
    return;
  }
  const table = box.closest("table");
  if (!table) {
    return;
  }
  const rows = Array.from(table.querySelectorAll("tbody input[type=checkbox][name=ids]"));
  const all = table.querySelector("thead input.rb-select-all");
  if (box === all) {
    for (const row of rows) {
      row.checked = box.checked;
    }
  } else if (all && box.name === "ids") {
    const ticked = rows.filter((row) => row.checked).length;
    all.checked = ticked === rows.length;
    all.indeterminate = ticked > 0 && ticked < rows.length;
  }
});
