"""The benchmark's table, the issue's targets checked against a run, and its chart.

Ratios compare paths measured in the same run: `×direct` to the fake upstream called directly,
`×naive` to the naive relay (bench/naive_relay.py), each on the same wire format.
"""

DIRECT, NAIVE, CHATBRIDGE = "direct", "naive relay", "ChatBridge"
HOT = "200 streams, 20 ms"


def references(name):
    """(direct, naive) paths to compare a path with: the Gemini ones for the Gemini wire format."""
    if "Gemini" in name or "/v1beta" in name:
        return "direct Gemini", "naive relay Gemini"
    return DIRECT, NAIVE


def ratio(value, reference):
    """value / reference as text, or '-'."""
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}"


def fmt(value, digits=1):
    """A number for the table, or '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


def stream_table(rows, title):
    """Lines of a table of streaming paths: TTFT, total, CPU, with ratios of total p50 and CPU."""
    lines = [title, f"{'path':24} {'n':>5} {'err':>4} {'TTFT p50/p95/p99 ms':>22} {'total p50/p95/p99 ms':>24}"
             f" {'CPU ms':>7} {'tot ×dir':>8} {'tot ×nai':>8} {'CPU ×nai':>8}"]
    for name, row in rows.items():
        direct, naive = (rows.get(ref, {}) for ref in references(name))
        ttft = "/".join(fmt(row[f"ttft_p{p}_ms"]) for p in (50, 95, 99))
        total = "/".join(fmt(row[f"total_p{p}_ms"]) for p in (50, 95, 99))
        lines.append(f"{name:24} {row['n']:>5} {row['errors']:>4} {ttft:>22} {total:>24}"
                     f" {fmt(row.get('cpu_ms_per_stream'), 2):>7}"
                     f" {ratio(row['total_p50_ms'], direct.get('total_p50_ms')):>8}"
                     f" {ratio(row['total_p50_ms'], naive.get('total_p50_ms')):>8}"
                     f" {ratio(row.get('cpu_ms_per_stream'), naive.get('cpu_ms_per_stream')):>8}")
    return lines


def slow_table(rows, title):
    """Lines of the slow-stream table: errors and worker RSS per open stream."""
    lines = [title, f"{'path':24} {'streams':>7} {'err':>4} {'most open':>9} {'RSS MiB base/peak':>18}"
             f" {'KiB/stream':>10} {'×naive':>7}"]
    naive = rows.get(NAIVE, {})
    for name, row in rows.items():
        rss = f"{fmt(row['rss_baseline_mib'])}/{fmt(row['rss_peak_mib'])}"
        lines.append(f"{name:24} {row['n']:>7} {row['errors']:>4} {row['most_open']:>9} {rss:>18}"
                     f" {fmt(row['rss_kib_per_open_stream']):>10}"
                     f" {ratio(row['rss_kib_per_open_stream'], naive.get('rss_kib_per_open_stream')):>7}")
    return lines


def whole_table(rows, title):
    """Lines of the non-streaming table: requests per second with ratios."""
    lines = [title, f"{'path':24} {'n':>5} {'err':>4} {'req/s':>8} {'×direct':>8} {'×naive':>8}"
             f" {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>7}"]
    for name, row in rows.items():
        direct, naive = (rows.get(ref, {}) for ref in references(name))
        lines.append(f"{name:24} {row['n']:>5} {row['errors']:>4} {fmt(row.get('per_second')):>8}"
                     f" {ratio(row.get('per_second'), direct.get('per_second')):>8}"
                     f" {ratio(row.get('per_second'), naive.get('per_second')):>8}"
                     f" {fmt(row['total_p50_ms']):>8} {fmt(row['total_p99_ms']):>8}"
                     f" {fmt(row.get('cpu_ms_per_stream'), 2):>7}")
    return lines


def table(results):
    """The whole table as text."""
    work, sizes = results["workloads"], results["sizes"]
    lines = stream_table(work["sequential"], f"(1) one stream at a time, 50 chunks, no delay "
                                              f"({sizes['sequential']} per path)")
    for config, rows in work["concurrent"].items():
        lines += ["", *stream_table(rows, f"(2) {config} between chunks, 50 chunks ({sizes['rounds']} bursts)")]
    lines += ["", *slow_table(work["slow"], f"(3) {sizes['slow_streams']} slow streams open at once, "
                                            f"one chunk a second for {sizes['slow_seconds']} s")]
    lines += ["", *whole_table(work["whole"], f"(4) non-streaming, {sizes['whole_concurrency']} at a time "
                                              f"({sizes['whole']} per path)")]
    lines += ["", *stream_table(work["shapes"], f"(5) client APIs and wire formats, 50 chunks, one at a time "
                                                f"({sizes['shapes']} per path)")]
    lines += ["", "Targets of issue 13 (ChatBridge on the file store):"]
    lines += [f"  [{'holds' if t['holds'] else 'FAILS'}] {t['target']}: {t['measured']}" for t in results["targets"]]
    return "\n".join(lines)


def slower_than_naive(results):
    """Every (workload, path) where a ChatBridge path did worse than the naive relay."""
    work, found = results["workloads"], []
    groups = [("(1)", work["sequential"], "total_p50_ms", False), ("(4)", work["whole"], "per_second", True),
              ("(5)", work["shapes"], "total_p50_ms", False), ("(3)", work["slow"], "errors", False)]
    groups += [(f"(2) {config}", rows, "total_p50_ms", False) for config, rows in work["concurrent"].items()]
    for label, rows, metric, higher_is_better in groups:
        for name, row in rows.items():
            naive = rows.get(references(name)[1], {}).get(metric)
            value = row.get(metric)
            if not name.startswith(CHATBRIDGE) or value is None or naive is None:
                continue
            if (value < naive) if higher_is_better else (value > naive):
                found.append(f"{label} {name} {value} vs {naive}")
    return found


def targets(results):
    """The targets of issue 13, each with what this run measured and whether it holds."""
    work = results["workloads"]
    seq, hot, slow = work["sequential"], work["concurrent"].get(HOT, {}), work["slow"]
    cpu = seq[CHATBRIDGE]["cpu_ms_per_stream"] / seq[NAIVE]["cpu_ms_per_stream"]
    added = {name: seq[name]["ttft_p50_ms"] - seq[DIRECT]["ttft_p50_ms"] for name in (NAIVE, CHATBRIDGE)}
    cb, direct = hot.get(CHATBRIDGE, {}), hot.get(DIRECT, {})
    total = (cb.get("total_p50_ms") or 0) / (direct.get("total_p50_ms") or 1)
    late = (cb.get("ttft_p99_ms") or 0) - (direct.get("ttft_p99_ms") or 0)
    kib = slow[CHATBRIDGE]["rss_kib_per_open_stream"]
    slower = slower_than_naive(results)
    return [
        {"target": "CPU per 50-chunk stream <= 0.5x the naive relay's", "holds": cpu <= 0.5,
         "measured": f"{seq[CHATBRIDGE]['cpu_ms_per_stream']:.2f} ms vs {seq[NAIVE]['cpu_ms_per_stream']:.2f} ms"
                     f" = {cpu:.2f}x"},
        {"target": "added TTFT p50 <= 0.5x the naive relay's and <= 1 ms",
         "holds": added[CHATBRIDGE] <= min(0.5 * added[NAIVE], 1.0),
         "measured": f"+{added[CHATBRIDGE]:.2f} ms vs +{added[NAIVE]:.2f} ms"},
        {"target": "200 streams, 20 ms: total p50 <= 1.1x direct", "holds": bool(hot) and total <= 1.1,
         "measured": f"{cb.get('total_p50_ms')} ms vs {direct.get('total_p50_ms')} ms = {total:.2f}x"},
        {"target": "200 streams, 20 ms: TTFT p99 <= direct's + 50 ms", "holds": bool(hot) and late <= 50,
         "measured": f"{cb.get('ttft_p99_ms')} ms vs {direct.get('ttft_p99_ms')} ms = +{late:.0f} ms"},
        {"target": f"{slow[CHATBRIDGE]['n']} open streams: zero errors and <= 50 KiB worker RSS each",
         "holds": slow[CHATBRIDGE]["errors"] == 0 and kib <= 50,
         "measured": f"{slow[CHATBRIDGE]['errors']} errors, {kib} KiB per open stream"},
        {"target": "no path slower than the naive relay in any workload", "holds": not slower,
         "measured": "; ".join(slower) or "none slower"},
    ]
