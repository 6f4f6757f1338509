// The operator's page: per provider, a table of keys from GET /api/keys that refreshes every
// 10 s (paused while the tab is hidden), a per-minute chart of the last hour per key, and the
// buttons that end a key's rest (POST .../reset) or check it now (POST .../check).
//
// Every call carries ADMIN_TOKEN, asked for once and kept in this browser (localStorage) until
// "Forget token"; a 401 asks again. Server data is only ever set as text (textContent and
// attributes), never parsed as markup. The page's policy allows no inline style: sizes and
// colours live in admin.css, states in data- attributes it selects on.

import * as chart from "./admin-chart.js";
import * as format from "./admin-format.js";

const TOKEN_KEY = "chatbridge.adminToken";
const REFRESH_MS = 10000;
const LOAD_TIMEOUT_MS = 15000; // a hung answer must not stop the refreshes

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), refresh: $("refresh"), forget: $("forget"), providers: $("providers"),
  notice: $("notice"), noticeText: $("notice-text"), noticeAction: $("notice-action"),
  providerTemplate: $("provider-template"), rowTemplate: $("row-template"),
  detailsTemplate: $("details-template"),
  tokenDialog: $("token-dialog"), tokenForm: $("token-form"), tokenInput: $("token-input"),
  tokenWhy: $("token-why"), tokenCancel: $("token-cancel"),
};

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------ the admin token

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

let token = storedToken();

function keepToken(value) {
  token = value;
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page closes
  }
  ui.forget.hidden = !value;
}

let tokenAnswer = null; // the open prompt, shared by every call that needs a token

/** Ask for the admin token; resolves with it, or null when the prompt is cancelled. */
function askToken(rejected) {
  if (!tokenAnswer) {
    tokenAnswer = new Promise((resolve) => {
      ui.tokenWhy.textContent = rejected
        ? "That token was not accepted. Check the server's ADMIN_TOKEN and try again."
        : "This page needs the server's ADMIN_TOKEN. It is kept in this browser only.";
      ui.tokenInput.value = "";
      ui.tokenDialog.returnValue = "";
      ui.tokenDialog.addEventListener("close", () => {
        tokenAnswer = null;
        const value = ui.tokenDialog.returnValue.trim();
        if (value) keepToken(value);
        resolve(value || null);
      }, { once: true });
      ui.tokenDialog.showModal();
      ui.tokenInput.focus();
    });
  }
  return tokenAnswer;
}

// ------------------------------------------------------------------ the admin API

/**
 * fetch() with the admin token, asking for it when there is none or it is refused; with
 * timeout (ms), each try gives up after that long (a TimeoutError).
 */
async function adminFetch(path, init = {}, timeout = 0) {
  let rejected = false;
  for (;;) {
    if (!token || rejected) {
      const value = await askToken(rejected);
      if (!value) throw new ApiError("This page needs the admin token.", 401);
    }
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", `Bearer ${token}`);
    headers.set("Accept", "application/json");
    const signal = timeout ? AbortSignal.timeout(timeout) : undefined;
    const response = await fetch(path, { ...init, headers, signal, cache: "no-store" });
    if (response.status !== 401) return response;
    rejected = true;
  }
}

/** The JSON body of a response, or throws an ApiError with the server's message. */
async function jsonOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line says enough
  }
  if (response.ok && body && typeof body === "object") return body;
  const message = body && typeof body.error === "string" ? body.error
    : `HTTP ${response.status} ${response.statusText}`.trim();
  throw new ApiError(message, response.status);
}

function keyUrl(row, action) {
  return `/api/keys/${encodeURIComponent(row.provider)}/${encodeURIComponent(row.suffix)}/${action}`;
}

// ------------------------------------------------------------------ refreshing

let running = false; // refreshing itself: off without a token or while the admin API is off
let timer = 0;
let loading = null;
let again = false; // asked to refresh while a refresh was under way: its answer may be stale
let stops = 0; // how often the page stopped: an answer asked for before the last stop is dropped
let updated = null;

function refresh() {
  if (loading) {
    again = true;
    return loading;
  }
  running = true;
  loading = load().finally(() => {
    loading = null;
    if (again) {
      again = false;
      refresh();
    } else {
      schedule();
    }
  });
  return loading;
}

function schedule() {
  clearTimeout(timer);
  if (running && !document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

async function load() {
  const asked = stops;
  try {
    const body = await jsonOf(await adminFetch("/api/keys", {}, LOAD_TIMEOUT_MS));
    if (asked !== stops) return; // the token was forgotten meanwhile
    showNotice(null);
    render(body.providers && typeof body.providers === "object" ? body.providers : {});
    updated = new Date();
    showStatus();
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error.status === 401) {
    stop("This page needs the server's ADMIN_TOKEN.", "Enter the admin token");
  } else if (error.status === 404) {
    stop("The admin API is off on this server: set ADMIN_TOKEN in its environment and restart it.",
      "Try again");
  } else {
    setStatus(`Could not refresh: ${problem(error)}. Trying again in ${REFRESH_MS / 1000} s.`, "error");
  }
}

function problem(error) {
  if (error instanceof ApiError) return error.message;
  if (error.name === "TimeoutError") return `the server did not answer within ${LOAD_TIMEOUT_MS / 1000} s`;
  return "the server could not be reached";
}

/** Stop refreshing, hide every key, and say why. */
function stop(message, action) {
  stops += 1;
  running = false;
  clearTimeout(timer);
  clearProviders();
  showNotice(message, action);
  setStatus("");
}

function showStatus() {
  if (!updated || !running) return;
  const when = updated.toLocaleTimeString();
  setStatus(document.hidden ? `Updated ${when}; paused while this tab is hidden`
    : `Updated ${when}; refreshes every ${REFRESH_MS / 1000} s`);
}

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.dataset.kind = kind;
}

function showNotice(message, action = "") {
  ui.notice.hidden = !message;
  ui.noticeText.textContent = message || "";
  ui.noticeAction.textContent = action;
  ui.noticeAction.hidden = !action;
}

// ------------------------------------------------------------------ rendering

const sections = new Map(); // provider name -> {element, body, summary, peak, rows: Map}

function clearProviders() {
  sections.clear();
  ui.providers.replaceChildren();
}

/** Show GET /api/keys' providers, updating the rows already shown in place. */
function render(providers) {
  const names = Object.keys(providers);
  for (const [name, section] of sections) {
    if (!names.includes(name)) {
      section.element.remove();
      sections.delete(name);
    }
  }
  names.forEach((name, n) => {
    const section = sections.get(name) || addSection(name);
    if (ui.providers.children[n] !== section.element) {
      ui.providers.insertBefore(section.element, ui.providers.children[n] || null);
    }
    renderSection(section, Array.isArray(providers[name]) ? providers[name] : []);
  });
  if (!names.length) showNotice("No provider has keys configured.");
}

function addSection(name) {
  const element = ui.providerTemplate.content.firstElementChild.cloneNode(true);
  element.querySelector(".provider-name").textContent = name;
  element.dataset.provider = name;
  const section = {
    name, element, body: element.querySelector("tbody"),
    summary: element.querySelector(".provider-summary"), peak: element.querySelector(".peak"),
    rows: new Map(),
  };
  sections.set(name, section);
  return section;
}

function renderSection(section, entries) {
  const seen = new Set();
  const rows = entries.filter((entry) => entry && typeof entry === "object").map((entry) => {
    let id = String(entry.key);
    for (let n = 2; seen.has(id); n += 1) id = `${entry.key}#${n}`; // two keys, same last four
    seen.add(id);
    const row = section.rows.get(id) || addRow(section, id, entry);
    row.entry = entry;
    return row;
  });
  for (const [id, row] of section.rows) {
    if (!seen.has(id)) {
      row.element.remove();
      row.details.remove();
      section.rows.delete(id);
    }
  }
  rows.forEach((row, n) => placeRow(section, row, n));
  section.top = chart.peak(rows.map((row) => chart.buckets(row.entry.recent)));
  section.peak.textContent = section.top > 1 ? `; the tallest bar is ${section.top} a minute` : "";
  section.summary.textContent = summary(rows.map((row) => row.entry));
  rows.forEach((row) => paintRow(row, section.top));
}

function placeRow(section, row, n) {
  const at = section.body.children[2 * n];
  if (at !== row.element) {
    section.body.insertBefore(row.element, at || null);
    section.body.insertBefore(row.details, row.element.nextSibling);
  }
}

function summary(entries) {
  const states = {};
  let requests = 0;
  for (const entry of entries) {
    states[entry.state] = (states[entry.state] || 0) + 1;
    requests += format.count(entry.today && entry.today.requests);
  }
  const parts = ["ok", "cooling", "invalid"].filter((state) => states[state])
    .map((state) => `${states[state]} ${state}`);
  const keys = entries.length === 1 ? "1 key" : `${entries.length} keys`;
  return `${keys}${parts.length ? `: ${parts.join(", ")}` : ""} · ${format.number(requests)} requests today`;
}

function addRow(section, id, entry) {
  const element = ui.rowTemplate.content.firstElementChild.cloneNode(true);
  const details = ui.detailsTemplate.content.firstElementChild.cloneNode(true);
  const row = {
    id, element, details, entry, provider: section.name,
    suffix: String(entry.key).replace(/^…/, ""), busy: "", result: null,
    cell: (selector) => element.querySelector(selector),
  };
  element.dataset.key = row.suffix;
  details.dataset.key = row.suffix;
  const toggle = row.cell(".key-toggle");
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    details.hidden = !open;
  });
  row.cell(".reset").addEventListener("click", () => act(row, "reset"));
  row.cell(".check").addEventListener("click", () => act(row, "check"));
  section.rows.set(id, row);
  return row;
}

/** Fill one row (and its hidden details row) from its entry. */
function paintRow(row, top) {
  const { entry, cell } = row;
  const today = entry.today && typeof entry.today === "object" ? entry.today : {};
  cell(".key-name").textContent = String(entry.key);
  cell(".key-group").textContent = typeof entry.group === "string" ? `project ${entry.group}` : "";
  paintState(row);
  const failures = format.failureTotal(today.failures);
  setCount(cell(".requests"), format.number(today.requests), `${format.number(entry.requests)} in all`);
  setCount(cell(".failures"), format.number(failures), format.failureBreakdown(today.failures));
  const input = format.count(today.input_tokens);
  const output = format.count(today.output_tokens);
  setCount(cell(".tokens"), format.tokens(input + output),
    `${format.tokens(input)} in · ${format.tokens(output)} out`);
  cell(".failures").dataset.some = String(failures > 0);
  paintChart(row, top);
  paintTime(cell(".last-used"), entry.last_used, "never");
  const error = typeof entry.last_error === "string" ? entry.last_error : "";
  cell(".error-text").textContent = error || "—";
  cell(".error-text").title = error;
  paintActions(row);
  paintDetails(row);
}

function paintState(row) {
  const { entry, cell } = row;
  const state = typeof entry.state === "string" ? entry.state : "unknown";
  const badge = cell(".badge");
  badge.textContent = state;
  badge.dataset.state = state;
  row.element.dataset.state = state;
  const lines = [];
  const why = entry.reason ? format.reason(entry.reason) : "";
  const now = new Date();
  if (state === "invalid") lines.push(restLine(why || "invalid key", entry.invalid_until, now));
  const cooling = entry.cooling_until && typeof entry.cooling_until === "object" ? entry.cooling_until : {};
  for (const [model, until] of Object.entries(cooling)) {
    lines.push(restLine(`${model}${why && state !== "invalid" ? `, ${why}` : ""}`, until, now));
  }
  cell(".rest").replaceChildren(...lines);
}

function restLine(label, until, now) {
  const line = document.createElement("span");
  line.className = "rest-line";
  const time = format.parseTime(until);
  line.textContent = time ? `${label} until ${format.clock(time, now)} (${format.fromNow(time, now)})` : label;
  if (time) line.title = time.toISOString();
  return line;
}

function setCount(element, value, sub) {
  element.querySelector(".value").textContent = value;
  element.querySelector(".sub").textContent = sub;
}

function paintTime(element, iso, none) {
  const time = format.parseTime(iso);
  element.textContent = time ? format.fromNow(time, new Date(), { past: true }) : none;
  element.title = time ? `${format.clock(time)} (${time.toISOString()})` : "";
}

function paintChart(row, top) {
  const canvas = row.cell(".spark");
  const list = chart.buckets(row.entry.recent);
  row.buckets = list;
  row.top = top;
  canvas.setAttribute("aria-label", chart.describe(list));
  chart.draw(canvas, list, top);
}

function redrawCharts() {
  for (const section of sections.values()) {
    for (const row of section.rows.values()) chart.draw(row.cell(".spark"), row.buckets, row.top);
  }
}

// ------------------------------------------------------------------ reset and check

function paintActions(row) {
  const reset = row.cell(".reset");
  const check = row.cell(".check");
  reset.disabled = Boolean(row.busy) || row.entry.state === "ok";
  reset.textContent = row.busy === "reset" ? "Resetting…" : "Reset";
  check.disabled = Boolean(row.busy);
  check.textContent = row.busy === "check" ? "Checking…" : "Check";
  const result = row.cell(".check-result");
  const shown = latestResult(row);
  result.textContent = shown ? shown.text : "";
  result.title = shown ? shown.title || shown.text : "";
  result.dataset.kind = shown ? shown.kind : "";
}

/** The newer of this page's last action on the row and the server's last check of the key. */
function latestResult(row) {
  const checked = checkedResult(row.entry.checked);
  if (!row.result) return checked;
  if (checked && checked.at > row.result.at) return checked;
  return row.result;
}

function checkedResult(checked) {
  const at = checked && format.parseTime(checked.at);
  if (!at) return null;
  return checkText(checked, at);
}

function checkText(check, at) {
  const ok = check.result === "ok";
  const message = typeof check.message === "string" ? check.message : "";
  const head = ok ? "Works" : `Fails: ${format.reason(check.result)}`;
  return {
    kind: ok ? "ok" : "error", at,
    text: `${head} · checked ${format.fromNow(at, new Date(), { past: true })}`,
    title: [head, message, `checked ${format.clock(at)}`].filter(Boolean).join("\n"),
  };
}

/** Reset or check one key, then show what came back. */
async function act(row, action) {
  row.busy = action;
  paintActions(row);
  try {
    const body = await jsonOf(await adminFetch(keyUrl(row, action), { method: "POST" }));
    const now = new Date();
    row.result = action === "check" && body.check
      ? checkText(body.check, now)
      : { kind: "ok", at: now, text: "Rest ended" };
    if (body.key && typeof body.key === "object") row.entry = body.key;
  } catch (error) {
    if (error.status === 401) return failed(error);
    row.result = { kind: "error", at: new Date(), text: problem(error) };
  } finally {
    row.busy = "";
  }
  paintActions(row);
  refresh(); // the state, the counts and the provider's summary may all have changed
}

// ------------------------------------------------------------------ the 7 days and the last check

function paintDetails(row) {
  const { entry, details } = row;
  const days = Array.isArray(entry.days) ? entry.days.filter((day) => day && typeof day === "object") : [];
  details.querySelector(".no-days").hidden = days.length > 0;
  details.querySelector(".days").hidden = days.length === 0;
  details.querySelector(".days tbody").replaceChildren(...days.map(dayRow));
  const checked = checkedResult(entry.checked);
  details.querySelector(".checked").textContent = checked
    ? `Last check: ${checked.title.replaceAll("\n", " · ")}` : "Not checked yet.";
}

function dayRow(day) {
  const tr = document.createElement("tr");
  const failures = format.failureTotal(day.failures);
  const breakdown = format.failureBreakdown(day.failures);
  const cells = [
    [typeof day.date === "string" ? day.date : "?", ""],
    [format.number(day.requests), "num"],
    [breakdown ? `${format.number(failures)} (${breakdown})` : format.number(failures), "num"],
    [format.number(day.input_tokens), "num"],
    [format.number(day.output_tokens), "num"],
  ];
  for (const [text, className] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    td.className = className;
    tr.append(td);
  }
  return tr;
}

// ------------------------------------------------------------------ start

async function start() {
  if (!token && !(await askToken(false))) {
    stop("This page needs the server's ADMIN_TOKEN.", "Enter the admin token");
    return;
  }
  await refresh();
}

function forget() {
  keepToken("");
  stop("The admin token is forgotten in this browser.", "Enter the admin token");
}

function wire() {
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = ui.tokenInput.value.trim();
    if (/[^\x21-\x7e]/.test(value)) { // fetch() cannot put it in a header
      ui.tokenWhy.textContent = "A token is letters, digits and ASCII punctuation, without spaces.";
    } else if (value) {
      ui.tokenDialog.close(value);
    }
  });
  ui.tokenCancel.addEventListener("click", () => ui.tokenDialog.close(""));
  ui.refresh.addEventListener("click", () => refresh());
  ui.forget.addEventListener("click", forget);
  ui.noticeAction.addEventListener("click", () => start());
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer);
      showStatus();
    } else if (running) {
      refresh();
    }
  });
  let frame = 0;
  const redraw = () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(redrawCharts);
  };
  window.addEventListener("resize", redraw);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);
}

wire();
keepToken(token);
document.documentElement.dataset.ready = "true";
start();
