// The live console: the run_python calls (server-rendered, then kept current
// from /api/events), the pool, sessions and servers (/api/status every 2 s),
// a call's detail on click (/api/calls/{id}). Every node is built with
// createElement and textContent: code, output and arguments are hostile text.
"use strict";
(() => {
  const MAX_CALLS = 200;
  const HIGHLIGHT_MAX = 200000;
  const calls = document.getElementById("calls");
  const live = document.getElementById("live");

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  const word = (value) => (/^[a-z_]+$/.test(String(value)) ? String(value) : "unknown");
  const num = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);
  const ms = (value) => (num(value) === null ? "" : `${value.toFixed(1)} ms`); // as the server renders it
  const secs = (value) => (num(value) === null ? "" : `${value.toFixed(1)} s`);
  const running = (started) => `running ${(Math.max(0, Date.now() - started) / 1000).toFixed(1)} s`;

  // ---- the calls list ----
  const startOf = (call) => num(call.startedMs) ?? (num(call.elapsedMs) === null ? null : Date.now() - call.elapsedMs);
  function summaryNode(call) {
    const summary = el("div", "summary");
    const state = call.state === "running" ? "running" : word(call.status);
    summary.append(el("span", `status status-${state}`, state), " ");
    summary.append(el("span", "id", `#${call.id}`), " ", el("span", "principal", call.principal), " ");
    if (call.session) summary.append(el("span", "session", call.session), " ");
    const started = startOf(call);
    const duration = el("span", "duration", call.state === "running" ? running(started ?? Date.now()) : ms(call.durationMs));
    summary.append(duration, " ", el("code", "head", call.head));
    if (call.error) summary.title = String(call.error);
    return { summary, started };
  }
  function prepare(summary) {
    summary.setAttribute("role", "button");
    summary.tabIndex = 0;
    if (!summary.hasAttribute("aria-expanded")) summary.setAttribute("aria-expanded", "false");
  }
  function findCall(id) {
    for (const li of calls.children) if (li.dataset.id === String(id)) return li;
    return null;
  }
  function upsert(call) {
    if (!call || call.id === undefined || call.id === null) return;
    const old = findCall(call.id);
    // Finished is final, and an entry is replaced only when it finishes: a
    // stale snapshot or a late start event never moves it back.
    if (old && (old.dataset.state === "finished" || call.state === "running")) {
      const started = startOf(call);
      if (old.dataset.state === "running" && !old.dataset.started && started !== null) old.dataset.started = String(started);
      return;
    }
    const li = el("li", "call");
    li.dataset.id = String(call.id);
    li.dataset.state = call.state === "running" ? "running" : "finished";
    const { summary, started } = summaryNode(call);
    if (started !== null) li.dataset.started = String(started);
    prepare(summary);
    li.append(summary);
    if (old) {
      const wasOpen = old.querySelector(".detail") !== null;
      calls.replaceChild(li, old);
      if (wasOpen) openDetail(li);
      return;
    }
    const id = Number(call.id);
    let before = null;
    for (const other of calls.children) {
      if (!(Number(other.dataset.id) > id)) {
        before = other;
        break;
      }
    }
    calls.insertBefore(li, before);
    while (calls.children.length > MAX_CALLS) calls.lastElementChild.remove();
  }
  async function resync() {
    try {
      const answer = await (await fetch("/api/calls", { cache: "no-store" })).json();
      const listed = answer.calls || [];
      for (const call of listed.slice(0, MAX_CALLS).reverse()) upsert(call);
      // A call shown running that the server no longer lists ended unseen
      // and is no longer kept: it goes.
      const known = new Set(listed.map((call) => String(call.id)));
      for (const li of calls.querySelectorAll('li.call[data-state="running"]')) {
        if (!known.has(li.dataset.id)) li.remove();
      }
    } catch (_) {
      // the events keep coming; the next open tries again
    }
  }
  function tick() {
    for (const li of calls.querySelectorAll('li.call[data-state="running"]')) {
      const started = Number(li.dataset.started);
      const duration = li.querySelector(".summary .duration");
      if (duration && Number.isFinite(started) && li.dataset.started) duration.textContent = running(started);
    }
  }

  // ---- live events ----
  let source = null;
  function connect() {
    source = new EventSource("/api/events");
    source.addEventListener("open", () => {
      live.textContent = "live";
      live.className = "on";
      resync();
    });
    source.addEventListener("error", () => {
      live.textContent = "reconnecting…";
      live.className = "off";
      // EventSource retries by itself unless the answer was not an event stream.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    });
    // The server's feed skipped events this page was too slow for.
    source.addEventListener("resync", () => resync());
    source.addEventListener("call", (event) => {
      try {
        upsert(JSON.parse(event.data));
      } catch (_) {
        // not JSON: ignored
      }
    });
  }

  // ---- status ----
  function table(headers, rows, cls) {
    const t = el("table", cls);
    const head = t.createTHead().insertRow();
    for (const h of headers) head.append(el("th", null, h));
    const body = t.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      for (const cell of row) tr.append(cell instanceof Node ? wrap("td", cell) : el("td", null, cell));
    }
    return t;
  }
  function wrap(tag, child) {
    const node = el(tag);
    node.append(child);
    return node;
  }
  function items(list, entries, render) {
    list.replaceChildren(...(entries.length ? entries.map(render) : [el("li", "empty", "none")]));
  }
  async function refreshStatus() {
    const section = document.getElementById("status");
    try {
      const status = await (await fetch("/api/status", { cache: "no-store" })).json();
      const pool = status.pool;
      const nodes = [];
      if (pool) {
        const counts = el("p", "counts");
        for (const [state, n] of Object.entries(pool)) {
          if (state !== "max" && num(n) !== null) counts.append(el("span", `count count-${word(state)}`, `${n} ${state}`), " ");
        }
        counts.append(el("span", "count count-max", `at most ${pool.max}`));
        nodes.push(counts);
        const boxes = (pool.sandboxes || []).map((s) => [
          String(s.id).slice(0, 12),
          String(s.state ?? ""),
          secs(s.ageSecs),
          String(s.runs ?? ""),
        ]);
        if (boxes.length) nodes.push(table(["sandbox", "state", "age", "runs"], boxes, "sandboxes"));
      }
      document.getElementById("pool").replaceChildren(...(nodes.length ? nodes : ["not started"]));
      items(document.getElementById("sessions"), status.sessions || [], (s) => {
        const li = el("li", null);
        li.append(el("span", "name", s.name), " ", el("span", "principal", s.principal), " ");
        li.append(el("span", "idle", num(s.idleSecs) === null ? "in a call" : `idle ${secs(s.idleSecs)}`));
        return li;
      });
      items(document.getElementById("servers"), status.servers || [], (s) => {
        const li = el("li", null);
        const state = String(s.state ?? "");
        li.append(el("span", "name", s.name), " ", el("span", `state state-${word(state.replace(/ /g, "_"))}`, state));
        return li;
      });
      section.classList.remove("stale");
    } catch (_) {
      section.classList.add("stale");
    }
    setTimeout(refreshStatus, 2000);
  }

  // ---- Python highlighting: every character lands in exactly one token ----
  const KEYWORDS = new Set(
    ("False None True and as assert async await break case class continue def del elif else except finally for " +
      "from global if import in is lambda match nonlocal not or pass raise return try type while with yield").split(" "),
  );
  const TOKENS = [
    ["com", /#[^\n]*/y],
    ["str", /(?:[rRbBuUfF]{1,2})?(?:"""(?:\\[\s\S]?|[^\\])*?(?:"""|$)|'''(?:\\[\s\S]?|[^\\])*?(?:'''|$))/y],
    ["str", /(?:[rRbBuUfF]{1,2})?(?:"(?:\\[\s\S]?|[^\\"\n])*(?:"|(?=\n)|$)|'(?:\\[\s\S]?|[^\\'\n])*(?:'|(?=\n)|$))/y],
    ["num", /(?:0[xX][\da-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?)/y],
    ["name", /[\p{L}\p{Nl}_][\p{L}\p{N}_]*/uy],
    ["", /[^\p{L}\p{N}_#'".]+/uy],
  ];
  function highlight(code) {
    const pre = el("pre", "code");
    if (code.length > HIGHLIGHT_MAX) {
      pre.textContent = code;
      return pre;
    }
    let plain = "";
    const flush = () => {
      if (plain) pre.append(plain);
      plain = "";
    };
    let i = 0;
    while (i < code.length) {
      let matched = null;
      for (const [kind, pattern] of TOKENS) {
        pattern.lastIndex = i;
        const m = pattern.exec(code);
        if (m && m[0].length) {
          matched = [kind, m[0]];
          break;
        }
      }
      const [kind, text] = matched || ["", code[i]];
      const cls = kind === "name" ? (KEYWORDS.has(text) ? "kw" : "") : kind;
      if (cls) {
        flush();
        pre.append(el("span", cls, text));
      } else {
        plain += text;
      }
      i += text.length;
    }
    flush();
    if (pre.textContent !== code) pre.textContent = code; // never show anything but the code
    return pre;
  }

  // ---- a call's detail ----
  function section(detail, title, node) {
    detail.append(el("h3", null, title), node);
  }
  function list(cls, entries, render) {
    const ul = el("ul", cls);
    for (const entry of entries) ul.append(wrap("li", render(entry)));
    return ul;
  }
  function renderDetail(detail, d) {
    const timing = el("p", "timing");
    const started = num(d.startedMs) === null ? "" : `started ${new Date(d.startedMs).toLocaleString()}, `;
    timing.textContent = started + (d.state === "running" ? `running ${ms(d.elapsedMs)}` : `took ${ms(d.durationMs)}`) +
      (num(d.exitCode) === null ? "" : `, exit code ${d.exitCode}`);
    detail.append(timing);
    if (d.error) detail.append(el("p", "error", d.error));
    if (Array.isArray(d.servers) && d.servers.length) detail.append(el("p", "servers", `servers: ${d.servers.join(", ")}`));
    const code = typeof d.code === "string" ? d.code : "";
    section(detail, "code", highlight(code));
    if (d.codeTruncated) {
      const shown = new TextEncoder().encode(code).length;
      detail.append(el("p", "cut", `code cut: ${shown} of ${d.codeBytes} bytes, sha256 ${d.codeSha256}`));
    }
    for (const stream of ["stdout", "stderr"]) {
      if (typeof d[stream] !== "string" || d[stream] === "") continue;
      section(detail, stream, el("pre", stream, d[stream]));
      if (d[`${stream}Truncated`]) detail.append(el("p", "cut", `${stream} cut`));
    }
    if (Array.isArray(d.images) && d.images.length) {
      const box = el("div", "images");
      for (const image of d.images) {
        const url = String(image.url || "");
        const what = `image ${image.index}: ${image.width}×${image.height}, ${image.bytes} bytes`;
        // Same-origin API paths only; without a url the PNG is no longer kept.
        if (!url.startsWith("/api/")) {
          box.append(el("p", "gone", `${what} (no longer kept)`));
          continue;
        }
        const img = el("img");
        img.src = url;
        img.alt = what;
        if (num(image.width) !== null) img.width = image.width;
        if (num(image.height) !== null) img.height = image.height;
        box.append(img);
      }
      section(detail, "images", box);
    }
    const tools = Array.isArray(d.toolCalls) ? d.toolCalls : [];
    if (tools.length) {
      const rows = tools.map((t) => [t.server, t.tool, t.outcome, ms(t.durationMs), String(t.bytes ?? ""), el("code", null, t.arguments)]);
      const total = num(d.toolCallsTotal) !== null && d.toolCallsTotal > tools.length ? ` (${tools.length} of ${d.toolCallsTotal})` : "";
      section(detail, `tool calls${total}`, table(["server", "tool", "outcome", "time", "bytes", "arguments"], rows, "tools"));
    }
    if (Array.isArray(d.egress) && d.egress.length) section(detail, "egress", list("egress", d.egress, (e) => el("code", null, JSON.stringify(e))));
    if (Array.isArray(d.files) && d.files.length) {
      section(detail, "files", list("files", d.files, (f) => el("span", null, `${f.path} (${f.bytes} bytes)${f.uri ? ` ${f.uri}` : ""}`)));
    }
    if (Array.isArray(d.notes) && d.notes.length) section(detail, "notes", list("notes", d.notes, (n) => el("span", null, n)));
    if (d.sandbox) section(detail, "sandbox", list("sandbox", [d.sandbox], (s) => el("code", null, s)));
  }
  async function openDetail(li) {
    const summary = li.querySelector(".summary");
    const detail = el("div", "detail", "loading…");
    li.append(detail);
    if (summary) summary.setAttribute("aria-expanded", "true");
    try {
      const answer = await fetch(`/api/calls/${encodeURIComponent(li.dataset.id)}`, { cache: "no-store" });
      if (answer.status === 404) throw new Error("this call is no longer kept");
      if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
      const d = await answer.json();
      detail.textContent = "";
      renderDetail(detail, d);
    } catch (error) {
      detail.replaceChildren(el("p", "error", error.message || String(error)));
    }
  }
  function toggle(summary) {
    const li = summary.closest("li.call");
    if (!li) return;
    const open = li.querySelector(".detail");
    if (open) {
      open.remove();
      summary.setAttribute("aria-expanded", "false");
    } else {
      openDetail(li);
    }
  }
  calls.addEventListener("click", (event) => {
    const summary = event.target.closest(".summary");
    if (summary && calls.contains(summary)) toggle(summary);
  });
  calls.addEventListener("keydown", (event) => {
    const summary = event.target.closest(".summary");
    if (summary && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      toggle(summary);
    }
  });

  for (const summary of calls.querySelectorAll("li.call > .summary")) prepare(summary);
  connect();
  refreshStatus();
  setInterval(tick, 1000);
})();
