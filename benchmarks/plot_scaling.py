"""Plot the CPU scaling measured by inference.py (benchmarks/results/inference-cpu.txt).

Usage: python benchmarks/plot_scaling.py [results.txt] [output.png]
"""

import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def parse(path):
    """Collect (n_atoms, seconds) per column name from the tables in ``path``."""
    series, header = {}, None
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == "N":
            header = cells
            continue
        if header is None or not re.fullmatch(r"\d+", cells[0]):
            continue
        for name, value in zip(header[1:], cells[1:], strict=False):
            if name.endswith("(s)") and re.fullmatch(r"[0-9.]+", value):
                series.setdefault(name[:-4], {})[int(cells[0])] = float(value)
    return series


LABELS = {
    "ewald-ref": "lorem_mta, Ewald (reference settings)",
    "ewald-1e-5": "lorem_mta, Ewald (accuracy 1e-5)",
    "pme": "lorem_mta, PME",
    "no-lr": "lorem_mta, no long range",
    "pet": "PET (metatrain)",
    "pet-lr": "PET with long range (metatrain)",
    "jax": "lorem-jax 0.2.0",
    "jax no-lr": "lorem-jax 0.2.0, no long range",
}


def plot_times(series, axis):
    """Time per evaluation against the number of atoms, log-log, with a linear guide."""
    for name, points in series.items():
        n = sorted(points)
        style = "--" if name.startswith("jax") else "-"
        axis.loglog(n, [points[k] for k in n], style, marker="o", label=LABELS.get(name, name))
    n = [64, 32768]
    axis.loglog(n, [0.7e-3 * k for k in n], ":", color="gray", label="linear")
    axis.set_xlabel("atoms (rattled rock-salt NaCl, periodic)")
    axis.set_ylabel("energy + forces, seconds (1 CPU thread)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, which="both")


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/inference-cpu.txt"
    output = sys.argv[2] if len(sys.argv) > 2 else "docs/_static/scaling-cpu.png"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plot_times(parse(source), ax)
    fig.tight_layout()
    fig.savefig(output, dpi=150)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
