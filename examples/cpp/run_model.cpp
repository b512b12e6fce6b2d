// Run an exported metatomic model (e.g. LOREM's model.pt) from C++, without Python.
//
//     run_model model.pt structure.txt [--ghosts] [--check-consistency]
//                                      [--extensions DIR]
//
// The structure file holds whitespace-separated keywords and numbers (in Angstrom):
//
//     cell  ax ay az  bx by bz  cx cy cz
//     pbc   1 1 1
//     atoms N
//     Z x y z        (N lines)
//
// The program loads the model with metatomic-torch's C++ API, computes every
// neighbour list the model requests (brute force over periodic images), evaluates the
// `energy` output, gets the forces by autograd through the positions and the virial
// through a strain applied to positions and cell (as LAMMPS and ASE do), and prints
//
//     interaction_range <model interaction range, Angstrom>
//     atoms <N>  ghosts <number of ghost atoms>  pairs <number of pairs>
//     energy <E, eV>
//     forces   then N lines fx fy fz (eV/Angstrom)
//     virial   then 3 lines, W = dE/d(strain) (eV; ASE stress times volume)
//     stress   then 3 lines, W / volume (eV/Angstrom^3)
//
// With --ghosts the system is built the way LAMMPS' `pair_style metatomic` builds it
// on one MPI rank: the atoms are wrapped into the box, periodic images that lie within
// the neighbour-list cutoff of the box are added as extra "ghost" atoms, the model
// gets `selected_atoms` = the real atoms, neighbour pairs are searched without
// periodicity among real and ghost atoms and then remapped onto the real atoms with
// cell shifts (LAMMPS' `remap_pairs on`), and the forces on ghosts are added to the
// atoms they are images of. The results must equal the plain periodic evaluation.
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <metatensor/torch.hpp>
#include <metatomic/torch/model.hpp>
#include <metatomic/torch/system.hpp>

namespace {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<Vec3, 3>;  // rows are the cell vectors a, b, c

struct Structure {
    Mat3 cell = {};
    std::array<bool, 3> pbc = {false, false, false};
    std::vector<int32_t> types;
    std::vector<Vec3> positions;
};

// Pairs of a neighbour list: (first, second, shift_a, shift_b, shift_c) and vectors
struct Pairs {
    std::vector<int32_t> samples;
    std::vector<double> vectors;

    void add(int32_t i, int32_t j, const std::array<int32_t, 3>& shift, const Vec3& vector) {
        samples.insert(samples.end(), {i, j, shift[0], shift[1], shift[2]});
        vectors.insert(vectors.end(), vector.begin(), vector.end());
    }
    int64_t size() const {
        return static_cast<int64_t>(samples.size() / 5);
    }
};

struct Ghosts {
    std::vector<int32_t> owner;                  // real atom each ghost is an image of
    std::vector<std::array<int32_t, 3>> shift;  // in units of the cell vectors
    std::vector<Vec3> positions;
};

std::string expect_keyword(std::istream& input, const std::string& keyword) {
    std::string word;
    if (!(input >> word) || word != keyword) {
        throw std::runtime_error("structure file: expected '" + keyword + "', got '" + word + "'");
    }
    return word;
}

Structure read_structure(const std::string& path) {
    std::ifstream input(path);
    if (!input) {
        throw std::runtime_error("can not open structure file '" + path + "'");
    }
    Structure structure;
    expect_keyword(input, "cell");
    for (auto& row : structure.cell) {
        for (auto& value : row) {
            input >> value;
        }
    }
    expect_keyword(input, "pbc");
    for (auto& periodic : structure.pbc) {
        int flag = 0;
        input >> flag;
        periodic = flag != 0;
    }
    expect_keyword(input, "atoms");
    int64_t n_atoms = -1;
    input >> n_atoms;
    if (!input || n_atoms < 0) {
        throw std::runtime_error("structure file: invalid number of atoms");
    }
    for (int64_t i = 0; i < n_atoms; i++) {
        int32_t type = 0;
        Vec3 position = {};
        input >> type >> position[0] >> position[1] >> position[2];
        structure.types.push_back(type);
        structure.positions.push_back(position);
    }
    if (!input) {
        throw std::runtime_error("structure file: could not read " + std::to_string(n_atoms) + " atoms");
    }
    return structure;
}

Vec3 cross(const Vec3& u, const Vec3& v) {
    return {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]};
}

double dot(const Vec3& u, const Vec3& v) {
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
}

double norm(const Vec3& u) {
    return std::sqrt(dot(u, u));
}

// distance between the lattice planes spanned by the two other cell vectors
Vec3 plane_spacings(const Mat3& cell) {
    double volume = std::abs(dot(cell[0], cross(cell[1], cell[2])));
    Vec3 spacing = {};
    for (int d = 0; d < 3; d++) {
        spacing[d] = volume / norm(cross(cell[(d + 1) % 3], cell[(d + 2) % 3]));
    }
    return spacing;
}

Vec3 shifted(const Vec3& position, const Mat3& cell, const std::array<int32_t, 3>& shift) {
    Vec3 result = position;
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) {
            result[k] += shift[d] * cell[d][k];
        }
    }
    return result;
}

Vec3 difference(const Vec3& to, const Vec3& from) {
    return {to[0] - from[0], to[1] - from[1], to[2] - from[2]};
}

// a half list keeps one of (i, j, S) and (j, i, -S)
bool keep_in_half_list(int32_t i, int32_t j, const std::array<int32_t, 3>& shift) {
    if (i != j) {
        return i < j;
    }
    for (auto s : shift) {
        if (s != 0) {
            return s > 0;
        }
    }
    return false;
}

Mat3 inverse(const Mat3& m) {
    double det = dot(m[0], cross(m[1], m[2]));
    // rows of the inverse transpose are the reciprocal vectors / det
    Mat3 inv = {};
    Vec3 r0 = cross(m[1], m[2]), r1 = cross(m[2], m[0]), r2 = cross(m[0], m[1]);
    for (int k = 0; k < 3; k++) {
        inv[k][0] = r0[k] / det;
        inv[k][1] = r1[k] / det;
        inv[k][2] = r2[k] / det;
    }
    return inv;
}

// fractional coordinates f with position = f @ cell
Vec3 fractional(const Vec3& position, const Mat3& inverse_cell) {
    Vec3 f = {};
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) {
            f[d] += position[k] * inverse_cell[k][d];
        }
    }
    return f;
}

// every image of every atom within `cutoff`, by brute force over periodic images
Pairs periodic_pairs(const Structure& structure, double cutoff, bool full_list) {
    std::array<int32_t, 3> n_images = {0, 0, 0};
    bool any_periodic = structure.pbc[0] || structure.pbc[1] || structure.pbc[2];
    bool all_periodic = structure.pbc[0] && structure.pbc[1] && structure.pbc[2];
    if (any_periodic && !all_periodic) {
        throw std::runtime_error("this program handles fully periodic or fully open systems only");
    }
    if (any_periodic) {
        // atoms need not be inside the cell: a pair within the cutoff is at most
        // cutoff / spacing + (spread of the fractional coordinates) cells apart
        auto spacing = plane_spacings(structure.cell);
        auto inverse_cell = inverse(structure.cell);
        Vec3 lowest = {0.0, 0.0, 0.0};
        Vec3 highest = {0.0, 0.0, 0.0};
        for (const auto& position : structure.positions) {
            auto f = fractional(position, inverse_cell);
            for (int d = 0; d < 3; d++) {
                lowest[d] = std::min(lowest[d], f[d]);
                highest[d] = std::max(highest[d], f[d]);
            }
        }
        for (int d = 0; d < 3; d++) {
            if (structure.pbc[d]) {
                double reach = cutoff / spacing[d] + (highest[d] - lowest[d]);
                n_images[d] = static_cast<int32_t>(std::ceil(reach));
            }
        }
    }
    auto n_atoms = static_cast<int32_t>(structure.positions.size());
    Pairs pairs;
    for (int32_t i = 0; i < n_atoms; i++) {
        for (int32_t j = 0; j < n_atoms; j++) {
            for (int32_t a = -n_images[0]; a <= n_images[0]; a++) {
                for (int32_t b = -n_images[1]; b <= n_images[1]; b++) {
                    for (int32_t c = -n_images[2]; c <= n_images[2]; c++) {
                        std::array<int32_t, 3> shift = {a, b, c};
                        if (i == j && a == 0 && b == 0 && c == 0) {
                            continue;
                        }
                        if (!full_list && !keep_in_half_list(i, j, shift)) {
                            continue;
                        }
                        auto image = shifted(structure.positions[j], structure.cell, shift);
                        auto vector = difference(image, structure.positions[i]);
                        if (norm(vector) < cutoff) {
                            pairs.add(i, j, shift, vector);
                        }
                    }
                }
            }
        }
    }
    return pairs;
}

// LAMMPS-like setup: wrap the atoms into the box and add the periodic images within
// `cutoff` of the box as ghosts (the ghost shell of a single MPI domain)
Ghosts wrap_and_add_ghosts(Structure& structure, double cutoff) {
    if (!(structure.pbc[0] && structure.pbc[1] && structure.pbc[2])) {
        throw std::runtime_error("--ghosts needs a fully periodic box, as LAMMPS does");
    }
    auto inverse_cell = inverse(structure.cell);
    auto spacing = plane_spacings(structure.cell);
    Vec3 margin = {};
    std::array<int32_t, 3> n_images = {};
    for (int d = 0; d < 3; d++) {
        margin[d] = cutoff / spacing[d];
        n_images[d] = static_cast<int32_t>(std::ceil(margin[d]));
    }

    std::vector<Vec3> fractions;
    for (auto& position : structure.positions) {
        auto f = fractional(position, inverse_cell);
        for (auto& value : f) {
            value -= std::floor(value);
        }
        position = {0.0, 0.0, 0.0};
        for (int d = 0; d < 3; d++) {
            for (int k = 0; k < 3; k++) {
                position[k] += f[d] * structure.cell[d][k];
            }
        }
        fractions.push_back(f);
    }

    Ghosts ghosts;
    auto n_atoms = static_cast<int32_t>(structure.positions.size());
    for (int32_t a = -n_images[0]; a <= n_images[0]; a++) {
        for (int32_t b = -n_images[1]; b <= n_images[1]; b++) {
            for (int32_t c = -n_images[2]; c <= n_images[2]; c++) {
                std::array<int32_t, 3> shift = {a, b, c};
                if (a == 0 && b == 0 && c == 0) {
                    continue;
                }
                for (int32_t i = 0; i < n_atoms; i++) {
                    bool inside = true;
                    for (int d = 0; d < 3; d++) {
                        double f = fractions[i][d] + shift[d];
                        inside = inside && f >= -margin[d] && f < 1.0 + margin[d];
                    }
                    if (inside) {
                        ghosts.owner.push_back(i);
                        ghosts.shift.push_back(shift);
                        ghosts.positions.push_back(shifted(structure.positions[i], structure.cell, shift));
                    }
                }
            }
        }
    }
    return ghosts;
}

// pairs searched without periodicity among real and ghost atoms, starting on real
// atoms, then remapped onto real atoms with cell shifts (LAMMPS' `remap_pairs on`)
Pairs remapped_pairs(const Structure& structure, const Ghosts& ghosts, double cutoff, bool full_list) {
    auto n_atoms = static_cast<int32_t>(structure.positions.size());
    auto n_ghosts = static_cast<int32_t>(ghosts.positions.size());
    Pairs pairs;
    for (int32_t i = 0; i < n_atoms; i++) {
        for (int32_t j = 0; j < n_atoms + n_ghosts; j++) {
            if (i == j) {
                continue;
            }
            bool ghost = j >= n_atoms;
            const auto& position = ghost ? ghosts.positions[j - n_atoms] : structure.positions[j];
            auto vector = difference(position, structure.positions[i]);
            if (norm(vector) >= cutoff) {
                continue;
            }
            int32_t owner = ghost ? ghosts.owner[j - n_atoms] : j;
            std::array<int32_t, 3> shift = ghost ? ghosts.shift[j - n_atoms] : std::array<int32_t, 3>{0, 0, 0};
            if (!full_list && !keep_in_half_list(i, owner, shift)) {
                continue;
            }
            pairs.add(i, owner, shift, vector);
        }
    }
    return pairs;
}

metatensor_torch::TensorBlock neighbors_block(const Pairs& pairs, torch::TensorOptions options) {
    auto n_pairs = pairs.size();
    auto samples_values = torch::from_blob(
        const_cast<int32_t*>(pairs.samples.data()), {n_pairs, 5}, torch::TensorOptions().dtype(torch::kInt32)
    ).clone();
    auto vectors = torch::from_blob(
        const_cast<double*>(pairs.vectors.data()), {n_pairs, 3, 1}, torch::TensorOptions().dtype(torch::kFloat64)
    ).to(options, /*non_blocking=*/false, /*copy=*/true);
    auto samples = torch::make_intrusive<metatensor_torch::LabelsHolder>(
        std::vector<std::string>{"first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"},
        samples_values
    );
    auto xyz = torch::make_intrusive<metatensor_torch::LabelsHolder>(
        std::vector<std::string>{"xyz"}, torch::tensor({0, 1, 2}, torch::kInt32).reshape({3, 1})
    );
    auto distance = torch::make_intrusive<metatensor_torch::LabelsHolder>(
        std::vector<std::string>{"distance"}, torch::zeros({1, 1}, torch::kInt32)
    );
    return torch::make_intrusive<metatensor_torch::TensorBlockHolder>(
        vectors, samples, std::vector<metatensor_torch::Labels>{xyz}, distance
    );
}

torch::Tensor to_tensor(const std::vector<Vec3>& rows, torch::TensorOptions options) {
    auto n_rows = static_cast<int64_t>(rows.size());
    auto tensor = torch::zeros({n_rows, 3}, torch::kFloat64);
    auto accessor = tensor.accessor<double, 2>();
    for (int64_t i = 0; i < n_rows; i++) {
        for (int k = 0; k < 3; k++) {
            accessor[i][k] = rows[i][k];
        }
    }
    return tensor.to(options);
}

void print_matrix(const torch::Tensor& matrix) {
    auto values = matrix.to(torch::kFloat64).contiguous();
    auto accessor = values.accessor<double, 2>();
    for (int64_t i = 0; i < values.size(0); i++) {
        for (int64_t k = 0; k < values.size(1); k++) {
            std::cout << (k == 0 ? "" : " ") << accessor[i][k];
        }
        std::cout << "\n";
    }
}

int run(int argc, char** argv) {
    std::vector<std::string> positional;
    bool use_ghosts = false;
    bool check_consistency = false;
    c10::optional<std::string> extensions = c10::nullopt;
    for (int k = 1; k < argc; k++) {
        std::string argument = argv[k];
        if (argument == "--ghosts") {
            use_ghosts = true;
        } else if (argument == "--check-consistency") {
            check_consistency = true;
        } else if (argument == "--extensions" && k + 1 < argc) {
            extensions = std::string(argv[++k]);
        } else {
            positional.push_back(argument);
        }
    }
    if (positional.size() != 2) {
        std::cerr << "usage: " << argv[0]
                  << " model.pt structure.txt [--ghosts] [--check-consistency] [--extensions DIR]\n";
        return 2;
    }

    torch::jit::getProfilingMode() = false;  // as LAMMPS: no JIT profiling runs
    auto model = metatomic_torch::load_atomistic_model(positional[0], extensions);
    auto capabilities = model.run_method("capabilities").toCustomClass<metatomic_torch::ModelCapabilitiesHolder>();
    if (capabilities->dtype() != "float64" && capabilities->dtype() != "float32") {
        throw std::runtime_error("unsupported model dtype " + capabilities->dtype());
    }
    auto dtype = capabilities->dtype() == "float64" ? torch::kFloat64 : torch::kFloat32;
    auto options = torch::TensorOptions().dtype(dtype).device(torch::kCPU);
    const std::string length_unit = "angstrom";

    std::vector<metatomic_torch::NeighborListOptions> requests;
    double max_cutoff = 0.0;
    for (const auto& request : model.run_method("requested_neighbor_lists").toList()) {
        auto nl_options = request.get().toCustomClass<metatomic_torch::NeighborListOptionsHolder>();
        max_cutoff = std::max(max_cutoff, nl_options->engine_cutoff(length_unit));
        requests.push_back(nl_options);
    }

    auto structure = read_structure(positional[1]);
    Ghosts ghosts;
    if (use_ghosts) {
        // an infinite interaction range sends LAMMPS to one MPI domain with a ghost
        // shell as thick as the largest neighbour-list cutoff
        ghosts = wrap_and_add_ghosts(structure, max_cutoff);
    }
    auto n_atoms = static_cast<int64_t>(structure.positions.size());
    auto n_ghosts = static_cast<int64_t>(ghosts.positions.size());

    auto all_positions = structure.positions;
    all_positions.insert(all_positions.end(), ghosts.positions.begin(), ghosts.positions.end());
    auto types_vector = structure.types;
    for (auto owner : ghosts.owner) {
        types_vector.push_back(structure.types[owner]);
    }

    // forces from the positions, the virial from a strain applied to positions and cell
    auto positions = to_tensor(all_positions, options).requires_grad_(true);
    auto strain = torch::eye(3, options).requires_grad_(true);
    auto cell_rows = std::vector<Vec3>(structure.cell.begin(), structure.cell.end());
    auto cell = to_tensor(cell_rows, options);
    auto pbc = torch::zeros({3}, torch::kBool);
    for (int d = 0; d < 3; d++) {
        pbc[d] = structure.pbc[d];
    }
    if (!use_ghosts) {
        for (int d = 0; d < 3; d++) {
            if (!structure.pbc[d]) {
                cell[d].zero_();  // metatomic wants zero cell vectors along open directions
            }
        }
    }
    auto types = torch::tensor(types_vector, torch::kInt32);

    auto system = torch::make_intrusive<metatomic_torch::SystemHolder>(
        types, torch::matmul(positions, strain), torch::matmul(cell, strain), pbc
    );
    int64_t n_pairs = 0;
    for (const auto& request : requests) {
        double cutoff = request->engine_cutoff(length_unit);
        auto pairs = use_ghosts ? remapped_pairs(structure, ghosts, cutoff, request->full_list())
                                : periodic_pairs(structure, cutoff, request->full_list());
        n_pairs = std::max(n_pairs, pairs.size());
        auto block = neighbors_block(pairs, options);
        metatomic_torch::register_autograd_neighbors(system, block, check_consistency);
        system->add_neighbor_list(request, block);
    }

    auto energy_output = torch::make_intrusive<metatomic_torch::ModelOutputHolder>(
        /*quantity=*/"", /*unit=*/"eV", /*sample_kind=*/"system", std::vector<std::string>{}, /*description=*/""
    );
    auto outputs = torch::Dict<std::string, metatomic_torch::ModelOutput>();
    outputs.insert("energy", energy_output);
    torch::optional<metatensor_torch::Labels> selected_atoms = torch::nullopt;
    if (use_ghosts) {
        auto values = torch::zeros({n_atoms, 2}, torch::kInt32);
        values.index_put_({torch::indexing::Slice(), 1}, torch::arange(n_atoms, torch::kInt32));
        selected_atoms = torch::make_intrusive<metatensor_torch::LabelsHolder>(
            std::vector<std::string>{"system", "atom"}, values
        );
    }
    auto evaluation_options = torch::make_intrusive<metatomic_torch::ModelEvaluationOptionsHolder>(
        length_unit, outputs, selected_atoms
    );

    auto systems = c10::List<metatomic_torch::System>();
    systems.push_back(system);
    auto result = model.forward({systems, evaluation_options, check_consistency}).toGenericDict();
    auto energy_map = result.at("energy").toCustomClass<metatensor_torch::TensorMapHolder>();
    auto energy = metatensor_torch::TensorMapHolder::block_by_id(energy_map, 0)->values().sum();

    auto gradients = torch::autograd::grad({energy}, {positions, strain});
    // forces on ghosts belong to the atoms they are images of (LAMMPS' reverse
    // communication)
    auto all_forces = -gradients[0].to(torch::kFloat64);
    auto forces = all_forces.slice(0, 0, n_atoms).clone();
    for (int64_t g = 0; g < n_ghosts; g++) {
        forces[ghosts.owner[g]] += all_forces[n_atoms + g];
    }
    auto virial = gradients[1].to(torch::kFloat64);

    std::cout << std::setprecision(17);
    std::cout << "interaction_range " << capabilities->engine_interaction_range(length_unit) << "\n";
    std::cout << "atoms " << n_atoms << "\n";
    std::cout << "ghosts " << n_ghosts << "\n";
    std::cout << "pairs " << n_pairs << "\n";
    std::cout << "energy " << energy.item<double>() << "\n";
    std::cout << "forces\n";
    print_matrix(forces);
    bool periodic = structure.pbc[0] && structure.pbc[1] && structure.pbc[2];
    if (periodic) {
        double volume = std::abs(dot(structure.cell[0], cross(structure.cell[1], structure.cell[2])));
        std::cout << "virial\n";
        print_matrix(virial);
        std::cout << "stress\n";
        print_matrix(virial / volume);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
}
