// Levee panel: a small hash-routed page over /ui/api (no framework).
// Every value from the server goes into the page as text (never HTML).
"use strict";

const $ = (sel) => document.querySelector(sel);
let me = null;          // {operator, read_only, must_change, csrf}
let live = null;        // EventSource while a live page is shown
let refresh = null;     // re-renders the current page's data

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf;
  const res = await fetch("/ui/api/" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  // A session that ended elsewhere (logout, expiry, removal): log in again.
  if (res.status === 401 && path !== "login" && path !== "me") { me = null; stopLive(); go("#/login"); }
  if (!res.ok) { const e = new Error(data.error || res.statusText); e.data = data; e.status = res.status; throw e; }
  return data;
}

const pad = (n) => String(n).padStart(2, "0");
function when(t) {
  if (t === null || t === undefined) return "-";
  const d = new Date(t * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
}
function timeCell(t) { return h("time", { datetime: t ? new Date(t * 1000).toISOString() : null }, when(t)); }
function say(msg) { $("#status").textContent = msg; }
function go(hash) { if (location.hash === hash) route(); else location.hash = hash; }
function yesno(b, good) { return h("span", { class: "pill " + (b === good ? "good" : "bad") }, b ? "yes" : "no"); }

function page(title, ...kids) {
  const main = $("#main");
  main.replaceChildren(h("h1", { id: "title" }, title), ...kids);
  document.title = title + " - Levee";
  main.focus({ preventScroll: true });
}

function table(caption, cols, rows, opts = {}) {
  const head = h("tr", {}, cols.map((c) => {
    if (!opts.sort || !c.key) return h("th", { scope: "col" }, c.label);
    const active = opts.sort.sort === c.key;
    return h("th", { scope: "col", "aria-sort": active ? (opts.sort.desc ? "descending" : "ascending") : "none" },
      h("button", { type: "button", onclick: () => opts.onSort(c.key) },
        c.label + (active ? (opts.sort.desc ? " \u25bc" : " \u25b2") : "")));
  }));
  const body = rows.length
    ? rows.map((r) => h("tr", {}, cols.map((c) => h("td", {}, c.cell(r)))))
    : [h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, opts.empty || "nothing here"))];
  return h("table", { id: opts.id }, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body));
}

function errorBox(e) { return h("p", { class: "error", role: "alert" }, e.message || String(e)); }

function actionForm(label, fields, onSubmit, opts = {}) {
  const msg = h("div", { "aria-live": "polite" });
  const btn = h("button", { type: "submit", class: opts.danger ? "danger" : null, disabled: me && me.read_only }, label);
  const form = h("form", { class: "inline", "aria-label": label }, fields, btn, msg);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    btn.disabled = true;
    try { const r = await onSubmit(new FormData(form)); if (r) msg.replaceChildren(h("span", { class: "good" }, r)); }
    catch (e) { msg.replaceChildren(errorBox(e)); }
    finally { btn.disabled = me && me.read_only; }
  });
  return form;
}
const field = (label, attrs) => h("label", {}, label, h("input", attrs));
function select(label, name, options, value) {
  return h("label", {}, label, h("select", { name },
    options.map(([v, t]) => h("option", { value: v, selected: v === value }, t))));
}

// ---- live updates -------------------------------------------------------
function startLive() {
  stopLive();
  live = new EventSource("/ui/api/live");
  let pending = null;
  live.addEventListener("change", () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      if (refresh) { await refresh().catch(() => {}); say("Updated " + when(Date.now() / 1000)); }
    }, 150);
  });
}
function stopLive() { if (live) { live.close(); live = null; } }

// ---- pages -----------------------------------------------------------------
function loginPage() {
  const err = h("div", { "aria-live": "assertive" });
  const form = h("form", {},
    field("Operator", { name: "name", autocomplete: "username", required: true, id: "login-name" }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true, id: "login-password" }),
    h("button", { type: "submit" }, "Log in"), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      me = await api("POST", "login", { name: f.get("name"), password: f.get("password") });
      chrome();
      go(me.must_change ? "#/password" : "#/fleet");
    } catch (e) { err.replaceChildren(errorBox(e)); }
  });
  page("Log in", h("div", { class: "login" }, form));
}

function passwordPage() {
  page("Choose a new password",
    me.must_change ? h("p", { class: "notice" }, "You logged in with a one-time password: choose your own before going on.") : null,
    actionForm("Change password", [
      field("Current password", { name: "current", type: "password", autocomplete: "current-password", required: true }),
      field("New password (12 characters or more)", { name: "new", type: "password", autocomplete: "new-password", required: true, minlength: 12 }),
    ], async (f) => {
      await api("POST", "password", { current: f.get("current"), new: f.get("new") });
      me = await api("GET", "me");
      chrome();
      go("#/fleet");
    }));
  // Even read-only operators set their own password.
  $("#main button[type=submit]").disabled = false;
}

const fleetState = { q: "", state: "", customer: "", online: "", overdue: "", sort: "id", desc: false, page: 1, per_page: 50 };

async function fleetPage() {
  const s = fleetState;
  const filters = h("form", { class: "inline", role: "search", "aria-label": "Filter the fleet" },
    field("Search", { name: "q", value: s.q, type: "search", placeholder: "MAC, customer, version..." }),
    select("State", "state", [["", "any"], ["pending", "pending"], ["enrolled", "enrolled"], ["installing", "installing"], ["installed", "installed"], ["failed", "failed"], ["retired", "retired"]], s.state),
    field("Customer", { name: "customer", value: s.customer }),
    select("Online", "online", [["", "any"], ["true", "online"], ["false", "offline"]], s.online),
    select("Overdue", "overdue", [["", "any"], ["true", "overdue"], ["false", "not overdue"]], s.overdue),
    select("Rows", "per_page", [["25", "25"], ["50", "50"], ["100", "100"], ["500", "500"]], String(s.per_page)),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(filters);
    for (const k of ["q", "state", "customer", "online", "overdue"]) s[k] = f.get(k) || "";
    s.per_page = Number(f.get("per_page")) || 50;
    s.page = 1;
    refresh();
  });
  const holder = h("div", { id: "fleet" });
  page("Fleet", filters, holder);
  refresh = async () => {
    const p = new URLSearchParams();
    for (const k of ["q", "state", "customer", "online", "overdue", "sort", "page", "per_page"]) if (s[k] !== "") p.set(k, s[k]);
    if (s.desc) p.set("desc", "true");
    const d = await api("GET", "fleet?" + p);
    const cols = [
      { key: "id", label: "ID", cell: (r) => h("a", { href: "#/appliance/" + r.id }, r.id) },
      { key: "mac", label: "MAC", cell: (r) => h("a", { href: "#/appliance/" + r.id, class: "mono" }, r.mac) },
      { key: "customer", label: "Customer", cell: (r) => r.customer || "-" },
      { key: "state", label: "State", cell: (r) => r.state },
      { key: "online", label: "Online", cell: (r) => yesno(r.online, true) },
      { key: "image_version", label: "Version", cell: (r) => r.image_version || "-" },
      { key: "slot", label: "Slot", cell: (r) => r.slot || "-" },
      { key: "last_heartbeat", label: "Last heartbeat", cell: (r) => h("span", { class: "hb" }, timeCell(r.last_heartbeat)) },
      { key: "last_backup_at", label: "Last backup", cell: (r) => timeCell(r.last_backup_at) },
      { key: "last_result", label: "Result", cell: (r) => r.last_result ? h("span", { class: r.last_result === "failed" ? "bad" : "good" }, r.last_result + (r.failing ? ` (${r.failing} failed in a row)` : "")) : "-" },
      { key: "overdue", label: "Overdue", cell: (r) => r.scheduled ? yesno(r.overdue, false) : "-" },
    ];
    const onSort = (key) => { s.desc = s.sort === key ? !s.desc : false; s.sort = key; refresh(); };
    const pager = h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", disabled: d.page <= 1, onclick: () => { s.page = d.page - 1; refresh(); } }, "Previous page"),
      h("span", {}, `Page ${d.page} of ${d.pages} (${d.total} appliances)`),
      h("button", { type: "button", class: "secondary", disabled: d.page >= d.pages, onclick: () => { s.page = d.page + 1; refresh(); } }, "Next page"));
    holder.replaceChildren(table(`${d.total} appliances`, cols, d.rows, { sort: s, onSort, id: "fleet-table", empty: "no appliance matches" }), pager);
  };
  await refresh();
  startLive();
}

async function pendingPage() {
  const holder = h("div", {});
  page("Pending machines", h("p", {}, "Machines that booted unregistered wait here. Compare the key fingerprint with the one on the machine's console before approving."), holder);
  refresh = async () => {
    const d = await api("GET", "pending");
    const custs = d.customers.map((c) => [c, c]);
    holder.replaceChildren(table("Waiting for approval", [
      { label: "MAC", cell: (m) => h("a", { href: "#/appliance/" + m.id, class: "mono" }, m.mac) },
      { label: "First seen", cell: (m) => timeCell(m.first_seen) },
      { label: "Key fingerprint", cell: (m) => [h("code", { class: "fp" }, m.key || "-"), m.key_conflict ? h("div", { class: "bad" }, "conflict: another key " + m.key_conflict) : null] },
      { label: "Approve", cell: (m) => actionForm("Approve", [
          select("Customer", "customer", custs, custs.length ? custs[0][0] : ""),
          field("Fingerprint from the console", { name: "fingerprint", value: "", placeholder: "xxxx-xxxx-xxxx-xxxx", size: 20 }),
        ], async (f) => {
          await api("POST", `appliances/${m.id}/approve`, { customer: f.get("customer"), fingerprint: f.get("fingerprint") });
          await refresh();
          return "approved";
        }) },
    ], d.machines, { id: "pending-table", empty: "no machine is waiting" }));
  };
  await refresh();
  startLive();
}

async function appliancePage(id) {
  const holder = h("div", {});
  page("Appliance " + id, holder);
  refresh = async () => {
    const d = await api("GET", "appliances/" + id);
    const a = d.appliance, b = d.backups.health;
    $("#title").textContent = `Appliance ${a.id} (${a.mac})`;
    const facts = h("dl", { class: "facts", id: "facts" }, [
      ["Customer", a.customer || "- (waiting for approval)"], ["State", a.state + (a.state_reason ? ` (${a.state_reason})` : "")],
      ["Online", a.online ? "yes" : "no"], ["Version", a.image_version || "-"], ["Slot", a.slot || "-"],
      ["Last heartbeat", when(a.last_heartbeat)], ["Serial", a.serial || "-"], ["Profile", a.profile || "default"],
      ["Key", a.key ? a.key + (a.key_conflict_short ? " (conflict: " + a.key_conflict_short + ")" : "") : "-"],
      ["Reinstall", a.reinstall ? "requested" : "no"], ["Revoked", when(a.revoked_at)],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const backup = h("dl", { class: "facts" }, [
      ["Last success", when(b.last_success_at)], ["Last backup", when(b.last_backup_at)],
      ["Next expected", b.next_expected ? `${b.next_expected.schedule} at ${when(b.next_expected.at)}` : "- (no schedule)"],
      ["Overdue", b.overdue ? "yes" : "no"], ["Failing", b.failing ? `${b.failing.count} in a row` : "no"],
      ["Repository", d.backups.repository.bytes ? `${(d.backups.repository.bytes / 1048576).toFixed(1)} MiB` : "-"],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const custs = d.customers.map((c) => [c, c]);
    const actions = a.state === "retired" ? [h("p", { class: "muted" }, "Retired: no actions.")] : [
      !a.approved ? actionForm("Approve", [select("Customer", "customer", custs, a.customer || (custs[0] || [""])[0]),
        field("Fingerprint from the console", { name: "fingerprint", placeholder: "xxxx-xxxx-xxxx-xxxx" })],
        async (f) => { await api("POST", `appliances/${id}/approve`, { customer: f.get("customer"), fingerprint: f.get("fingerprint") }); await refresh(); return "approved"; }) : null,
      actionForm(a.reinstall ? "Withdraw reinstall" : "Reinstall", [],
        async () => { await api("POST", `appliances/${id}/reinstall`, { cancel: a.reinstall }); await refresh(); return "done"; }),
      actionForm("Replace", [field("New machine's MAC", { name: "with", required: true, placeholder: "52:54:00:ab:cd:ef" })],
        async (f) => { const r = await api("POST", `appliances/${id}/replace`, { with: f.get("with") }); go("#/appliance/" + r.appliance.id); }),
      actionForm("Retire", [field("Reason", { name: "reason", placeholder: "stolen from site" }),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "sure", required: true }), "Revoke its credential for good")],
        async (f) => { await api("POST", `appliances/${id}/retire`, { reason: f.get("reason") }); await refresh(); return "retired"; }, { danger: true }),
    ];
    holder.replaceChildren(
      h("div", { class: "cols" }, h("section", { class: "card", "aria-labelledby": "h-facts" }, h("h2", { id: "h-facts" }, "Status"), facts),
        h("section", { class: "card", "aria-labelledby": "h-backups" }, h("h2", { id: "h-backups" }, "Backups"), backup),
        h("section", { class: "card", "aria-labelledby": "h-actions" }, h("h2", { id: "h-actions" }, "Actions"),
          me.read_only ? h("p", { class: "muted" }, "You are a read-only operator.") : null, actions)),
      a.last_report ? h("details", { id: "last-report" }, h("summary", {}, `Last report (${when(a.last_report_at)})`),
        h("dl", { class: "facts" }, Object.entries(a.last_report).flatMap(([k, v]) =>
          [h("dt", {}, k), h("dd", { class: "mono" }, typeof v === "object" ? JSON.stringify(v) : String(v))]))) : null,
      h("h2", {}, "Runs"),
      table("Newest first", [
        { label: "Ended", cell: (r) => timeCell(r.ended_at) }, { label: "Kind", cell: (r) => r.kind },
        { label: "Job", cell: (r) => r.job || "(by hand)" },
        { label: "Result", cell: (r) => h("span", { class: r.result === "failed" ? "bad" : "good" }, r.result) },
        { label: "Files new / total", cell: (r) => `${r.files_new} / ${r.files_total}` },
        { label: "Errors", cell: (r) => (r.errors || []).map((e) => `${e.message} (${e.count}x)`).join("; ") || "-" },
      ], d.backups.runs, { id: "runs-table", empty: "no run reported" }),
      h("h2", {}, "History"),
      table("Boot, install and operators' actions, oldest first", [
        { label: "When", cell: (e) => timeCell(e.at) }, { label: "Step", cell: (e) => e.step }, { label: "Detail", cell: (e) => e.detail },
      ], d.events, { id: "history-table" }),
      h("h2", {}, "Audit"),
      table("Operators' actions on this appliance", auditCols, d.audit, { empty: "none" }));
  };
  await refresh();
  startLive();
}

const auditCols = [
  { label: "When", cell: (e) => timeCell(e.at) }, { label: "Operator", cell: (e) => e.operator },
  { label: "Action", cell: (e) => e.action }, { label: "Target", cell: (e) => e.target }, { label: "Detail", cell: (e) => e.detail },
];

async function customersPage() {
  const d = await api("GET", "customers");
  page("Customers",
    me.read_only ? null : h("p", {}, h("a", { href: "#/customer/new" }, "New customer")),
    table("Customers", [
      { label: "Customer", cell: (c) => h("a", { href: "#/customer/" + encodeURIComponent(c.name) }, c.name) },
      { label: "Name", cell: (c) => c.display_name || "-" }, { label: "Sources", cell: (c) => c.sources },
      { label: "Offsite", cell: (c) => c.offsite }, { label: "Channel", cell: (c) => c.update_channel },
      { label: "Appliances", cell: (c) => c.appliances }, { label: "Updated", cell: (c) => timeCell(c.updated_at) },
    ], d.customers, { id: "customers-table" }));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, u = 0;
  while (v >= 1024 && u + 1 < units.length) { v /= 1024; u += 1; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

async function customerPage(name) {
  const fresh = name === "new";
  const c = fresh ? { yaml: "customer: NAME\nsources:\n  - name: files\n    path: /srv/files\nschedules:\n  - name: daily\n    every: 1d\n" }
    : await api("GET", "customers/" + encodeURIComponent(name));
  const area = h("textarea", { class: "yaml", name: "yaml", id: "yaml", spellcheck: "false", "aria-describedby": "yaml-help" });
  area.value = c.yaml;
  const out = h("div", { id: "apply-result", "aria-live": "polite" });
  const quota = fresh ? null : h("p", { id: "offsite-quota" }, "Offsite quota: ",
    c.offsite_quota == null ? "none" : bytes(c.offsite_quota) + " in each store",
    h("span", { class: "muted" }, " (levee customer quota " + name + " SIZE|none)"));
  const form = h("form", {},
    quota,
    h("label", { for: "yaml" }, "Configuration (YAML)"),
    h("p", { id: "yaml-help", class: "muted" }, "Secrets show as ******** and keep their stored value unless you type a new one."),
    area,
    h("div", { class: "pager" },
      h("button", { type: "submit", name: "apply", disabled: me.read_only }, "Apply"),
      h("button", { type: "button", class: "secondary", disabled: me.read_only, onclick: () => submit(true) }, "Check only")),
    out);
  async function submit(dryRun) {
    out.replaceChildren();
    try {
      const r = await api("POST", "customers", { yaml: area.value, dry_run: dryRun });
      out.replaceChildren(h("div", { class: "notice", role: "status" },
        h("p", {}, r.changes.length ? (r.applied ? "Applied:" : "Would change:") : "No change."),
        h("ul", {}, r.changes.map((l) => h("li", { class: "mono" }, l)))));
      if (r.applied && fresh) go("#/customer/" + encodeURIComponent(r.customer));
    } catch (e) {
      const line = e.data && e.data.line;
      const kids = [line ? errorBox(new Error(`Line ${line}, column ${e.data.column}: ${e.data.message}`)) : errorBox(e)];
      if (line) {
        const lines = area.value.split("\n");
        const from = Math.max(1, line - 2), to = Math.min(lines.length, line + 2);
        const ol = h("ol", { class: "lines", start: from, "aria-label": "Around line " + line });
        for (let i = from; i <= to; i++) ol.append(h("li", { class: i === line ? "bad-line" : null, id: i === line ? "error-line" : null }, lines[i - 1] || " "));
        kids.push(ol);
        let off = 0; for (let i = 0; i < line - 1; i++) off += lines[i].length + 1;
        area.focus(); area.setSelectionRange(off, off + (lines[line - 1] || "").length);
      }
      out.replaceChildren(...kids);
    }
  }
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(false); });
  page(fresh ? "New customer" : "Customer " + c.name, form);
}

async function alertsPage() {
  const d = await api("GET", "alerts?resolved=true");
  const open = d.alerts.filter((a) => !a.resolved_at), done = d.alerts.filter((a) => a.resolved_at);
  const cols = [
    { label: "Opened", cell: (a) => timeCell(a.opened_at) }, { label: "Severity", cell: (a) => h("span", { class: a.severity === "critical" ? "bad" : "warn" }, a.severity) },
    { label: "Kind", cell: (a) => a.kind }, { label: "Summary", cell: (a) => a.summary },
    { label: "Appliance", cell: (a) => a.appliance_id ? h("a", { href: "#/appliance/" + a.appliance_id }, a.appliance_id) : "-" },
    { label: "Customer", cell: (a) => a.customer || "-" }, { label: "Resolved", cell: (a) => timeCell(a.resolved_at) },
  ];
  page("Alerts", table("Open", cols, open, { id: "alerts-open", empty: "no open alert" }),
    h("h2", {}, "Resolved"), table("Resolved (kept 90 days)", cols, done, { empty: "none" }));
}

async function profilesPage() {
  const [p, i] = await Promise.all([api("GET", "profiles"), api("GET", "images")]);
  page("Boot profiles and images",
    table("Boot profiles", [
      { label: "Profile", cell: (x) => x.name }, { label: "Image", cell: (x) => x.image }, { label: "Transport", cell: (x) => x.transport },
      { label: "Kernel command line", cell: (x) => h("code", {}, x.cmdline) },
    ], p.profiles, { id: "profiles-table" }),
    h("h2", {}, "Images"),
    table("Images in the store", [
      { label: "Image", cell: (x) => x.id }, { label: "Release", cell: (x) => x.release || "-" },
      { label: "Packages", cell: (x) => x.packages }, { label: "Imported", cell: (x) => timeCell(x.imported_at) },
      { label: "Artifacts", cell: (x) => Object.entries(x.artifacts).map(([n, a]) => `${n} (${a.size} B)`).join(", ") },
    ], i.images, { id: "images-table" }));
}

async function auditPage() {
  const d = await api("GET", "audit?limit=500");
  page("Audit log", table("Every action in the panel, newest first", auditCols, d.audit, { id: "audit-table" }));
}

// ---- chrome and routing ----------------------------------------------------
function chrome() {
  const on = !!me && !me.must_change;
  $("#nav").hidden = !on;
  $("#logout").hidden = !me;
  $("#who").textContent = me ? me.operator + (me.read_only ? " (read-only)" : "") : "";
  for (const a of document.querySelectorAll("#nav a")) {
    if (location.hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

async function route() {
  stopLive();
  refresh = null;
  say("");
  if (!me) { try { me = await api("GET", "me"); } catch (e) { me = null; } }
  chrome();
  const [, name, arg] = (location.hash || "#/fleet").split("/");
  try {
    if (!me) return loginPage();
    if (me.must_change) return passwordPage();
    switch (name) {
      case "login": return go("#/fleet");
      case "password": return passwordPage();
      case "pending": return await pendingPage();
      case "appliance": return await appliancePage(Number(arg));
      case "customers": return await customersPage();
      case "customer": return await customerPage(decodeURIComponent(arg));
      case "alerts": return await alertsPage();
      case "profiles": return await profilesPage();
      case "audit": return await auditPage();
      default: return await fleetPage();
    }
  } catch (e) {
    if (e.status !== 401) page("Error", errorBox(e));
  }
}

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "logout"); } catch (e) { /* already gone */ }
  me = null;
  stopLive();
  go("#/login");
});
window.addEventListener("hashchange", route);
window.leveeLoadedAt = Date.now();
route();
