"""Draw the weight and loss curves of a ``benchmarks/balancing.py`` log to one PNG.

One row per method; per problem, a column of task weights per step and a column of test loss divided by
the task's optimum (log scale, with the 10 % line).

    .venv/bin/python benchmarks/balancing_plot.py runs/balancing/log.json runs/balancing/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from medmtl.io.atomic import atomic_path


def plot(log: dict, dest: Path) -> None:
    problems = log["problems"]
    methods = list(next(iter(problems.values()))["runs"])
    fig, axes = plt.subplots(
        len(methods),
        2 * len(problems),
        figsize=(4.2 * 2 * len(problems), 1.9 * len(methods)),
        sharex="col",
        squeeze=False,
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for p, (pname, prob) in enumerate(problems.items()):
        tasks = prob["tasks"]
        for m, method in enumerate(methods):
            run = prob["runs"][method]
            ax_w, ax_l = axes[m, 2 * p], axes[m, 2 * p + 1]
            steps = range(1, len(run["weights"]) + 1)
            for k, task in enumerate(tasks):
                colour = colours[k % len(colours)]
                ax_w.plot(steps, [w[task] for w in run["weights"]], color=colour, lw=1, label=task)
                ax_l.plot(
                    run["eval_steps"],
                    [t[task] / prob["optimum"][task] for t in run["test"]],
                    color=colour,
                    lw=1,
                    label=task,
                )
            ax_w.set_yscale("log")
            ax_l.set_yscale("log")
            ax_l.axhline(1.1, color="grey", lw=0.8, ls="--")
            ax_w.set_ylabel(method, fontsize=8)
            for ax in (ax_w, ax_l):
                ax.tick_params(labelsize=7)
                ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            if m == 0:
                ax_w.set_title(f"{pname}: task weights", fontsize=9)
                ax_l.set_title(f"{pname}: test loss / optimum", fontsize=9)
                ax_w.legend(fontsize=7, loc="best")
            if m == len(methods) - 1:
                ax_w.set_xlabel("step", fontsize=8)
                ax_l.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path, help="JSON log written by benchmarks/balancing.py")
    parser.add_argument("png", type=Path, help="output image")
    args = parser.parse_args(argv)
    plot(json.loads(args.log.read_text()), args.png)
    print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
