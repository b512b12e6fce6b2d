/* -*- c++ -*- ----------------------------------------------------------
   pair_style lorem: LOREM (lorem_mta) models on any number of MPI ranks,
   with the exact long-range (Ewald/PME) energy, forces and virial.

   Part of lorem_mta's LAMMPS code, distributed under the GNU General Public
   License version 2 (see lammps/LICENSE), like LAMMPS itself.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(lorem,PairLorem);
// clang-format on
#else

#ifndef LMP_PAIR_LOREM_H
#define LMP_PAIR_LOREM_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

struct PairLoremModel;
struct PairLoremStep;

class PairLorem : public Pair {
 public:
  PairLorem(class LAMMPS *);
  ~PairLorem() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void init_list(int, class NeighList *) override;

  // latent charges of the owned atoms to their ghosts, and their gradients back
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 private:
  void allocate();
  // the long-range stages of one step: all positions and charges gathered on every
  // rank (the "direct" method), or distributed (Ewald and PME)
  void long_range_gathered(PairLoremStep &);
  void long_range_distributed(PairLoremStep &);

  std::unique_ptr<PairLoremModel> model_;
  std::string model_path_;
  std::vector<long> atomic_numbers_;    // LAMMPS type -> atomic number
  class NeighList *list_ = nullptr;
  double cutoff_ = 0.0;                 // model cutoff: pairs of the short-range stage
  double range_ = 0.0;                  // ghost shell: (message-passing steps + 1) * cutoff
  bool long_range_ = false;
  int n_channels_ = 0;                  // latent charge channels (forward/reverse comm size)
  bool slab_ = false;                   // boundary p p f or p p m: a 2D periodic slab
  std::vector<double> comm_values_;     // (nlocal + nghost) x n_channels_, for comm

  // wall time of the stages and of the MPI calls of compute(), the method and the peak
  // memory, printed to stderr by every rank at the end when LOREM_LAMMPS_TIMING is set
  // (benchmarks/lammps_scaling.py, tests/test_lammps.py)
  int rank_ = 0;
  long evaluations_ = 0;
  double time_short_range_ = 0.0, time_long_range_ = 0.0, time_mpi_ = 0.0;
  double time_comm_ = 0.0;              // forward/reverse communication of the charges
  std::string last_method_;
};

}    // namespace LAMMPS_NS

#endif
#endif
