/* ----------------------------------------------------------------------
   pair_style lorem: LOREM (lorem_mta) models on any number of MPI ranks,
   with the exact long-range (Ewald/PME) energy, forces and virial.

   Part of lorem_mta's LAMMPS code, distributed under the GNU General Public
   License version 2 (see lammps/LICENSE), like LAMMPS itself.

   The model file holds the stages of lorem_mta.stages.LoremStages
   (lorem_mta.stages.export_stages). Every step:

   1. every rank runs the short-range stage on its atoms and ghosts (a shell of
      (message-passing steps + 1) * cutoff): short-range energies, features and
      latent charges; those of its own atoms are exact, and forward communication
      gives the ghosts the charges of their owners;
   2. distributed long range (Ewald and PME): every rank sums what the
      potentials need from its own atoms (charge sums for the neutral mean, then
      the PME mesh or the Ewald structure factors, the total charge and a slab's
      moments); MPI_Allreduce adds them up; every rank applies the filter (FFTs
      of the whole mesh, or G(k)) and evaluates the reciprocal potentials at its
      own atoms, plus the real-space sum over the pairs it owns (neighbours may
      be ghosts), and mixes them into the features of its own atoms;
   3. backward, level by level: the gradient of the rank's energy with respect
      to every summed quantity is summed over the ranks (MPI_Allreduce) and fed
      back through the rank's own contribution to it; the gradients of the ghost
      charges go to their owners (reverse communication); one backward pass of
      the short-range stage then takes the rank's energy and the gradients of
      its own atoms' charges. Ghost forces go back to their owners with LAMMPS'
      reverse communication (newton on).
   The "direct" method (few atoms in a large box) gathers the charges and
   positions of all atoms on every rank instead (long_range_gathered).
   Virial: -(x^T dE/dx + h^T dE/dh) over local and ghost atoms x and the cell
   h, each rank with its own energy; LAMMPS sums the ranks.
------------------------------------------------------------------------- */

#include "pair_lorem.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neigh_request.h"
#include "neighbor.h"
#include "update.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

using namespace LAMMPS_NS;

namespace LAMMPS_NS {
struct PairLoremModel {
  torch::jit::Module module;
  torch::Dtype dtype = torch::kFloat64;
};

// tensors of one compute() shared by the long-range paths
struct PairLoremStep {
  torch::Tensor positions;          // (nall, 3) leaf
  torch::Tensor cell;               // (3, 3) leaf; zero third row for a slab
  torch::Tensor geometry;           // slab: mean position and thickness of all atoms
  torch::Tensor centers, neighbors; // pairs of the own atoms within the cutoff
  torch::Tensor nodes_scalar, nodes_spherical, charges;    // of the short-range stage
  torch::Tensor atom_energies;      // (nlocal,): short-range in, total out
  torch::Tensor position_gradient;  // (nall, 3) float64 out
  torch::Tensor cell_gradient;      // (3, 3) float64 out
  std::string method;
};
}    // namespace LAMMPS_NS

namespace {
// gradient or zeros when the output does not depend on the input
torch::Tensor or_zeros(const torch::Tensor &gradient, const torch::Tensor &input)
{
  return gradient.defined() ? gradient : torch::zeros_like(input);
}

// peak resident memory of this process (VmHWM), MiB
double peak_memory_mib()
{
  FILE *status = fopen("/proc/self/status", "r");
  if (status == nullptr) return -1.0;
  char line[256];
  double kib = -1.0;
  while (fgets(line, sizeof(line), status) != nullptr)
    if (strncmp(line, "VmHWM:", 6) == 0) kib = atof(line + 6);
  fclose(status);
  return kib / 1024.0;
}
}    // namespace

PairLorem::PairLorem(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // the virial comes from the model (long-range part), not from f . r
  no_virial_fdotr_compute = 1;
  rank_ = comm->me;
}

PairLorem::~PairLorem()
{
  if (evaluations_ > 0 && std::getenv("LOREM_LAMMPS_TIMING") != nullptr) {
    fprintf(stderr,
            "pair_style lorem timing (rank %d, %ld evaluations, method %s): short-range "
            "forward %.6f s, long range and backward %.6f s, of which MPI reductions %.6f s "
            "and charge communication %.6f s; peak memory %.1f MiB\n",
            rank_, evaluations_, last_method_.empty() ? "none" : last_method_.c_str(),
            time_short_range_, time_long_range_, time_mpi_, time_comm_, peak_memory_mib());
  }
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairLorem::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

// pair_style lorem <stages file>
void PairLorem::settings(int narg, char **arg)
{
  if (narg != 1) error->all(FLERR, "Illegal pair_style lorem command: use pair_style lorem <file>");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style lorem needs units metal (eV and Angstrom, the model's units)");

  model_path_ = arg[0];
  model_ = std::make_unique<PairLoremModel>();
  try {
    model_->module = torch::jit::load(model_path_, torch::kCPU);
    model_->module.eval();
    cutoff_ = model_->module.attr("cutoff").toDouble();
    range_ = model_->module.attr("interaction_range").toDouble();
    long_range_ = model_->module.attr("has_long_range").toBool();
    n_channels_ = static_cast<int>(model_->module.attr("num_charge_channels").toInt());
    auto dtype = model_->module.attr("dtype_name").toStringRef();
    model_->dtype = (dtype == "float32") ? torch::kFloat32 : torch::kFloat64;
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style lorem: could not load '{}' as a LOREM stages file "
               "(lorem_mta.stages.export_stages): {}",
               model_path_, e.what());
  }
  // the charges of the owned atoms go to their ghosts, their gradients come back
  comm_forward = long_range_ ? n_channels_ : 0;
  comm_reverse = long_range_ ? n_channels_ : 0;
}

// pair_coeff * * <atomic number of type 1> <of type 2> ...
void PairLorem::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  if (narg != atom->ntypes + 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for lorem must be `pair_coeff * * Z_1 ... Z_{}`", atom->ntypes);
  atomic_numbers_.assign(atom->ntypes + 1, 0);
  for (int type = 1; type <= atom->ntypes; type++)
    atomic_numbers_[type] = utils::inumeric(FLERR, arg[type + 1], false, lmp);
  for (int i = 1; i <= atom->ntypes; i++)
    for (int j = 1; j <= atom->ntypes; j++) setflag[i][j] = 1;
}

void PairLorem::init_style()
{
  if (force->newton_pair == 0) error->all(FLERR, "pair_style lorem requires newton pair on");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style lorem requires atom IDs");
  slab_ = false;
  if (long_range_) {
    if (domain->dimension != 3 || !domain->xperiodic || !domain->yperiodic)
      error->all(FLERR,
                 "pair_style lorem: a long-range model needs a 3D box periodic in x and y "
                 "(boundary p p p, or p p f / p p m for a slab)");
    slab_ = !domain->zperiodic;
    if (slab_ && domain->triclinic && (domain->xz != 0.0 || domain->yz != 0.0))
      error->all(FLERR, "pair_style lorem: a slab (boundary p p f) needs xz = yz = 0");
  }
  // full list with the neighbours of ghosts (message passing runs on the ghosts too),
  // at the model cutoff; the ghost shell is the interaction range (init_one)
  auto request = neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  request->set_cutoff(cutoff_);
}

double PairLorem::init_one(int, int)
{
  return range_;
}

void PairLorem::init_list(int, NeighList *ptr)
{
  list_ = ptr;
}

int PairLorem::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  int m = 0;
  for (int k = 0; k < n; k++) {
    const double *values = comm_values_.data() + static_cast<size_t>(list[k]) * n_channels_;
    for (int c = 0; c < n_channels_; c++) buf[m++] = values[c];
  }
  return m;
}

void PairLorem::unpack_forward_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++) {
    double *values = comm_values_.data() + static_cast<size_t>(i) * n_channels_;
    for (int c = 0; c < n_channels_; c++) values[c] = buf[m++];
  }
}

int PairLorem::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++) {
    const double *values = comm_values_.data() + static_cast<size_t>(i) * n_channels_;
    for (int c = 0; c < n_channels_; c++) buf[m++] = values[c];
  }
  return m;
}

void PairLorem::unpack_reverse_comm(int n, int *list, double *buf)
{
  int m = 0;
  for (int k = 0; k < n; k++) {
    double *values = comm_values_.data() + static_cast<size_t>(list[k]) * n_channels_;
    for (int c = 0; c < n_channels_; c++) values[c] += buf[m++];
  }
}

void PairLorem::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  evaluations_++;
  const double start = MPI_Wtime();
  if (vflag_atom) error->all(FLERR, "pair_style lorem: per-atom virials are not implemented");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const auto dtype = model_->dtype;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto own = torch::indexing::Slice(0, nlocal);

  PairLoremStep step;
  // -- inputs of the short-range stage: local + ghost atoms, pairs within the cutoff --
  torch::Tensor positions = torch::zeros({nall, 3}, f64);
  if (nall > 0) positions = torch::from_blob(x[0], {nall, 3}, f64).clone();
  positions = positions.to(dtype).requires_grad_(true);
  step.positions = positions;
  auto numbers = torch::empty({nall}, i64);
  auto numbers_data = numbers.data_ptr<int64_t>();
  for (int i = 0; i < nall; i++) numbers_data[i] = atomic_numbers_[type[i]];

  // the local centres come first in the list: their pairs are the first n_own_pairs
  const double cutoff2 = cutoff_ * cutoff_;
  std::vector<int64_t> centers, neighbors;
  int64_t n_own_pairs = 0;
  const int n_centers = list_->inum + list_->gnum;
  for (int ii = 0; ii < n_centers; ii++) {
    const int i = list_->ilist[ii];
    const int *jlist = list_->firstneigh[i];
    for (int jj = 0; jj < list_->numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cutoff2) {
        centers.push_back(i);
        neighbors.push_back(j);
      }
    }
    if (ii == list_->inum - 1) n_own_pairs = static_cast<int64_t>(centers.size());
  }
  const auto n_pairs = static_cast<int64_t>(centers.size());
  auto centers_t = torch::from_blob(centers.data(), {n_pairs}, i64).clone();
  auto neighbors_t = torch::from_blob(neighbors.data(), {n_pairs}, i64).clone();
  auto vectors = positions.index_select(0, neighbors_t) - positions.index_select(0, centers_t);
  step.centers = centers_t.slice(0, 0, n_own_pairs);
  step.neighbors = neighbors_t.slice(0, 0, n_own_pairs);

  torch::Tensor energies;
  try {
    auto stage = model_->module.get_method("short_range")({numbers, centers_t, neighbors_t, vectors});
    auto outputs = stage.toTuple()->elements();
    energies = outputs[0].toTensor();
    step.nodes_scalar = outputs[1].toTensor();
    step.nodes_spherical = outputs[2].toTensor();
    step.charges = outputs[3].toTensor();
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style lorem: error in the short-range stage: {}", e.what());
  }

  step.atom_energies = energies.index({own});
  const double short_range_end = MPI_Wtime();

  if (!long_range_) {
    auto total = step.atom_energies.sum();
    if (total.requires_grad())
      step.position_gradient =
          torch::autograd::grad({total}, {positions}, {}, false, false, true)[0];
  } else {
    // cell rows a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd); a slab has c = 0
    double h[9] = {domain->xprd, 0.0, 0.0, domain->xy, domain->yprd, 0.0,
                   domain->xz,   domain->yz, domain->zprd};
    if (slab_)
      for (int k = 6; k < 9; k++) h[k] = 0.0;
    step.cell = torch::from_blob(h, {3, 3}, f64)
                    .to(dtype)
                    .clone()
                    .requires_grad_(true);
    // a slab: mean position and extent along z of all atoms (the internal cell of the sum)
    double geometry[4] = {0.0, 0.0, 0.0, 0.0};
    if (slab_) {
      double sums[3] = {0.0, 0.0, 0.0};
      double extent[2] = {-INFINITY, -INFINITY};
      for (int i = 0; i < nlocal; i++) {
        for (int k = 0; k < 3; k++) sums[k] += x[i][k];
        extent[0] = std::max(extent[0], x[i][2]);
        extent[1] = std::max(extent[1], -x[i][2]);
      }
      MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, world);
      MPI_Allreduce(MPI_IN_PLACE, extent, 2, MPI_DOUBLE, MPI_MAX, world);
      for (int k = 0; k < 3; k++) geometry[k] = sums[k] / static_cast<double>(atom->natoms);
      geometry[3] = extent[0] + extent[1];
    }
    step.geometry = torch::from_blob(geometry, {4}, f64).to(dtype).clone();
    try {
      step.method = model_->module
                        .get_method("lr_method")({step.cell.detach(), step.geometry,
                                                  static_cast<int64_t>(atom->natoms)})
                        .toStringRef();
    } catch (const std::exception &e) {
      error->all(FLERR, "pair_style lorem: {}", e.what());
    }
    last_method_ = step.method;
    try {
      if (step.method == "direct")
        long_range_gathered(step);
      else
        long_range_distributed(step);
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style lorem: error in the long-range stages: {}", e.what());
    }
  }

  const double end = MPI_Wtime();
  time_short_range_ += short_range_end - start;
  time_long_range_ += end - short_range_end;

  // -- forces, energy, virial --
  auto gradient = or_zeros(step.position_gradient, positions).to(torch::kFloat64).contiguous();
  auto g = gradient.accessor<double, 2>();
  for (int i = 0; i < nall; i++)
    for (int k = 0; k < 3; k++) f[i][k] -= g[i][k];

  auto detached_energies = step.atom_energies.detach().to(torch::kFloat64).contiguous();
  if (eflag_global) eng_vdwl += detached_energies.sum().item<double>();
  if (eflag_atom) {
    auto e = detached_energies.accessor<double, 1>();
    for (int i = 0; i < nlocal; i++) eatom[i] += e[i];
  }

  if (vflag_global) {
    // -(x^T dE/dx + h^T dE/dh): local and ghost atoms, and the cell
    auto w = positions.detach().to(torch::kFloat64).t().mm(-gradient);
    if (step.cell_gradient.defined())
      w = w - step.cell.detach().to(torch::kFloat64).t().mm(step.cell_gradient);
    w = w.contiguous();
    auto v = w.accessor<double, 2>();
    virial[0] += v[0][0];
    virial[1] += v[1][1];
    virial[2] += v[2][2];
    virial[3] += 0.5 * (v[0][1] + v[1][0]);
    virial[4] += 0.5 * (v[0][2] + v[2][0]);
    virial[5] += 0.5 * (v[1][2] + v[2][1]);
  }
}

// sum over the ranks, as float64, returned in the input's dtype
static torch::Tensor sum_over_ranks(const torch::Tensor &tensor, MPI_Comm world, double &timer)
{
  auto values = tensor.detach().to(torch::kFloat64).contiguous().clone();
  const double start = MPI_Wtime();
  MPI_Allreduce(MPI_IN_PLACE, values.data_ptr<double>(), static_cast<int>(values.numel()),
                MPI_DOUBLE, MPI_SUM, world);
  timer += MPI_Wtime() - start;
  return values.to(tensor.scalar_type());
}

void PairLorem::long_range_distributed(PairLoremStep &step)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const auto dtype = model_->dtype;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto own = torch::indexing::Slice(0, nlocal);
  const int64_t natoms = atom->natoms;
  auto &module = model_->module;

  // exact charges on the ghosts: those of their owners (forward communication)
  auto own_charges = step.charges.index({own}).detach().to(torch::kFloat64).contiguous();
  comm_values_.assign(static_cast<size_t>(nall) * n_channels_, 0.0);
  if (nlocal > 0)
    std::memcpy(comm_values_.data(), own_charges.data_ptr<double>(),
                sizeof(double) * nlocal * n_channels_);
  double comm_start = MPI_Wtime();
  comm->forward_comm(this);
  time_comm_ += MPI_Wtime() - comm_start;
  auto charges = torch::from_blob(comm_values_.data(), {nall, n_channels_}, f64)
                     .to(dtype)
                     .clone()
                     .requires_grad_(true);

  // level 1: charge sums (neutral mean); level 2: reciprocal sums, totals, slab moments
  auto charge_sums = module.get_method("charge_sums")({charges.index({own})}).toTensor();
  auto all_charge_sums = sum_over_ranks(charge_sums, world, time_mpi_).requires_grad_(true);
  auto lr_charges =
      module.get_method("lr_charges")({charges, all_charge_sums, natoms}).toTensor();
  auto sums = module
                  .get_method("lr_sums")({lr_charges.index({own}), step.positions.index({own}),
                                          step.cell, step.geometry, step.method})
                  .toTensor();
  auto all_sums = sum_over_ranks(sums, world, time_mpi_).requires_grad_(true);
  auto potentials = module
                        .get_method("lr_potentials")({all_sums, lr_charges, step.positions,
                                                      step.cell, step.geometry, step.method,
                                                      step.centers, step.neighbors,
                                                      static_cast<int64_t>(nlocal)})
                        .toTensor();
  auto energies = module
                      .get_method("long_range_energies")({step.nodes_scalar.index({own}),
                                                          step.nodes_spherical.index({own}),
                                                          potentials})
                      .toTensor();
  step.atom_energies = step.atom_energies + energies;
  auto total = step.atom_energies.sum();
  auto one = torch::ones_like(total);

  // backward: the gradients of the summed quantities, summed over the ranks
  auto sums_gradient = or_zeros(
      torch::autograd::grad({total}, {all_sums}, {}, true, false, true)[0], all_sums);
  sums_gradient = sum_over_ranks(sums_gradient, world, time_mpi_);
  auto charge_sums_gradient = or_zeros(
      torch::autograd::grad({total, sums}, {all_charge_sums}, {one, sums_gradient}, true, false,
                            true)[0],
      all_charge_sums);
  charge_sums_gradient = sum_over_ranks(charge_sums_gradient, world, time_mpi_);

  // gradients of the charges of the rank's atoms and ghosts; ghosts' go to their owners
  auto charge_gradient =
      or_zeros(torch::autograd::grad({total, sums, charge_sums}, {charges},
                                     {one, sums_gradient, charge_sums_gradient}, true, false,
                                     true)[0],
               charges)
          .to(torch::kFloat64)
          .contiguous();
  std::memcpy(comm_values_.data(), charge_gradient.data_ptr<double>(),
              sizeof(double) * static_cast<size_t>(nall) * n_channels_);
  comm_start = MPI_Wtime();
  comm->reverse_comm(this);
  time_comm_ += MPI_Wtime() - comm_start;
  auto own_charge_gradient =
      torch::from_blob(comm_values_.data(), {nlocal, n_channels_}, f64).to(dtype).clone();

  // one backward pass through everything else, the short-range stage included
  std::vector<torch::Tensor> roots = {total, sums};
  std::vector<torch::Tensor> seeds = {one, sums_gradient};
  if (step.charges.requires_grad()) {
    roots.push_back(step.charges.index({own}));
    seeds.push_back(own_charge_gradient);
  }
  auto gradients =
      torch::autograd::grad(roots, {step.positions, step.cell}, seeds, false, false, true);
  step.position_gradient = or_zeros(gradients[0], step.positions);
  step.cell_gradient = or_zeros(gradients[1], step.cell).to(torch::kFloat64);
}

void PairLorem::long_range_gathered(PairLoremStep &step)
{
  const int nlocal = atom->nlocal;
  const auto dtype = model_->dtype;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto own = torch::indexing::Slice(0, nlocal);
  double **x = atom->x;
  const tagint *tag = atom->tag;
  double mpi_start = 0.0;

  // -- gather positions and charges of all atoms, indexed by atom ID --
  tagint max_tag = 0;
  for (int i = 0; i < nlocal; i++) max_tag = std::max(max_tag, tag[i]);
  tagint global_max_tag = 0;
  MPI_Allreduce(&max_tag, &global_max_tag, 1, MPI_LMP_TAGINT, MPI_MAX, world);
  if (global_max_tag != atom->natoms)
    error->all(FLERR, "pair_style lorem needs atom IDs 1..N without gaps (reset_atoms id)");
  const int64_t natoms = atom->natoms;
  const int64_t n_channels = step.charges.size(1);

  auto own_index = torch::empty({nlocal}, i64);
  auto own_index_data = own_index.data_ptr<int64_t>();
  for (int i = 0; i < nlocal; i++) own_index_data[i] = tag[i] - 1;

  std::vector<double> gathered(natoms * (3 + n_channels), 0.0);
  auto own_charges = step.charges.index({own}).detach().to(torch::kFloat64).contiguous();
  const double *q = own_charges.data_ptr<double>();
  double *gathered_positions = gathered.data();
  double *gathered_charges = gathered.data() + 3 * natoms;
  for (int i = 0; i < nlocal; i++) {
    const int64_t t = tag[i] - 1;
    for (int k = 0; k < 3; k++) gathered_positions[3 * t + k] = x[i][k];
    for (int64_t c = 0; c < n_channels; c++)
      gathered_charges[n_channels * t + c] = q[n_channels * i + c];
  }
  mpi_start = MPI_Wtime();
  MPI_Allreduce(MPI_IN_PLACE, gathered.data(), static_cast<int>(gathered.size()), MPI_DOUBLE,
                MPI_SUM, world);
  time_mpi_ += MPI_Wtime() - mpi_start;

  // -- periodic pairs of this rank's atoms: (ID i, ID j, cell shift), gathered --
  auto cell64 = step.cell.detach().to(torch::kFloat64).contiguous();
  const double *h = cell64.data_ptr<double>();
  const auto *centers = step.centers.data_ptr<int64_t>();
  const auto *neighbors = step.neighbors.data_ptr<int64_t>();
  std::vector<long long> pairs;
  for (int64_t p = 0; p < step.centers.size(0); p++) {
    const int64_t i = centers[p], j = neighbors[p];
    // x_j = R_owner(j) + S h: solve the triangular system for S (S_z = 0 in a slab)
    const int64_t t = tag[j] - 1;
    const double d0 = x[j][0] - gathered_positions[3 * t];
    const double d1 = x[j][1] - gathered_positions[3 * t + 1];
    const double d2 = x[j][2] - gathered_positions[3 * t + 2];
    const double s2 = h[8] != 0.0 ? d2 / h[8] : 0.0;
    const double s1 = (d1 - h[7] * s2) / h[4];
    const double s0 = (d0 - h[3] * s1 - h[6] * s2) / h[0];
    pairs.insert(pairs.end(), {static_cast<long long>(tag[i] - 1), static_cast<long long>(t),
                               std::llround(s0), std::llround(s1), std::llround(s2)});
  }
  const int nprocs = comm->nprocs;
  std::vector<int> counts(nprocs), displacements(nprocs, 0);
  int my_count = static_cast<int>(pairs.size());
  mpi_start = MPI_Wtime();
  MPI_Allgather(&my_count, 1, MPI_INT, counts.data(), 1, MPI_INT, world);
  for (int p = 1; p < nprocs; p++) displacements[p] = displacements[p - 1] + counts[p - 1];
  std::vector<long long> all_pairs(displacements[nprocs - 1] + counts[nprocs - 1]);
  MPI_Allgatherv(pairs.data(), my_count, MPI_LONG_LONG, all_pairs.data(), counts.data(),
                 displacements.data(), MPI_LONG_LONG, world);
  time_mpi_ += MPI_Wtime() - mpi_start;
  const auto n_all_pairs = static_cast<int64_t>(all_pairs.size() / 5);
  auto pairs_t = torch::from_blob(all_pairs.data(), {n_all_pairs, 5}, i64).clone();

  // -- potentials of all atoms, long-range energies of this rank's atoms --
  auto gathered_t = torch::from_blob(gathered.data(), {natoms * (3 + n_channels)}, f64);
  auto all_positions =
      gathered_t.slice(0, 0, 3 * natoms).view({natoms, 3}).to(dtype).clone().requires_grad_(true);
  auto all_charges = gathered_t.slice(0, 3 * natoms)
                         .view({natoms, n_channels})
                         .to(dtype)
                         .clone()
                         .requires_grad_(true);
  auto cell = step.cell.detach().clone().requires_grad_(true);

  auto potentials = model_->module
                        .get_method("potentials")({all_charges, all_positions, cell,
                                                   pairs_t.select(1, 0).contiguous(),
                                                   pairs_t.select(1, 1).contiguous(),
                                                   pairs_t.slice(1, 2, 5).contiguous()})
                        .toTensor();
  auto own_potentials = potentials.index_select(0, own_index);
  auto potentials_leaf = own_potentials.detach().requires_grad_(true);
  auto energies = model_->module
                      .get_method("long_range_energies")({step.nodes_scalar.index({own}),
                                                          step.nodes_spherical.index({own}),
                                                          potentials_leaf})
                      .toTensor();
  step.atom_energies = step.atom_energies + energies;
  auto total = step.atom_energies.sum();

  // gradient of this rank's energy with respect to its atoms' potentials (through the
  // mixing stage only; the graph is kept for the short-range backward below)
  auto first = torch::autograd::grad({total}, {potentials_leaf}, {}, true, false, true);
  auto potential_gradient = or_zeros(first[0], potentials_leaf);

  // through the potential stage to the charges, positions and cell of all atoms
  auto second = torch::autograd::grad({own_potentials}, {all_charges, all_positions, cell},
                                      {potential_gradient}, false, false, true);
  auto charge_gradient = or_zeros(second[0], all_charges).to(torch::kFloat64).contiguous();
  auto all_position_gradient = or_zeros(second[1], all_positions).to(torch::kFloat64).contiguous();
  auto cell_gradient = or_zeros(second[2], cell).to(torch::kFloat64);
  // the virial of the positions comes with the summed gradients of the own atoms below
  step.cell_gradient = cell_gradient;

  // sum the long-range gradients over the ranks
  std::vector<double> summed(natoms * (3 + n_channels));
  std::memcpy(summed.data(), all_position_gradient.data_ptr<double>(),
              sizeof(double) * 3 * natoms);
  std::memcpy(summed.data() + 3 * natoms, charge_gradient.data_ptr<double>(),
              sizeof(double) * n_channels * natoms);
  mpi_start = MPI_Wtime();
  MPI_Allreduce(MPI_IN_PLACE, summed.data(), static_cast<int>(summed.size()), MPI_DOUBLE,
                MPI_SUM, world);
  time_mpi_ += MPI_Wtime() - mpi_start;
  auto summed_t = torch::from_blob(summed.data(), {natoms * (3 + n_channels)}, f64);
  auto long_range_gradient =
      summed_t.slice(0, 0, 3 * natoms).view({natoms, 3}).index_select(0, own_index);
  auto own_charge_gradient = summed_t.slice(0, 3 * natoms)
                                 .view({natoms, n_channels})
                                 .index_select(0, own_index)
                                 .to(dtype);

  // one backward through the short-range stage, from this rank's energy and from the
  // summed gradients of its atoms' charges
  std::vector<torch::Tensor> roots = {total};
  std::vector<torch::Tensor> seeds = {torch::ones_like(total)};
  if (step.charges.requires_grad()) {
    roots.push_back(step.charges.index({own}));
    seeds.push_back(own_charge_gradient);
  }
  auto gradient = torch::autograd::grad(roots, {step.positions}, seeds, false, false, true)[0];
  gradient = or_zeros(gradient, step.positions).to(torch::kFloat64).clone();
  gradient.slice(0, 0, nlocal).add_(long_range_gradient);
  step.position_gradient = gradient;
}
