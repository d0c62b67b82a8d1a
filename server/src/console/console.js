// Hotate Console: local times, the forms that call the API (asking first where they
// say so), and on the updates page the live events and the abort (「更新中断」: the
// terminal finishes again) and cancel (「更新取消」: the update ends) dialogs.
"use strict";

(function () {
  const words = JSON.parse(document.getElementById("words").textContent);
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const lang = document.documentElement.lang;
  // Times as the reader's clock shows them (in Japanese order on the Japanese page), the
  // exact UTC time on hover.
  const locale = lang === "ja" ? "ja-JP" : undefined;
  function localTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      const at = new Date(el.dateTime);
      if (!isNaN(at)) {
        el.title = el.dateTime;
        el.textContent = at.toLocaleString(locale);
      }
    }
  }
  localTimes(document);
  const message = document.getElementById("message");

  function say(text, isError) {
    if (!message) return;
    message.textContent = text;
    message.className = isError ? "error" : "notice";
    message.hidden = false;
  }

  // The server's message in the page's language (`messages`), its own words else.
  async function failure(response) {
    const reply = await response.json().catch(() => ({}));
    return reply.messages && reply.messages[lang] ? reply.messages[lang]
      : reply.error || response.status + " " + response.statusText;
  }

  // What the last form did, said once the page has reloaded.
  const said = sessionStorage.getItem("hotate-said");
  if (said) {
    sessionStorage.removeItem("hotate-said");
    say(said, false);
  }

  // Asks `question` in the confirm dialog; resolves to whether the user confirmed.
  const confirmDialog = document.getElementById("confirm-dialog");
  function ask(question, label) {
    return new Promise((resolve) => {
      document.getElementById("confirm-question").textContent = question;
      document.getElementById("confirm-yes").textContent = label;
      confirmDialog.addEventListener("close", () => resolve(confirmDialog.returnValue === "yes"),
                                     { once: true });
      confirmDialog.showModal();
    });
  }

  // A form with `data-call="METHOD URL"` sends its fields as JSON; `data-confirm` asks
  // first; on success the page reloads and says `data-done`.
  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-call]");
    if (!form) return;
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (form.dataset.confirm && !(await ask(form.dataset.confirm, button.textContent))) return;
    const [method, url] = form.dataset.call.split(" ");
    const fields = Object.fromEntries(new FormData(form));
    button.disabled = true;
    try {
      const response = await fetch(url, {
        method,
        headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
        credentials: "same-origin",
        body: method === "DELETE" ? undefined : JSON.stringify(fields),
      });
      if (response.ok) {
        sessionStorage.setItem("hotate-said", form.dataset.done || "");
        location.reload();
        return;
      }
      say(await failure(response), true);
    } catch (e) {
      say(String(e), true);
    }
    button.disabled = false;
  });

  const table = document.getElementById("updates");
  if (!table) return;
  const body = table.querySelector("tbody");
  const template = document.getElementById("update-row");
  const filtered = table.hasAttribute("data-filtered");
  // What each button does: its dialog, the question, the API call and what it says after.
  const actions = {
    abort: { dialog: document.getElementById("abort-dialog"), confirm: "abort",
             question: "abort-question", ask: words.abort_confirm, done: words.abort_done },
    cancel: { dialog: document.getElementById("cancel-dialog"), confirm: "cancel",
              question: "cancel-question", ask: words.cancel_confirm, done: words.cancel_done },
  };
  const liveStatus = document.getElementById("live-status");
  let pending = null;

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = n, unit = 0;
    while (value >= 1000 && unit + 1 < units.length) { value /= 1000; unit++; }
    return unit === 0 ? n + " B" : value.toFixed(1) + " " + units[unit];
  }

  function duration(secs) {
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (h > 0) return h + " " + words.hours + " " + m + " " + words.minutes;
    if (m > 0) return m + " " + words.minutes + " " + s + " " + words.seconds;
    return s + " " + words.seconds;
  }

  function stateText(u) {
    if (u.state === "uploading") return u.uploading_now ? words.uploading : words.waiting;
    return words[u.state] || u.state;
  }

  function setTime(cell, at) {
    if (cell.firstElementChild && cell.firstElementChild.dateTime === at) return;
    cell.textContent = "";
    if (!at) return;
    const time = document.createElement("time");
    time.dateTime = at;
    cell.appendChild(time);
    localTimes(cell);
  }

  function isLive(u) { return u.state === "reserved" || u.state === "uploading"; }

  function fill(row, u) {
    const cell = (name) => row.querySelector("." + name);
    row.dataset.guid = u.data_write_guid;
    row.dataset.state = u.state;
    cell("disk").textContent = u.disk_name;
    cell("disk").href = "/disks/" + encodeURIComponent(u.disk_id);
    cell("terminal").textContent = u.terminal;
    cell("user").textContent = u.user;
    cell("state").textContent = stateText(u);
    const ended = u.state === "cancelled" || u.state === "aborted";
    cell("stopped-by").textContent = !u.stopped_by ? ""
      : ended ? words.stopped_by.replace("{user}", u.stopped_by)
      : words.upload_aborted_by.replace("{user}", u.stopped_by);
    // In a cluster: which transfer server carries the upload, on hover.
    cell("state").title = u.transfer_server ? words.transfer_server + ": " + u.transfer_server : "";
    const bar = row.querySelector("progress");
    const amount = row.querySelector(".amount");
    if (u.percent !== null && u.bytes_total !== null) {
      // The terminal's own figures, as its progress line shows them.
      bar.hidden = false;
      bar.value = u.percent;
      amount.textContent = bytes(Math.floor(u.bytes_total * u.percent / 100)) + " " + words.of +
        " " + bytes(u.bytes_total);
    } else if (u.bytes_needed !== null && u.bytes_stored !== null) {
      bar.hidden = false;
      bar.value = u.bytes_needed === 0 ? 0 : Math.floor(u.bytes_stored * 100 / u.bytes_needed);
      amount.textContent = bytes(u.bytes_stored) + " " + words.of + " " + bytes(u.bytes_needed);
    } else {
      bar.hidden = true;
      amount.textContent = "";
    }
    cell("rate").textContent = u.rate !== null ? bytes(u.rate) + "/s" : "";
    cell("eta").textContent = u.eta_secs !== null ? duration(u.eta_secs) : "";
    cell("base").textContent = u.base_version;
    cell("new").textContent = u.new_version || "";
    setTime(cell("started"), u.started_at);
    setTime(cell("ended"), isLive(u) ? "" : u.changed_at);
    cell("received").textContent = u.bytes_received > 0 ? bytes(u.bytes_received) : "";
    cell("stored").textContent = u.version_bytes_stored !== null ? bytes(u.version_bytes_stored) : "";
    for (const button of row.querySelectorAll("button.abort, button.cancel")) {
      button.hidden = !isLive(u);
    }
  }

  // `list`: the live updates, oldest first. They lead the table; a row that was live and
  // is not any more ended: it is fetched once more and heads the ended rows.
  function apply(list) {
    const rows = new Map();
    for (const row of body.querySelectorAll("tr[data-guid]")) rows.set(row.dataset.guid, row);
    let before = body.firstElementChild;
    for (const u of list) {
      let row = rows.get(u.data_write_guid);
      // A filtered or older page shows only the rows it listed.
      if (!row && filtered) continue;
      if (!row) row = template.content.firstElementChild.cloneNode(true);
      fill(row, u);
      body.insertBefore(row, before);
      before = row.nextElementSibling;
      rows.delete(u.data_write_guid);
    }
    for (const row of rows.values()) {
      if (isLive(row.dataset)) {
        body.insertBefore(row, before);
        refresh(row);
      }
    }
    document.getElementById("no-updates").hidden = body.children.length > 0;
  }

  async function refresh(row) {
    try {
      const response = await fetch("/api/v1/updates/" + encodeURIComponent(row.dataset.guid),
                                   { credentials: "same-origin" });
      if (response.ok) fill(row, await response.json());
      else if (response.status === 404) row.remove();
    } catch (e) {
      // The next event tries again.
    }
  }

  body.addEventListener("click", (event) => {
    const button = event.target.closest("button.abort, button.cancel");
    if (!button) return;
    const name = button.classList.contains("abort") ? "abort" : "cancel";
    const action = actions[name];
    const row = button.closest("tr");
    pending = row.dataset.guid;
    document.getElementById(action.question).textContent = action.ask
      .replace("{disk}", row.querySelector(".disk").textContent)
      .replace("{terminal}", row.querySelector(".terminal").textContent);
    action.dialog.showModal();
  });

  for (const [name, action] of Object.entries(actions)) {
    action.dialog.addEventListener("close", () => act(name, action));
  }

  async function act(name, action) {
    const guid = pending;
    pending = null;
    if (action.dialog.returnValue !== action.confirm || !guid) return;
    try {
      const response = await fetch("/api/v1/updates/" + encodeURIComponent(guid) + "/" + name, {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      if (response.ok) {
        say(action.done, false);
        const row = body.querySelector('tr[data-guid="' + CSS.escape(guid) + '"]');
        if (row) fill(row, await response.json());
      } else {
        say(await failure(response), true);
      }
    } catch (e) {
      say(String(e), true);
    }
  }

  // A dropped stream reconnects by itself; say so only when that takes a while.
  let lost = null;
  const events = new EventSource("/api/v1/events");
  events.addEventListener("updates", (event) => {
    clearTimeout(lost);
    lost = null;
    liveStatus.hidden = true;
    apply(JSON.parse(event.data));
  });
  events.addEventListener("error", () => {
    if (lost === null) lost = setTimeout(() => { liveStatus.hidden = false; }, 3000);
  });
})();
