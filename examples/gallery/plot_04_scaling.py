"""
Scaling with the number of atoms
================================

How the cost of an energy + forces evaluation grows with the size of a periodic cell,
for the paper's model (1 021 198 parameters, float32, one CPU thread), with the
reference Ewald settings, a looser Ewald accuracy, particle-mesh Ewald (PME) and
without the long-range block, next to lorem-jax 0.2.0 on the same structures.

This example does **not** run the benchmark (that takes hours): it plots the committed
results of ``benchmarks/inference.py`` (``benchmarks/results/inference-cpu.txt``),
parsed with the helper of ``benchmarks/plot_scaling.py``. See
:doc:`/benchmarks-performance` for the set-up and the discussion.
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from plot_scaling import LABELS, parse, plot_times  # noqa: E402  (benchmarks/)

results = ROOT / "benchmarks" / "results" / "inference-cpu.txt"
series = parse(results)
for name, points in series.items():
    print(f"{name:12s}", "  ".join(f"{n}: {t:.3g} s" for n, t in sorted(points.items())))

# %%
# Time per evaluation
# -------------------
#
# Dashed: lorem-jax. The dotted line is linear scaling. PME keeps the full model
# (long range included) close to linear and faster than lorem-jax *without* its
# long-range block; the Ewald sum grows faster than linearly with the number of atoms.

figure, axis = plt.subplots(figsize=(6.5, 4.5))
plot_times(series, axis)
figure.tight_layout()

# %%
# Speed-up over lorem-jax
# -----------------------
#
# lorem-jax always runs its plain Ewald sum with the reference settings: the
# "reference" curve compares the same algorithm with the same k-vectors; the other two
# compare lorem_mta's accuracy-driven Ewald sum and PME, different settings and a
# different algorithm, against it.

common = sorted(set(series["jax"]) & set(series["ewald-ref"]))
figure, axis = plt.subplots(figsize=(6.5, 3.5))
for name in ["ewald-ref", "ewald-1e-5", "pme"]:
    axis.plot(
        common,
        [series["jax"][n] / series[name][n] for n in common],
        "o-",
        label=LABELS[name],
    )
axis.set_xscale("log")
axis.set_xlabel("atoms")
axis.set_ylabel("lorem-jax (reference Ewald) time /\nlorem_mta time")
axis.grid(alpha=0.3, which="both")
axis.legend(fontsize=8)
figure.tight_layout()
