"""
Training a model with ``mtt train``
===================================

LOREM is a metatrain architecture, ``experimental.lorem_mta``, registered with ``mtt``
when ``lorem_mta`` is installed. This example trains a small model on 13 cumulene
(C9H4) structures with the options of ``examples/train/``, exports it, evaluates it on
held-out structures and draws a parity plot.

It reuses the helpers of ``examples/train/train.py`` (which does the same with 30
epochs). Here the model trains for **20 epochs only** (about 15 seconds on one CPU
core), so that the example runs in about a minute: the point is the workflow, not the
accuracy.
"""

# %%
# The training options
# --------------------
#
# ``options.yaml`` selects the architecture, its hyperparameters (see
# :doc:`/hyperparameters`) and the training, validation and test files.

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
EXAMPLES = HERE.parent
sys.path.insert(0, str(EXAMPLES / "train"))

import train  # noqa: E402  (examples/train/train.py)

print((EXAMPLES / "train" / "options.yaml").read_text())

# %%
# Prepare a working folder
# ------------------------
#
# ``split_dataset`` splits the 21 structures of ``cumulene.xyz`` into 13 training, 3
# validation and 5 test structures (fixed seed) and writes them as extended XYZ files.

output = Path("outputs") / "gallery-train"
if output.exists():
    shutil.rmtree(output)
output.mkdir(parents=True)
train.split_dataset(output)
shutil.copy(EXAMPLES / "train" / "options.yaml", output / "options.yaml")
print(sorted(p.name for p in output.iterdir()))

# %%
# Train and export
# ----------------
#
# ``mtt train options.yaml`` writes ``model.ckpt`` (the checkpoint, to restart or
# fine-tune from) and ``model.pt`` (the exported model). ``-r`` overrides one option on
# the command line; here the number of epochs. ``mtt export`` turns a checkpoint into an
# exported model (``mtt train`` already did it once).

train.mtt("train", "options.yaml", "-r", "architecture.training.num_epochs=20", cwd=output)
train.mtt("export", "model.ckpt", "-o", "exported.pt", cwd=output)

# %%
# ``mtt train`` logs the training and validation errors every ``log_interval`` epochs
# (to the terminal and to ``outputs/<date>/<time>/train.log``):

log = next(output.glob("outputs/*/*/train.log"))
for line in log.read_text().splitlines():
    if "Epoch" in line:
        print(line.split(" - ", 1)[1].replace(" | ", "\n    "))

# %%
# Evaluate and plot
# -----------------
#
# The exported model runs in ASE through metatomic-ase's ``MetatomicCalculator``, as in
# any simulation. After 20 epochs on 13 structures the forces follow the reference
# roughly and the energies are still mostly the composition baseline: a real dataset
# (thousands of structures) and a few hundred epochs or more are needed for a useful
# model.

results = {split: train.evaluate(output, split) for split in ["train", "test"]}
train.parity_plot(results, output / "parity.png")
reference, predicted = results["test"][2], results["test"][3]
print(f"test force RMSE: {np.sqrt(np.mean((predicted - reference) ** 2)):.3f} eV/Å")
