"""
LOREM
=====

LOREM (Learning Long-Range Representations with Equivariant Messages,
arXiv:2507.19382) is an equivariant machine-learning interatomic potential with a
learned long-range part. A short-range equivariant network (spherical features up to
degree ``max_degree`` built from a Bernstein radial basis and spherical harmonics) predicts
latent scalar and equivariant charges (``1 + (max_degree_lr + 1)^2`` channels). Their
Coulomb potentials, from an Ewald or PME sum for periodic structures and a direct
all-pairs sum for molecules (torch-pme, full interaction, no exclusion radius), are mixed
back into the atomic features, and the total energy is the sum of the short-range and
long-range atomic energies. Forces and stresses come from automatic differentiation.

This architecture is provided by the ``lorem_mta`` package (not by metatrain itself) and
is registered with ``mtt`` under the name ``experimental.lorem_mta`` when ``lorem_mta`` is
installed (``pip install lorem-mta``; the ``lorem-mtt`` command does the same for
interpreters started with ``python -S``).

{{SECTION_INSTALLATION}}

Targets
-------

LOREM learns exactly one energy-like target per model: a per-structure scalar with
``quantity: energy`` (for example ``energy`` or ``mtt::U0``), optionally with forces
(position gradients) and stress or virial (strain gradients). Periodic and
non-periodic structures can be mixed in one dataset; structures periodic in only one or
two directions are rejected.

Training follows the recipe of the paper: a composition (per-species) energy baseline,
a per-atom energy and a force loss (mean squared errors; metatrain's default ``"mse"``
loss puts a weight of 1 on both, which is the paper's 0.5/0.5 up to an overall factor
that Adam does not see), Adam with a constant learning rate for ``decay_start_epoch``
epochs followed by a linear decay to ``final_learning_rate``, and the best model on
the validation set kept.

Additional outputs
------------------

In addition to the energy target, the model can output

- ``feature``: the final scalar atomic features (``num_features`` per atom, or summed
  per structure);
- ``lorem::charges``: the learned latent charges (with ``lr: true``), as an equivariant
  TensorMap with one block per ``(o3_lambda, o3_sigma)``: the ``o3_lambda = 0`` block has
  two properties, ``channel`` 0 (the scalar MLP charge) and 1 (the ``l = 0`` spherical
  charge); every ``o3_lambda = l >= 1`` block has one property, labelled
  ``channel = 1 + l**2`` (2 for ``l = 1``, 5 for ``l = 2``: the position of its first
  ``o3_mu`` component in the flat stack of ``1 + (max_degree_lr + 1)**2`` charges);
- ``lorem::potentials``: the Coulomb potentials of those charges, same layout;
- ``lorem::dipole``: the dipole moment of molecules (with ``lr: true``), a
  per-structure Cartesian vector in ``e*angstrom``, see "Dipole moments" below.

Last-layer features (``mtt::aux::energy_last_layer_features``, used by LLPR) are not
available yet.

Total charge
------------

With ``total_charge: true`` (and ``lr: true``) the model conditions on the total charge
of every structure, read from the ``charge`` entry of the ``extra_data`` section of
the dataset options (see ``total_charge`` below). Training stops with an error if the
model needs the charge and a dataset does not provide it. Exported models request
metatomic's per-system ``charge`` input; structures without it are treated as neutral,
with a warning (once per model) naming ``atoms.info["charge"]`` (ASE) and ``extra_data``
(``mtt eval``).

Dipole moments
--------------

A dataset can hold a second target next to the energy: the dipole moment of every
structure, a per-structure Cartesian vector (``type: {cartesian: {rank: 1}}``, e.g.
``mtt::dipole``, without gradients). It is the dipole of the scalar latent charges
about the geometric centre ``c`` of the molecule, ``sum_i q_i (r_i - c)``, plus, with
``atomic_dipoles: true``, learned atomic dipoles; it has its own weight in the loss and is
never scaled by the scaler. Only molecules (non-periodic structures) are accepted: the
dipole of a periodic cell is not defined.

{{SECTION_DEFAULT_HYPERS}}

{{SECTION_MODEL_HYPERS}}

{{SECTION_TRAINER_HYPERS}}

with the following definition for fine-tuning:

.. autoclass:: {{architecture_path}}.documentation.FinetuneHypers
    :members:
    :undoc-members:

{{SECTION_REFERENCES}}
"""

from typing import Literal, Optional

from metatrain.composition.documentation import FixedCompositionWeights
from metatrain.scaler.documentation import FixedScalerWeights
from metatrain.utils.loss import LossSpecification
from typing_extensions import NotRequired, TypedDict


class ModelHypers(TypedDict):
    """Hyperparameters of the LOREM model (names and defaults of lorem-jax 0.2.0, plus
    ``norm_smoothing`` and ``neutral_charges``, which fix its energy surface).
    """

    cutoff: float = 5.0
    """Radius (in the length unit of the dataset) of the local environments: the
    short-range features only see neighbours within it, and it also sets the Ewald
    parameters (smearing ``cutoff / 4``, wavelength ``cutoff / 8``). 5 Å is the paper's
    value for every dataset; 3-4 Å still works when the long-range block is on (the
    paper's cumulene study), and makes the model cheaper, roughly in proportion to the
    number of neighbours (``cutoff**3``)."""

    max_degree: int = 6
    """Largest degree ``L`` of the spherical features. Higher degrees resolve finer
    angular structure; the cost of the tensor products grows steeply, roughly as
    ``L**3`` (the paper uses 6; 2-4 are good for quick experiments and small data)."""

    max_degree_lr: int = 2
    """Largest degree of the equivariant latent charges. 2 is needed to resolve
    orientation-dependent long-range effects (the cumulene rotor of the paper); 1 gives
    dipole-like charges only, and 0 reduces LOREM to scalar latent Ewald message
    passing. The Coulomb sum handles ``1 + (max_degree_lr + 1)**2`` charge channels, so
    its cost grows quadratically with this value."""

    num_features: int = 128
    """Size ``d`` of the scalar atomic features and of the hidden layers of the
    multi-layer perceptrons. The main capacity knob: the cost of the dense layers grows
    as ``d**2``. 32-64 is enough for small datasets."""

    num_radial: int = 32
    """Number of Bernstein radial basis functions. Fewer functions (8-16) make the
    radial embedding cheaper at a small loss of radial resolution."""

    num_species: int = 8
    """Width of the learned chemical-species embedding. Increase it for datasets with
    many elements; it has a negligible cost."""

    num_spherical_features: int = 8
    """Number ``s`` of spherical channels per degree. Together with ``max_degree`` this
    sets the size of the equivariant features, ``(max_degree + 1)**2 * s`` per atom;
    memory and time grow linearly with it (the paper uses 8, its README example 4)."""

    num_message_passing: int = 0
    """Number of short-range message-passing steps after the initial step. 0 is the
    paper's model, whose receptive field is one cutoff sphere plus the long-range
    block; each step adds one cutoff to the local receptive field and costs about as
    much as the initial step."""

    equivariant_message_passing: bool = True
    """Whether the message-passing steps exchange equivariant (not only scalar)
    messages. Irrelevant with ``num_message_passing = 0``; switching it off makes the
    steps cheaper and less expressive."""

    initialize_node_features: bool = True
    """Whether the scalar atomic features start from the species embedding (every
    paper model does). Leave it on unless you reproduce a lorem-jax model trained
    without it."""

    lr: bool = True
    """Whether to include the long-range block (latent charges, Coulomb potentials and
    their mixing into the features). Switching it off gives a purely local model with a
    finite interaction range (then LAMMPS can run it on several MPI ranks), and removes
    the ``lorem::charges`` and ``lorem::potentials`` outputs."""

    total_charge: bool = False
    """Whether the model conditions on the total charge of every structure (charged
    molecules such as the SN2 reaction or Ag3+/Ag3- clusters). The scalar latent
    charges of each structure are shifted by the same amount so that they add up to its
    total charge (charge equilibration with a uniform correction); the structure's
    Coulomb potentials, and so its energy, then depend on the charge, while the
    geometry alone cannot tell two charge states apart. Needs ``lr: true``; adds no
    parameters and a negligible cost. Not a lorem-jax option.

    Training needs the charge of every structure as ``extra_data`` named ``charge``
    in the dataset section of the options (``key`` is the ``info`` entry of the
    extended XYZ file)::

        training_set:
          systems: data.xyz
          targets:
            energy:
              key: energy
          extra_data:
            charge:
              key: total_charge
              unit: e

    The exported model requests metatomic's per-system ``charge`` input: ASE
    (``MetatomicCalculator``) reads it from ``atoms.info["charge"]``, ``mtt eval`` from
    the same ``extra_data`` section; structures without it (engines that do not provide
    it, such as LAMMPS) are neutral (total charge 0)."""

    bec: bool = False
    """Whether the model also predicts Born effective charges (atomic polar tensors,
    lorem-jax's ``LoremBEC``): one equivariant tensor head per stage (initial step,
    every message-passing step and the long-range block) turns the spherical features
    into a ``3 x 3`` tensor per atom, and the per-structure mean is subtracted (acoustic
    sum rule). The dataset then needs, next to the energy target, one per-atom
    Cartesian rank-2 target (any name, e.g. ``mtt::apt``)::

        targets:
          energy:
            key: energy
          mtt::apt:
            key: apt
            type:
              cartesian:
                rank: 2
            per_atom: true
            unit: e

    Component ``[a, b]`` (row-major in the ``.xyz`` file) is the force on the atom
    along ``a`` per unit field along ``b``. lorem-jax's ``LoremBEC`` also switches
    ``equivariant_message_passing`` and ``initialize_node_features`` off; set them
    explicitly to reproduce it. Each head adds about ``(max_degree + 1) * (s + 2
    num_features) * num_features`` parameters."""
    atomic_dipoles: bool = False
    """Whether the dipole output adds learned atomic dipoles, a linear combination of the
    ``l = 1`` spherical features of every atom, to the dipole of the point charges. Use
    it when training on dipoles of molecules whose polarisation point charges on the
    nuclei do not capture (lone pairs, conjugated groups). Needs ``lr: true`` and
    ``max_degree >= 1``; adds ``num_spherical_features`` parameters. Without a dipole
    target it has no effect on the energy. Not a lorem-jax option."""

    norm_smoothing: float = 0.1
    """Smoothing ``epsilon`` of the norms that turn the spherical features into
    invariants: ``sqrt(|S_l|**2 + epsilon**2 M**2) - epsilon M``, with ``M`` the norm of
    the whole feature channel (scale-free). The exact norm (``0``, lorem-jax) is a cone
    at zero: around every atom whose environment is centrosymmetric (CO2's carbon, the
    centre of cumulene, every atom of rock-salt, fcc or bcc crystals) the energy has a
    cusp ``E0 + c|h|`` and the force is undefined, which spoils phonons by finite
    displacements, NVE near equilibrium and force training on symmetric frames. With
    ``epsilon > 0`` the energy is infinitely differentiable there and the blocks that
    vanish by symmetry enter quadratically over displacements up to about ``epsilon``
    times a bond length. Adds no parameters and about 2% to a training step of a small
    model (a few element-wise operations per norm). Models converted from lorem-jax use
    ``0``."""

    neutral_charges: bool = True
    """Remove the per-structure mean of every latent charge channel (the scalar charge
    and each ``(l, m)`` component of the equivariant charges; with ``total_charge`` the
    scalar charges then add up to the given total charge). Without it the latent charges
    of a neutral molecule have a net charge, the Ewald sum adds a neutralising
    background, and the energy of a molecule in a periodic box converges to its isolated
    value only like ``1/L`` (and a slab's energy grows with the vacuum); with it, like a
    dipole, ``1/L**3``. The projection commutes with rotations and adds no parameters.
    Models converted from lorem-jax use ``false``."""

    long_range_method: Literal["auto", "ewald", "pme", "direct"] = "auto"
    """How the Coulomb potentials of periodic structures are computed. ``"auto"`` (the
    default) estimates, for every structure, the time and memory of each method and takes
    the fastest that fits the memory: PME for dense cells from ~64 atoms on, ``"direct"``
    for molecules and clusters in large boxes. ``"ewald"`` is the exact lorem-jax
    reference (what the paper trains with; time and memory grow as the number of
    k-vectors times the number of atoms, i.e. with the volume times the atoms);
    ``"pme"`` is particle-mesh Ewald (about linear scaling, relative error ~1e-5);
    ``"direct"`` sums explicit pairs of atoms and periodic images with a wider Gaussian
    smearing (cheap for a few atoms in a big box, quadratic in the atoms). Molecules
    (``pbc=False``) always use the all-pairs sum. All methods evaluate the same
    potentials, so this can be changed after training without retraining: ``lorem-mta
    export MODEL -o NEW.pt --long-range-method ewald``, or in the options of a
    fine-tuning run."""

    long_range_accuracy: Optional[float] = None
    """Target accuracy of the long-range sum, between 0 and 1 (about the relative error
    of the potentials). ``None`` keeps lorem-jax's reference k-vectors with ``"ewald"``
    (wavelength ``cutoff / 8``, converged to ~1e-9) and means 1e-5 for the other methods;
    tighter values make ``"ewald"`` and ``"direct"`` more expensive, and ``"auto"`` only
    considers PME for 1e-5 or looser. Can be changed after training like
    ``long_range_method`` (``--long-range-accuracy``)."""

    cutoff_fn: Literal["cosine_cutoff"] = "cosine_cutoff"
    """Smooth cutoff function of the radial basis (the only choice in LOREM)."""

    radial_basis: Literal["basic_bernstein"] = "basic_bernstein"
    """Radial basis (the only choice in LOREM): Bernstein polynomials of the scaled
    distance."""


class FinetuneHypers(TypedDict):
    """Start training from the weights of an existing LOREM checkpoint."""

    read_from: Optional[str] = None
    """Path to a ``.ckpt`` file written by ``mtt train`` for this architecture; its best
    model is loaded and all parameters are trained (with a new optimizer, a new
    learning-rate schedule and a composition baseline refitted on the new data). The
    model hyperparameters must be the same as in the checkpoint. ``None`` trains from
    scratch."""

    method: Literal["full"] = "full"
    """Fine-tuning method; only ``"full"`` (all parameters trainable) is available."""


class TrainerHypers(TypedDict):
    """Hyperparameters to train LOREM models."""

    distributed: NotRequired[bool]
    """Whether to use distributed training. When not set, distributed training is
    enabled automatically when running under more than one SLURM task. Setting this
    option explicitly is deprecated (as in metatrain's own architectures). One process
    per task: with ``device: cuda`` each drives one GPU (NCCL), with ``device: cpu`` the
    processes communicate through gloo. Each process holds a copy of the model and
    works on ``batch_size`` structures per step, so the effective batch size is
    ``batch_size`` times the number of processes."""

    distributed_port: int = 39591
    """Port for the communication between processes in distributed training."""

    batch_size: int = 8
    """Number of structures per batch (metatrain's usual default; the paper used 32
    for most datasets). Larger batches make an epoch faster on a GPU but need more
    memory and take fewer optimizer steps per epoch. Must not exceed the number of
    training structures."""

    num_epochs: int = 2000
    """Number of epochs (lorem-jax's default; the paper used 500-8000 depending on the
    dataset). The ``linear_decay`` and ``cosine`` schedules reach
    ``final_learning_rate`` at the last epoch, so this also sets their time scale."""

    learning_rate: float = 1e-3
    """Initial (peak) learning rate. The paper uses 1e-3 for small sets and 1e-4 to 4e-4
    for the larger ones (the default is the paper's, for its full-size model); the
    recommended recipes for small models on small sets use 5e-3 (see "Recommended
    recipes" in the training documentation)."""

    final_learning_rate: float = 1e-6
    """Learning rate reached at the end of training by the ``linear_decay`` and
    ``cosine`` schedules."""

    scheduler: Literal["linear_decay", "cosine", "constant"] = "linear_decay"
    """Learning-rate schedule, updated after every optimizer step:

    - ``"linear_decay"``: the paper's schedule; constant for ``decay_start_epoch`` epochs,
      then linear decay to ``final_learning_rate`` at the last epoch;
    - ``"cosine"``: linear warm-up over ``warmup_fraction`` of the steps, then cosine
      decay to ``final_learning_rate`` (the schedule of metatrain's SOAP-BPNN);
    - ``"constant"``: ``learning_rate`` throughout.
    """

    decay_start_epoch: int = 10
    """Number of epochs at constant learning rate before the ``linear_decay`` schedule
    starts to decay (10 in the paper; the recommended recipes use a third of
    ``num_epochs``). Must be smaller than ``num_epochs`` for the decay to happen: the log
    warns otherwise."""

    warmup_fraction: float = 0.01
    """Fraction of the training steps used for the linear warm-up of the ``cosine``
    schedule (ignored by the other schedules)."""

    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimizer: Adam (the paper's choice) or AdamW (decoupled weight decay)."""

    weight_decay: float = 0.0
    """Weight decay. With ``adam`` it is an L2 penalty added to the gradients, with
    ``adamw`` a decoupled decay of the weights. 0 (no decay) in the paper."""

    grad_clip_norm: Optional[float] = None
    """If set, gradients are clipped to this total norm before every optimizer step.
    The paper does not clip; 1.0-10.0 can stabilise training with large learning
    rates or noisy labels."""

    log_interval: int = 5
    """Interval (in epochs) between two lines of training and validation metrics (after
    epochs ``log_interval``, ``2 * log_interval``, ..., counted from 1, and after the first
    and the last epoch). The validation set is evaluated every epoch regardless, for the
    best-model selection, and the errors of the best epoch are logged at the end."""

    checkpoint_interval: int = 100
    """Interval (in epochs) between two intermediate checkpoints ``model_<epoch>.ckpt``
    in the output directory (``<epoch>`` counted from 1: ``model_100.ckpt`` is written
    after the 100th epoch)."""

    atomic_baseline: FixedCompositionWeights | str = {}
    """The per-species baseline of the target (a composition model).

    By default a linear model on the composition of the structures is fitted by least
    squares on the training set (as in the paper), subtracted from the targets during
    training and added back to the predictions. This option fixes it instead, with the
    same format as metatrain's other architectures:

    - a dictionary from target name to either one baseline for all atomic types or a
      dictionary from atomic number to baseline, e.g. ``{"energy": {1: -13.6, 8:
      -2041.0}}`` (``{"energy": 0.0}`` switches the baseline off);
    - a path to the ``.ckpt`` file of a trained composition model.
    """

    scale_targets: bool = False
    """Whether to divide the targets by their (per-atom, uncentered) standard deviation
    during training, with metatrain's ``Scaler``. Off by default because the paper does
    not scale targets (``scale_by_variance: False``); switching it on can help when the
    residual energies after the baseline are much larger or smaller than 1 in the
    target's unit."""

    fixed_scaling_weights: FixedScalerWeights | str = {}
    """Fixed scales for the targets when ``scale_targets`` is on: a dictionary from
    target name to a scale (or to a dictionary from atomic number to scale), or the path
    to a scaler checkpoint (then ``atomic_baseline`` must be a composition checkpoint
    too). Targets not listed get a scale computed from the data."""

    per_structure_targets: list[str] = []
    """Targets whose loss and errors are computed per structure, not per atom. By
    default energies are divided by the number of atoms, as in the paper."""

    num_workers: Optional[int] = None
    """Number of worker processes for data loading; chosen automatically if not set."""

    time_budget: Optional[float] = None
    """Stop training when this many seconds are used up (``time_budget_clock``), even
    before ``num_epochs``. The clock starts with the trainer (fitting the baseline and
    preparing the data count); after every epoch, training stops if one more epoch, as
    long as the last one, would overrun the budget, and the log says so. The
    learning-rate schedule then spans the epochs that fit in the budget instead of
    ``num_epochs`` (re-estimated after every epoch from the mean epoch time; the first
    epoch, which may include a compilation, is left out once others ended), so that
    ``linear_decay`` and ``cosine`` reach ``final_learning_rate`` at the end of the
    budget (the linear decay starts at ``decay_start_epoch`` or half-way through the
    epochs that fit, whichever comes first). The model with the best validation metric among the
    epochs that ran is exported, as usual. Saving, exporting and evaluating the model
    at the end of ``mtt train`` come on top of the budget."""

    time_budget_clock: Literal["wall", "cpu"] = "wall"
    """The clock of ``time_budget``: ``"wall"`` for elapsed real time (a job's time
    limit on a cluster), ``"cpu"`` for the CPU time of the training process (all of its
    threads; data-loader worker processes are not counted), which is what a shared
    machine charges and what stays comparable when other jobs run on the same cores."""

    cache_neighbor_lists: bool = True
    """Compute the neighbour lists of all structures once, before the first epoch, and
    keep them in memory with the targets (composition baseline and scale removed),
    instead of recomputing them for every batch of every epoch. The results are the
    same; it saves a large part of an epoch for small models and costs memory of the
    order of the neighbour lists (30-45 bytes per pair, about 2 kB per atom of a dense
    solid at a 5 Å cutoff). Set it to ``false`` for data sets that barely fit in
    memory. Data sets read from disk on demand (``.zip`` or memory-mapped folders) are
    never cached."""

    compile: bool = False
    """Run the training and validation batches through one function compiled with
    ``torch.compile`` (:py:mod:`lorem_mta.architecture.compiled`): energies and forces
    and their parameter gradients without the dispatch cost of thousands of small
    operators per step, which dominates small models on small structures (3-4x faster
    steps for a small model on 13-atom molecules). Same numbers up to float round-off.
    The first batches compile (minutes on a small CPU, seconds when torch's on-disk
    cache has the kernels from an earlier run); batches the compiled function does not
    support (periodic structures with the long-range block, stress or virial targets,
    Born effective charges, other targets) run in eager mode, and the log says so."""

    log_mae: bool = False
    """Log mean absolute errors alongside root mean squared errors."""

    log_separate_blocks: bool = False
    """Log errors of each block of the targets separately."""

    best_model_metric: Literal["rmse_prod", "mae_prod", "loss"] = "rmse_prod"
    """Validation metric that selects the best model, which is the one exported. The
    paper keeps the highest summed R2 of energies and forces; ``rmse_prod`` (product of
    the energy and force RMSEs) is the closest metatrain equivalent."""

    loss: str | dict[str, LossSpecification | str] = "mse"
    """The loss. The default ``"mse"`` gives, for an energy target with forces, a mean
    squared error on the energy per atom and one on the force components, with weight
    1 each (stress or virial get a third term when the dataset has them). To write the
    paper's weights explicitly, use for a target called ``energy``::

        loss:
          energy:
            type: mse
            weight: 0.5
            forces:
              weight: 0.5

    See metatrain's documentation on loss functions for all options."""

    max_atoms_per_batch: Optional[int] = None
    """If set, batches are filled greedily with structures until they would exceed this
    number of atoms (``batch_size`` is then only used to fit the baseline and the
    scaler). Useful when the structure sizes vary a lot."""

    min_atoms_per_batch: int = 0
    """With ``max_atoms_per_batch``, batches with fewer atoms than this are dropped."""

    finetune: FinetuneHypers = {"read_from": None, "method": "full"}
    """Fine-tuning from an existing checkpoint, see :class:`FinetuneHypers`."""
