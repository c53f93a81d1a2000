// The panel in a real Chromium (Debian's, driven by playwright-core),
// against the `levee serve` that tests/panel_browser.rs started. Each step
// prints one line; any failure exits non-zero with the reason.
// Environment: PANEL_URL, OTHER_ORIGIN, ADMIN_OTP, VIEWER_PASSWORD,
// LIVE_MAC (heartbeating), RETIRE_ID, PENDING_MAC, PENDING_FP,
// SCREENSHOTS (a directory: one PNG per page, optional).
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} not set`); return v; };
const url = env("PANEL_URL").replace(/\/$/, "");
const shots = process.env.SCREENSHOTS || "";
const t0 = Date.now();
const step = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: false });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 820 } });
  const page = await ctx.newPage();
  // Generous: the full suite runs QEMU VMs on the same two cores.
  page.setDefaultTimeout(30000);
  // The page's own errors fail the test with their message.
  const pageErrors = [];
  page.on("pageerror", (e) => { pageErrors.push(e.message); console.log("page error: " + e.message); });
  page.on("console", (m) => { if (m.type() === "error") console.log("console error: " + m.text()); });

  // Log in with the one-time password, choose a new one.
  await page.goto(url + "/");
  await page.getByLabel("Operator").fill("admin");
  await page.getByLabel("Password").fill(env("ADMIN_OTP"));
  await shot(page, "login");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Choose a new password" }).waitFor();
  await page.getByLabel("Current password").fill(env("ADMIN_OTP"));
  await page.getByLabel(/New password/).fill("admin's own long password");
  await page.getByRole("button", { name: "Change password" }).click();
  step("logged in with the one-time password and chose a new one");

  // The fleet, and a heartbeat arriving without a reload.
  await page.getByRole("heading", { name: "Fleet" }).waitFor();
  const liveMac = env("LIVE_MAC");
  const row = page.locator("#fleet-table tbody tr", { hasText: liveMac });
  await row.waitFor();
  const loadedAt = await page.evaluate(() => window.leveeLoadedAt);
  const before = await row.locator(".hb").innerText();
  await page.waitForFunction(([mac, was]) => {
    for (const tr of document.querySelectorAll("#fleet-table tbody tr"))
      if (tr.textContent.includes(mac)) return tr.querySelector(".hb").textContent !== was;
    return false;
  }, [liveMac, before], { timeout: 30000 });
  const after = await row.locator(".hb").innerText();
  assert(await page.evaluate(() => window.leveeLoadedAt) === loadedAt, "the page was not reloaded");
  step(`fleet: heartbeat ${before} -> ${after} without reload`);
  await shot(page, "fleet");

  // Sorting and filtering are the server's.
  await page.getByRole("button", { name: /^MAC/ }).click();
  await page.locator('th[aria-sort="ascending"]', { hasText: "MAC" }).waitFor();
  await page.getByRole("searchbox", { name: "Search" }).fill(liveMac);
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByText("Page 1 of 1 (1 appliances)").waitFor();
  await page.getByRole("searchbox", { name: "Search" }).fill("");
  await page.getByRole("button", { name: "Filter" }).click();
  step("fleet: sorted and filtered");

  // Approve the pending machine, fingerprint as its console shows it.
  await page.getByRole("link", { name: "Pending" }).click();
  const pending = page.locator("#pending-table tbody tr", { hasText: env("PENDING_MAC") });
  await pending.waitFor();
  assert((await pending.locator(".fp").innerText()).trim() === env("PENDING_FP"), "fingerprint shown");
  await shot(page, "pending");
  await pending.getByLabel("Customer").selectOption("acme");
  await pending.getByLabel("Fingerprint from the console").fill(env("PENDING_FP"));
  await pending.getByRole("button", { name: "Approve" }).click();
  await page.locator("#pending-table tbody tr", { hasText: env("PENDING_MAC") }).waitFor({ state: "detached" });
  step("pending machine approved");

  // A customer configuration with an error: refused, shown at its line.
  await page.getByRole("link", { name: "Customers" }).click();
  await page.getByRole("link", { name: "acme", exact: true }).click();
  const area = page.getByLabel("Configuration (YAML)");
  const yaml = await area.inputValue();
  assert(yaml.includes("********") && !yaml.includes("hunter2"), "secrets redacted");
  const bad = yaml.replace("every: 1d", "every: often");
  const badLine = bad.split("\n").findIndex((l) => l.includes("often")) + 1;
  await area.fill(bad);
  await page.getByRole("button", { name: "Apply" }).click();
  const marked = page.locator("#error-line");
  await marked.waitFor();
  assert((await marked.innerText()).includes("every: often"), "the marked line is the bad one");
  const msg = await page.locator("#apply-result .error").innerText();
  assert(msg.startsWith(`Line ${badLine},`), `error names line ${badLine}: ${msg}`);
  step(`customer: error shown at line ${badLine}: ${msg}`);
  await shot(page, "customer");
  await area.fill(yaml.replace("every: 1d", "every: 12h"));
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByText("Applied:").waitFor();
  step("customer: a fixed configuration applied (secret kept as ********)");
  await page.getByRole("link", { name: "Customers" }).click();
  await page.locator("#customers-table").waitFor();
  await shot(page, "customers");

  // Retire an appliance.
  const retireId = env("RETIRE_ID");
  await page.goto(`${url}/#/appliance/${retireId}`);
  await page.locator("#facts").waitFor();
  const retire = page.getByRole("form", { name: "Retire" });
  await retire.getByLabel("Reason").fill("stolen from site");
  await retire.getByLabel("Revoke its credential for good").check();
  await retire.getByRole("button", { name: "Retire" }).click();
  await page.locator("#facts dd", { hasText: /^retired/ }).waitFor();
  await page.locator("#history-table", { hasText: "admin: retire stolen from site" }).waitFor();
  step("appliance retired; the action is in its history");

  for (const [link, name, sel] of [["Alerts", "alerts", "#alerts-open"], ["Profiles & images", "profiles", "#images-table"], ["Audit log", "audit", "#audit-table"]]) {
    await page.getByRole("link", { name: link }).click();
    await page.locator(sel).waitFor();
    await shot(page, name);
  }
  assert(await page.locator("#audit-table", { hasText: "customer-apply" }).count() === 1, "audit shows the apply");
  step("alerts, profiles and images, audit pages shown");

  const liveId = await page.evaluate(async (mac) => {
    const r = await fetch(`/ui/api/fleet?q=${encodeURIComponent(mac)}`);
    return (await r.json()).rows[0].id;
  }, liveMac);
  await page.goto(`${url}/#/appliance/${liveId}`);
  await page.locator("#runs-table", { hasText: "success" }).waitFor();
  await shot(page, "appliance");

  // CSRF: a page of another origin posts to the panel with the browser's
  // cookies; refused (the appliance stays in service).
  const evil = await ctx.newPage();
  await evil.goto(env("OTHER_ORIGIN"));
  await evil.evaluate(async ([target]) => {
    await fetch(target, { method: "POST", mode: "no-cors", credentials: "include", headers: { "Content-Type": "text/plain" }, body: "{}" }).catch(() => {});
    const f = document.createElement("form");
    f.method = "POST"; f.action = target; document.body.append(f); f.submit();
  }, [`${url}/ui/api/appliances/${liveId}/retire`]);
  await evil.waitForLoadState();
  await evil.close();
  const state = await page.evaluate(async (id) => (await (await fetch(`/ui/api/appliances/${id}`)).json()).appliance.state, liveId);
  assert(state !== "retired", "a cross-origin request changed nothing: " + state);
  // With the session but a wrong CSRF token: refused too.
  const forged = await page.evaluate(async (id) => {
    const r = await fetch(`/ui/api/appliances/${id}/retire`, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": "0".repeat(64) }, body: "{}" });
    return r.status;
  }, liveId);
  assert(forged === 403, "a wrong CSRF token is refused: " + forged);
  step("CSRF from another origin and a forged token refused");

  // Logout ends the session on the server: its cookie replayed is refused.
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === "levee_session");
  assert(session && session.secure && session.httpOnly && session.sameSite === "Strict", "cookie flags");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();
  const replay = await browser.newContext({ ignoreHTTPSErrors: true });
  await replay.addCookies([session]);
  const r = await replay.request.get(url + "/ui/api/fleet");
  assert(r.status() === 401, "replayed session refused: " + r.status());
  await replay.close();
  step("session replayed after logout refused");

  // A read-only operator sees everything and changes nothing.
  const ro = await browser.newContext({ ignoreHTTPSErrors: true });
  const rp = await ro.newPage();
  await rp.goto(url + "/");
  await rp.getByLabel("Operator").waitFor();
  // With the keyboard alone: Tab from the top of the page to the name,
  // type, Tab to the password, Enter.
  for (let i = 0; i < 6 && (await rp.evaluate(() => document.activeElement.id)) !== "login-name"; i++) {
    await rp.keyboard.press("Tab");
  }
  assert(await rp.evaluate(() => document.activeElement.id) === "login-name", "the name field is reachable by Tab");
  await rp.keyboard.type("viewer");
  await rp.keyboard.press("Tab");
  await rp.keyboard.type(env("VIEWER_PASSWORD"));
  await rp.keyboard.press("Enter");
  await rp.locator("#fleet-table").waitFor();
  step("read-only operator logged in with the keyboard alone");
  await rp.goto(`${url}/#/appliance/${liveId}`);
  await rp.locator("#facts").waitFor();
  assert(await rp.getByRole("button", { name: "Retire" }).isDisabled(), "retire disabled for read-only");
  const status = await rp.evaluate(async (id) => {
    const me = await (await fetch("/ui/api/me")).json();
    const r = await fetch(`/ui/api/appliances/${id}/retire`, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf }, body: "{}" });
    return r.status;
  }, liveId);
  assert(status === 403, "read-only retire refused by the API: " + status);
  await ro.close();
  step("read-only operator cannot change anything");
  assert(pageErrors.length === 0, "no script errors: " + pageErrors.join("; "));
  console.log("PANEL-BROWSER-OK");
} catch (e) {
  // What the page showed when it failed.
  for (const c of browser.contexts()) for (const p of c.pages()) {
    console.log(`--- ${p.url()}\n` + (await p.locator("main").innerHTML().catch(() => "?")).slice(0, 4000));
    await p.screenshot({ path: `${process.env.TMPDIR || "/tmp"}/levee-panel-failure.png` }).catch(() => {});
  }
  throw e;
} finally {
  await browser.close();
}
