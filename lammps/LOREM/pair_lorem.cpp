/* ----------------------------------------------------------------------
   pair_style lorem: LOREM (lorem_mta) models on any number of MPI ranks,
   with the exact long-range (Ewald/PME) energy, forces and virial.

   Part of lorem_mta's LAMMPS code, distributed under the GNU General Public
   License version 2 (see lammps/LICENSE), like LAMMPS itself.

   The model file holds the stages of lorem_mta.stages.LoremStages
   (lorem_mta.stages.export_stages). Every step:

   1. every rank runs the short-range stage on its atoms and ghosts (a shell of
      (message-passing steps + 1) * cutoff): short-range energies, features and
      latent charges; the charges of its own atoms are exact;
   2. the positions and charges of all atoms are summed over the ranks into
      arrays indexed by atom ID, and the periodic pairs within the cutoff of
      every rank's own atoms (atom IDs and cell shifts) are gathered;
   3. every rank computes the potentials of all atoms (Ewald or PME of the
      model) and mixes those of its own atoms into their features: long-range
      energies of its own atoms;
   4. backward: the gradient of the rank's energy with respect to the
      potentials of its atoms is propagated through the potential stage to the
      charges and positions of all atoms; these gradients are summed over the
      ranks; each rank then propagates its energy and the summed gradient of its
      own atoms' charges through its short-range stage (one backward pass). Ghost forces go back to their owners with
      LAMMPS' reverse communication (newton on).
   Virial: sum over local and ghost atoms of x (x) f for the short-range
   stage (whose energy depends on relative positions only), plus
   -(R^T dE/dR + h^T dE/dh) of the potential stage (R: positions of all
   atoms, h: cell), each rank with its own energy; LAMMPS sums the ranks.
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
}    // namespace LAMMPS_NS

namespace {
// gradient or zeros when the output does not depend on the input
torch::Tensor or_zeros(const torch::Tensor &gradient, const torch::Tensor &input)
{
  return gradient.defined() ? gradient : torch::zeros_like(input);
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
  if (rank_ == 0 && evaluations_ > 0 && std::getenv("LOREM_LAMMPS_TIMING") != nullptr) {
    fprintf(stderr,
            "pair_style lorem timing (rank 0, %ld evaluations): short-range forward %.6f s, "
            "long range and backward %.6f s, of which MPI gather/reduce %.6f s\n",
            evaluations_, time_short_range_, time_long_range_, time_mpi_);
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
    auto dtype = model_->module.attr("dtype_name").toStringRef();
    model_->dtype = (dtype == "float32") ? torch::kFloat32 : torch::kFloat64;
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style lorem: could not load '{}' as a LOREM stages file "
               "(lorem_mta.stages.export_stages): {}",
               model_path_, e.what());
  }
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
  if (long_range_) {
    if (domain->dimension != 3 || !domain->xperiodic || !domain->yperiodic || !domain->zperiodic)
      error->all(FLERR, "pair_style lorem: a long-range model needs a 3D box periodic in x, y and z");
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

void PairLorem::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  evaluations_++;
  const double start = MPI_Wtime();
  double mpi_start = 0.0;
  if (vflag_atom) error->all(FLERR, "pair_style lorem: per-atom virials are not implemented");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const auto dtype = model_->dtype;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto own = torch::indexing::Slice(0, nlocal);

  // -- inputs of the short-range stage: local + ghost atoms, pairs within the cutoff --
  torch::Tensor positions = torch::zeros({nall, 3}, f64);
  if (nall > 0) positions = torch::from_blob(x[0], {nall, 3}, f64).clone();
  positions = positions.to(dtype).requires_grad_(true);
  auto numbers = torch::empty({nall}, i64);
  auto numbers_data = numbers.data_ptr<int64_t>();
  for (int i = 0; i < nall; i++) numbers_data[i] = atomic_numbers_[type[i]];

  const double cutoff2 = cutoff_ * cutoff_;
  std::vector<int64_t> centers, neighbors;
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
  }
  const auto n_pairs = static_cast<int64_t>(centers.size());
  auto centers_t = torch::from_blob(centers.data(), {n_pairs}, i64).clone();
  auto neighbors_t = torch::from_blob(neighbors.data(), {n_pairs}, i64).clone();
  auto vectors = positions.index_select(0, neighbors_t) - positions.index_select(0, centers_t);

  torch::Tensor energies, nodes_scalar, nodes_spherical, charges;
  try {
    auto stage = model_->module.get_method("short_range")({numbers, centers_t, neighbors_t, vectors});
    auto outputs = stage.toTuple()->elements();
    energies = outputs[0].toTensor();
    nodes_scalar = outputs[1].toTensor();
    nodes_spherical = outputs[2].toTensor();
    charges = outputs[3].toTensor();
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style lorem: error in the short-range stage: {}", e.what());
  }

  torch::Tensor atom_energies = energies.index({own});
  const double short_range_end = MPI_Wtime();
  torch::Tensor position_gradient;
  torch::Tensor long_range_forces;                              // (nlocal, 3)
  torch::Tensor long_range_virial = torch::zeros({3, 3}, f64);    // this rank's part

  if (!long_range_) {
    auto total = atom_energies.sum();
    if (total.requires_grad())
      position_gradient = torch::autograd::grad({total}, {positions}, {}, false, false, true)[0];
  } else {
    // -- gather positions and charges of all atoms, indexed by atom ID --
    tagint max_tag = 0;
    for (int i = 0; i < nlocal; i++) max_tag = std::max(max_tag, tag[i]);
    tagint global_max_tag = 0;
    MPI_Allreduce(&max_tag, &global_max_tag, 1, MPI_LMP_TAGINT, MPI_MAX, world);
    if (global_max_tag != atom->natoms)
      error->all(FLERR, "pair_style lorem needs atom IDs 1..N without gaps (reset_atoms id)");
    const int64_t natoms = atom->natoms;
    const int64_t n_channels = charges.size(1);

    auto own_index = torch::empty({nlocal}, i64);
    auto own_index_data = own_index.data_ptr<int64_t>();
    for (int i = 0; i < nlocal; i++) own_index_data[i] = tag[i] - 1;

    std::vector<double> gathered(natoms * (3 + n_channels), 0.0);
    auto own_charges = charges.index({own}).detach().to(torch::kFloat64).contiguous();
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
    // cell rows a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd)
    const double h[9] = {domain->xprd, 0.0,          0.0, domain->xy,  domain->yprd,
                         0.0,          domain->xz,   domain->yz,   domain->zprd};
    std::vector<long long> pairs;
    for (int ii = 0; ii < list_->inum; ii++) {
      const int i = list_->ilist[ii];
      const int *jlist = list_->firstneigh[i];
      for (int jj = 0; jj < list_->numneigh[i]; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
        if (dx * dx + dy * dy + dz * dz >= cutoff2) continue;
        // x_j = R_owner(j) + S h: solve the triangular system for S
        const int64_t t = tag[j] - 1;
        const double d0 = x[j][0] - gathered_positions[3 * t];
        const double d1 = x[j][1] - gathered_positions[3 * t + 1];
        const double d2 = x[j][2] - gathered_positions[3 * t + 2];
        const double s2 = d2 / h[8];
        const double s1 = (d1 - h[7] * s2) / h[4];
        const double s0 = (d0 - h[3] * s1 - h[6] * s2) / h[0];
        pairs.insert(pairs.end(), {static_cast<long long>(tag[i] - 1), static_cast<long long>(t),
                                   std::llround(s0), std::llround(s1), std::llround(s2)});
      }
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
    auto cell = torch::from_blob(const_cast<double *>(h), {3, 3}, f64)
                    .to(dtype)
                    .clone()
                    .requires_grad_(true);

    torch::Tensor own_potentials, long_range_energies;
    try {
      auto potentials = model_->module
                            .get_method("potentials")({all_charges, all_positions, cell,
                                                       pairs_t.select(1, 0).contiguous(),
                                                       pairs_t.select(1, 1).contiguous(),
                                                       pairs_t.slice(1, 2, 5).contiguous()})
                            .toTensor();
      own_potentials = potentials.index_select(0, own_index);
      auto potentials_leaf = own_potentials.detach().requires_grad_(true);
      long_range_energies = model_->module
                                .get_method("long_range_energies")(
                                    {nodes_scalar.index({own}), nodes_spherical.index({own}),
                                     potentials_leaf})
                                .toTensor();
      atom_energies = atom_energies + long_range_energies;
      auto total = atom_energies.sum();

      // gradient of this rank's energy with respect to its atoms' potentials (through the
      // mixing stage only; the graph is kept for the short-range backward below)
      auto first = torch::autograd::grad({total}, {potentials_leaf}, {}, true, false, true);
      auto potential_gradient = or_zeros(first[0], potentials_leaf);

      // through the potential stage to the charges, positions and cell of all atoms
      auto second = torch::autograd::grad({own_potentials}, {all_charges, all_positions, cell},
                                          {potential_gradient}, false, false, true);
      auto charge_gradient = or_zeros(second[0], all_charges).to(torch::kFloat64).contiguous();
      auto all_position_gradient =
          or_zeros(second[1], all_positions).to(torch::kFloat64).contiguous();
      auto cell_gradient = or_zeros(second[2], cell).to(torch::kFloat64);
      long_range_virial = -(all_positions.detach().to(torch::kFloat64).t().mm(all_position_gradient) +
                            cell.detach().to(torch::kFloat64).t().mm(cell_gradient));

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
      long_range_forces =
          -summed_t.slice(0, 0, 3 * natoms).view({natoms, 3}).index_select(0, own_index);
      auto own_charge_gradient = summed_t.slice(0, 3 * natoms)
                                     .view({natoms, n_channels})
                                     .index_select(0, own_index)
                                     .to(dtype);

      // one backward through the short-range stage, from this rank's energy and from the
      // summed gradients of its atoms' charges
      std::vector<torch::Tensor> roots = {total};
      std::vector<torch::Tensor> seeds = {torch::ones_like(total)};
      if (charges.requires_grad()) {
        roots.push_back(charges.index({own}));
        seeds.push_back(own_charge_gradient);
      }
      position_gradient = torch::autograd::grad(roots, {positions}, seeds, false, false, true)[0];
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style lorem: error in the long-range stages: {}", e.what());
    }
  }

  const double end = MPI_Wtime();
  time_short_range_ += short_range_end - start;
  time_long_range_ += end - short_range_end;

  // -- forces, energy, virial --
  auto gradient = or_zeros(position_gradient, positions).to(torch::kFloat64).contiguous();
  auto g = gradient.accessor<double, 2>();
  for (int i = 0; i < nall; i++)
    for (int k = 0; k < 3; k++) f[i][k] -= g[i][k];
  if (long_range_forces.defined()) {
    auto lrf = long_range_forces.contiguous();
    auto fl = lrf.accessor<double, 2>();
    for (int i = 0; i < nlocal; i++)
      for (int k = 0; k < 3; k++) f[i][k] += fl[i][k];
  }

  auto detached_energies = atom_energies.detach().to(torch::kFloat64).contiguous();
  if (eflag_global) eng_vdwl += detached_energies.sum().item<double>();
  if (eflag_atom) {
    auto e = detached_energies.accessor<double, 1>();
    for (int i = 0; i < nlocal; i++) eatom[i] += e[i];
  }

  if (vflag_global) {
    // short-range stage: sum over local and ghost atoms of x (x) f
    auto w = (positions.detach().to(torch::kFloat64).t().mm(-gradient) + long_range_virial)
                 .contiguous();
    auto v = w.accessor<double, 2>();
    virial[0] += v[0][0];
    virial[1] += v[1][1];
    virial[2] += v[2][2];
    virial[3] += 0.5 * (v[0][1] + v[1][0]);
    virial[4] += 0.5 * (v[0][2] + v[2][0]);
    virial[5] += 0.5 * (v[1][2] + v[2][1]);
  }
}
