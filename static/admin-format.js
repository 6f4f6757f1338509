// How the admin page words what GET /api/keys says: counts, times and failure classes.
// Every function takes server data as it came (anything) and returns plain text.

const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

// The failure classes of the metrics and GET /api/keys, in words.
const REASONS = {
  rate_limited: "rate limited",
  invalid: "invalid key",
  billing: "out of credit",
  overloaded: "overloaded",
  broken: "broken answer",
  unreachable: "unreachable",
  rejected: "request rejected",
};

/** A count from the server: a finite number ≥ 0, else 0. */
export function count(value) {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : 0;
}

export function number(value) {
  return whole.format(count(value));
}

/** A token count, short: 1.2K, 3.4M. */
export function tokens(value) {
  const n = count(value);
  return n < 10000 ? whole.format(n) : compact.format(n);
}

export function reason(name) {
  const text = typeof name === "string" ? name : "";
  return REASONS[text] || text.replaceAll("_", " ");
}

/** A Date from an ISO time, or null. */
export function parseTime(iso) {
  if (typeof iso !== "string" || !iso) return null;
  const time = new Date(iso);
  return Number.isNaN(time.getTime()) ? null : time;
}

/** The local time of day, with the date too when it is not today. */
export function clock(time, now = new Date()) {
  const sameDay = time.toDateString() === now.toDateString();
  const options = sameDay ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return time.toLocaleString(undefined, options);
}

/**
 * "5 minutes ago", "in 2 hours". A time that has passed (past: true) but is a little ahead of
 * this browser's clock reads "now".
 */
export function fromNow(time, now = new Date(), { past = false } = {}) {
  const ahead = (time.getTime() - now.getTime()) / 1000;
  const seconds = past ? Math.min(ahead, 0) : ahead;
  const steps = [[60, "second"], [3600, "minute"], [86400, "hour"], [Infinity, "day"]];
  let unit = 1;
  for (const [limit, name] of steps) {
    if (Math.abs(seconds) < limit) return relative.format(Math.round(seconds / unit), name);
    unit = limit;
  }
  return "";
}

/** Failures by class, largest first: "rate limited 3, invalid key 1". */
export function failureBreakdown(failures) {
  if (!failures || typeof failures !== "object") return "";
  return Object.entries(failures)
    .filter(([, n]) => count(n) > 0)
    .sort((a, b) => count(b[1]) - count(a[1]))
    .map(([name, n]) => `${reason(name)} ${number(n)}`)
    .join(", ");
}

/** The total of a failures object ({class: n}); a plain number is taken as it is. */
export function failureTotal(failures) {
  if (failures && typeof failures === "object") {
    return Object.values(failures).reduce((sum, n) => sum + count(n), 0);
  }
  return count(failures);
}
