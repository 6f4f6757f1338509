// The admin page's "last hour" chart: one bar per minute on a canvas, requests in the accent
// colour with the failed part in the error colour. Colours come from the page's CSS
// variables, so the chart follows light and dark mode; sizes are set on the canvas element
// (its width and height attributes), never through inline styles the page's policy refuses.

import { count } from "./admin-format.js";

export const MINUTES = 60;

/** The per-minute buckets of an entry's "recent", as {requests, failures}, oldest first. */
export function buckets(recent) {
  const list = Array.isArray(recent) ? recent.slice(-MINUTES) : [];
  return list.map((bucket) => ({
    requests: count(bucket && bucket.requests),
    failures: count(bucket && bucket.failures),
  }));
}

/** The busiest minute among several keys' buckets, at least 1: the charts' shared scale. */
export function peak(bucketLists) {
  let top = 1;
  for (const list of bucketLists) {
    for (const bucket of list) top = Math.max(top, bucket.requests, bucket.failures);
  }
  return top;
}

function palette(canvas) {
  const style = getComputedStyle(canvas);
  return {
    requests: style.getPropertyValue("--chart-requests").trim() || "#2f6fed",
    failures: style.getPropertyValue("--chart-failures").trim() || "#d92d20",
    axis: style.getPropertyValue("--border").trim() || "#e2e5e9",
  };
}

/** Draw one key's buckets on canvas, scaled so that `top` requests fill its height. */
export function draw(canvas, list, top) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return; // not laid out (hidden): drawn again when it shows
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const colours = palette(canvas);
  context.fillStyle = colours.axis;
  context.fillRect(0, height - 1, width, 1);
  const slot = width / MINUTES;
  const bar = Math.max(1, slot - (slot > 2 ? 1 : 0));
  const offset = MINUTES - list.length; // fewer buckets than minutes: the newest sit at the right
  const room = height - 2;
  const scale = (n) => (n > 0 ? Math.max(1.5, (n / top) * room) : 0);
  list.forEach((bucket, n) => {
    const x = (offset + n) * slot;
    const all = scale(Math.max(bucket.requests, bucket.failures));
    const failed = scale(bucket.failures);
    context.fillStyle = colours.requests;
    context.fillRect(x, height - 1 - all, bar, all - failed);
    context.fillStyle = colours.failures;
    context.fillRect(x, height - 1 - failed, bar, failed);
  });
}

/** What the chart shows, in words, for its accessible name. */
export function describe(list) {
  const requests = list.reduce((sum, b) => sum + b.requests, 0);
  const failures = list.reduce((sum, b) => sum + b.failures, 0);
  const busiest = list.reduce((top, b) => Math.max(top, b.requests), 0);
  if (!requests && !failures) return "No requests in the last hour";
  return `Last hour: ${requests} requests, ${failures} failures; busiest minute ${busiest}`;
}
