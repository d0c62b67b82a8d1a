// Hotate Console: follows /api/v1/events on the updates page and asks before an abort
// (「更新中断」: the terminal finishes again) or a cancel (「更新取消」: the update ends).
"use strict";

(function () {
  const words = JSON.parse(document.getElementById("words").textContent);
  const csrf = document.querySelector('meta[name="csrf"]').content;
  // Times as the reader's clock shows them (in Japanese order on the Japanese page), the
  // exact UTC time on hover.
  const locale = document.documentElement.lang === "ja" ? "ja-JP" : undefined;
  for (const el of document.querySelectorAll("time[datetime]")) {
    const at = new Date(el.dateTime);
    if (!isNaN(at)) {
      el.title = el.dateTime;
      el.textContent = at.toLocaleString(locale);
    }
  }
  const table = document.getElementById("updates");
  if (!table) return;
  const body = table.querySelector("tbody");
  const template = document.getElementById("update-row");
  // What each button does: its dialog, the question, the API call and what it says after.
  const actions = {
    abort: { dialog: document.getElementById("abort-dialog"), confirm: "abort",
             question: "abort-question", ask: words.abort_confirm, done: words.abort_done },
    cancel: { dialog: document.getElementById("cancel-dialog"), confirm: "cancel",
              question: "cancel-question", ask: words.cancel_confirm, done: words.cancel_done },
  };
  const message = document.getElementById("message");
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

  function isLive(u) { return u.state === "reserved" || u.state === "uploading"; }

  function fill(row, u) {
    const cell = (name) => row.querySelector("." + name);
    row.dataset.guid = u.data_write_guid;
    row.dataset.state = u.state;
    cell("disk").textContent = u.disk_name;
    cell("terminal").textContent = u.terminal;
    cell("user").textContent = u.user;
    cell("state").textContent = stateText(u);
    // In a cluster: which transfer server carries the upload, on hover.
    cell("state").title = u.transfer_server ? words.transfer_server + ": " + u.transfer_server : "";
    const bar = row.querySelector("progress");
    const amount = row.querySelector(".amount");
    if (u.bytes_needed !== null && u.bytes_stored !== null) {
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

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "notice";
    message.hidden = false;
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
      const reply = await response.json();
      if (response.ok) {
        say(action.done, false);
        const row = body.querySelector('tr[data-guid="' + CSS.escape(guid) + '"]');
        if (row) fill(row, reply);
      } else {
        // The server's message in the page's language (`messages`), its own words else.
        const lang = document.documentElement.lang;
        const said = reply.messages && reply.messages[lang] ? reply.messages[lang] : reply.error;
        say(said, true);
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
