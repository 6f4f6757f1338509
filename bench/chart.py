"""The benchmark's PNG chart (matplotlib, Agg backend): one panel per headline figure."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

MAIN = ("direct", "naive relay", "ChatBridge", "ChatBridge Redis")
COLOURS = {"direct": "#7f7f7f", "naive relay": "#1f77b4", "ChatBridge": "#d62728", "ChatBridge Redis": "#ff9896"}


def bars(axis, groups, value, title, unit):
    """Grouped bars: one group per label in groups, one bar per main path; value(group, path) or None."""
    width = 0.8 / len(MAIN)
    for i, name in enumerate(MAIN):
        positions = [g + (i - (len(MAIN) - 1) / 2) * width for g in range(len(groups))]
        shown = [(p, value(group, name)) for p, group in zip(positions, groups, strict=True)]
        shown = [(p, v) for p, v in shown if v is not None]
        if shown:
            axis.bar(*zip(*shown, strict=True), width, label=name, color=COLOURS[name])
    axis.set_xticks(range(len(groups)), [group.replace(", ", "\n") for group in groups], fontsize=7)
    axis.set_title(title, fontsize=9)
    axis.set_ylabel(unit, fontsize=8)
    axis.tick_params(axis="y", labelsize=7)


def picker(rows_of, metric):
    """A value(group, path) reading metric from rows_of(group)[path]."""
    return lambda group, name: (rows_of(group).get(name) or {}).get(metric)


def draw(results, path):
    """Write the chart of results to path."""
    work, machine, sizes = results["workloads"], results["machine"], results["sizes"]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    seq, concurrent = work["sequential"], work["concurrent"]
    metrics = {"TTFT p50": "ttft_p50_ms", "total p50": "total_p50_ms"}
    bars(axes[0][0], list(metrics), lambda g, name: (seq.get(name) or {}).get(metrics[g]),
         "(1) one stream at a time, 50 chunks", "ms")
    bars(axes[0][1], ["CPU per stream"], picker(lambda g: seq, "cpu_ms_per_stream"),
         "(1) service CPU per stream (direct: the fake's)", "ms")
    bars(axes[0][2], list(concurrent), picker(concurrent.get, "total_p50_ms"), "(2) concurrent: total p50", "ms")
    bars(axes[1][0], list(concurrent), picker(concurrent.get, "ttft_p99_ms"), "(2) concurrent: TTFT p99", "ms")
    bars(axes[1][1], ["RSS per open stream"], picker(lambda g: work["slow"], "rss_kib_per_open_stream"),
         f"(3) {sizes['slow_streams']} slow streams: worker RSS", "KiB")
    bars(axes[1][2], ["non-streaming"], picker(lambda g: work["whole"], "per_second"),
         f"(4) {sizes['whole_concurrency']} at a time", "requests/s")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"ChatBridge benchmark, {results['date']}, commit {results['commit']}, {results['mode']} run; "
                    f"{machine['nproc']} cores, {machine['cpu_model']}, Python {machine['python']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
