"""Unit tests of the building blocks: harmonics, radial basis, norms, Clebsch-Gordan."""

import math

import numpy as np
import pytest
import sphericart.torch
import torch

from lorem_mta.modules.radial import BernsteinBasis, cosine_cutoff
from lorem_mta.modules.spherical import SphericalHarmonics, degree_index, spherical_norm
from lorem_mta.modules.tensor_product import (
    EquivariantLinear,
    TensorProduct,
    allowed_paths,
    clebsch_gordan,
)

torch.manual_seed(0)


def _racah_scale(max_degree):
    return torch.tensor(
        [
            math.sqrt(4 * math.pi / (2 * l + 1))
            for l in range(max_degree + 1)
            for _ in range(2 * l + 1)
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("max_degree", [0, 1, 3, 6, 8])
def test_harmonics_match_sphericart(max_degree):
    vectors = torch.randn(500, 3, dtype=torch.float64) * 3
    ours = SphericalHarmonics(max_degree)
    reference, reference_grad = sphericart.torch.SphericalHarmonics(
        max_degree
    ).compute_with_gradients(vectors)
    scale = _racah_scale(max_degree)
    np.testing.assert_allclose(ours(vectors), reference * scale, atol=1e-13)

    # gradients of every component against sphericart's analytical ones
    x = vectors.clone().requires_grad_(True)
    values = ours(x)
    for k in range(1, values.shape[1]):  # Y_00 = 1 is constant
        (grad,) = torch.autograd.grad(values[:, k].sum(), x, retain_graph=True)
        np.testing.assert_allclose(grad, reference_grad[:, :, k] * scale[k], atol=1e-12)


def test_harmonics_conventions():
    unit = torch.tensor([[0.3, -0.4, 0.5]], dtype=torch.float64)
    unit = unit / unit.norm()
    values = SphericalHarmonics(2)(unit * 2.7)[0]
    x, y, z = unit[0]
    assert values[0] == 1.0  # Racah: Y_00 = 1
    np.testing.assert_allclose(values[1:4], [y, z, x], atol=1e-15)  # l = 1 is (y, z, x)
    np.testing.assert_allclose(values[4:9].square().sum(), 1.0, atol=1e-15)
    # Y_2^0 = (3 z^2 - 1) / 2, Y_2^{-2} = sqrt(3) x y
    np.testing.assert_allclose(values[6], (3 * z**2 - 1) / 2, atol=1e-15)
    np.testing.assert_allclose(values[4], math.sqrt(3) * x * y, atol=1e-15)


def test_harmonics_double_backward():
    vectors = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SphericalHarmonics(4), (vectors,))
    assert torch.autograd.gradgradcheck(SphericalHarmonics(4), (vectors,))


def test_harmonics_torchscript():
    module = torch.jit.script(SphericalHarmonics(3))
    vectors = torch.randn(10, 3, dtype=torch.float64)
    np.testing.assert_array_equal(module(vectors), SphericalHarmonics(3)(vectors))


def test_bernstein_basis():
    basis = BernsteinBasis(num_radial=8, cutoff=5.0).double()
    r = torch.linspace(0.01, 4.99, 50, dtype=torch.float64)
    values = basis(r)
    # partition of unity and exact polynomial values
    np.testing.assert_allclose(values.sum(dim=1), 1.0, atol=1e-14)
    x = (r / 5.0).numpy()
    expected = math.comb(7, 3) * x**3 * (1 - x) ** 4
    np.testing.assert_allclose(values[:, 3], expected, rtol=1e-13)
    r = r[:5].clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda r: basis(r) * cosine_cutoff(r, 5.0)[:, None], (r,)
    )


def test_cosine_cutoff_smooth_at_cutoff():
    r = torch.tensor([4.999999, 5.0, 5.000001, 7.0], dtype=torch.float64, requires_grad=True)
    values = cosine_cutoff(r, 5.0)
    assert values[1:].abs().max() == 0
    assert values[0] < 1e-11
    (grad,) = torch.autograd.grad(values.sum(), r)
    assert grad.abs().max() < 1e-5


def test_spherical_norm_safe_at_zero():
    degrees = degree_index(2)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    x[1] = 0.0  # a zero block: zero value, zero (finite) gradient
    x.requires_grad_(True)
    norms = spherical_norm(x, degrees, 2)
    np.testing.assert_allclose(norms[0, 1, 0].item(), x[0, 1:4, 0].norm().item(), rtol=1e-14)
    assert norms[1].abs().max() == 0
    (grad,) = torch.autograd.grad(norms.sum(), x, create_graph=True)
    assert torch.isfinite(grad).all() and grad[1].abs().max() == 0
    (second,) = torch.autograd.grad(grad.square().sum(), x)
    assert torch.isfinite(second).all()
    nonzero = torch.randn(2, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: spherical_norm(t, degrees, 2), (nonzero,))


@pytest.mark.parametrize(
    "l1,l2,l3", [(1, 1, 0), (1, 1, 2), (2, 2, 2), (3, 2, 1), (4, 4, 6), (6, 6, 6)]
)
def test_clebsch_gordan_couple_harmonics(l1, l2, l3):
    # for even paths, sum_{m1 m2} C Y_l1 Y_l2 is proportional to Y_l3 (Gaunt)
    vectors = torch.randn(50, 3, dtype=torch.float64)
    harmonics = SphericalHarmonics(6)(vectors).numpy()
    block = lambda l: harmonics[:, l * l : (l + 1) ** 2]  # noqa: E731
    coupled = np.einsum("abc,na,nb->nc", clebsch_gordan(l1, l2, l3), block(l1), block(l2))
    ratio = (coupled * block(l3)).sum() / (block(l3) ** 2).sum()
    np.testing.assert_allclose(coupled, ratio * block(l3), atol=1e-12)
    assert abs(ratio) > 1e-3
    assert np.isclose((clebsch_gordan(l1, l2, l3) ** 2).sum(), 2 * l3 + 1)


def test_clebsch_gordan_phase():
    # C^{110} = +delta / sqrt(3) and C^{111}[x, y, z] = +1/sqrt(2) (x, y, z = m 1, -1, 0)
    np.testing.assert_allclose(
        clebsch_gordan(1, 1, 0)[:, :, 0], np.eye(3) / math.sqrt(3), atol=1e-15
    )
    assert np.isclose(clebsch_gordan(1, 1, 1)[2, 0, 1], 1 / math.sqrt(2))


def _dense_tensor_product(tp, x, y, paths):
    """The tensor product from its definition, one einsum per path."""
    n_out = tp.n_out
    expected = torch.zeros(x.shape[0], n_out, x.shape[2], dtype=torch.float64)
    for l1, l2, l3 in paths:
        cg = torch.tensor(clebsch_gordan(l1, l2, l3))
        xb, yb = x[:, l1 * l1 : (l1 + 1) ** 2], y[:, l2 * l2 : (l2 + 1) ** 2]
        expected[:, l3 * l3 : (l3 + 1) ** 2] += tp.weight[l1, l2, l3] * torch.einsum(
            "abc,naf,nbf->ncf", cg, xb, yb
        )
    return expected


@pytest.mark.parametrize(
    "degrees,features", [((2, 3, 3), 4), ((6, 6, 2), 1), ((2, 3, 4), 1), ((1, 2, 3), 2)]
)
def test_tensor_product_against_dense_reference(degrees, features):
    # features == 1 takes the single-matrix path, the others the grouped per-pair one
    tp = TensorProduct(*degrees, features).double()
    assert tp.single_channel == (features == 1)
    with torch.no_grad():
        tp.weight.normal_()
    x = torch.randn(5, (degrees[0] + 1) ** 2, features, dtype=torch.float64)
    y = torch.randn(5, (degrees[1] + 1) ** 2, features, dtype=torch.float64)
    paths = allowed_paths(*degrees)
    expected = _dense_tensor_product(tp, x, y, paths)
    np.testing.assert_allclose(tp(x, y).detach(), expected.detach(), atol=1e-12)
    # gradients with respect to both inputs and the weights
    inputs = (x.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: tp(a, b), inputs)
    (grad,) = torch.autograd.grad(tp(x, y).square().sum(), tp.weight)
    (expected_grad,) = torch.autograd.grad(
        _dense_tensor_product(tp, x, y, paths).square().sum(), tp.weight
    )
    np.testing.assert_allclose(grad, expected_grad, atol=1e-10)


def test_single_channel_tensor_product_with_path_subset():
    # the even-parity subset of the Born-charge heads
    paths = [(1, 1, 0), (1, 1, 2), (2, 2, 0), (2, 0, 2)]
    tp = TensorProduct(2, 2, 2, 1, paths=paths).double()
    with torch.no_grad():
        tp.weight.normal_()
    x, y = torch.randn(4, 9, 1, dtype=torch.float64), torch.randn(4, 9, 1, dtype=torch.float64)
    expected = _dense_tensor_product(tp, x, y, paths)
    np.testing.assert_allclose(tp(x, y).detach(), expected.detach(), atol=1e-12)


def test_rank_one_tensor_product_equals_the_full_product():
    # the long-range mixing: a 1 -> F equivariant linear layer, then the product
    tp = TensorProduct(2, 3, 3, 4, rank_one=True).double()
    linear = EquivariantLinear(2, 1, 4).double()
    with torch.no_grad():
        tp.weight.normal_()
    v = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 16, 4, dtype=torch.float64, requires_grad=True)
    full = tp(linear(v.unsqueeze(-1)), y)
    fast = tp.rank_one(v, linear.weight[:, 0, :], y)
    np.testing.assert_allclose(fast.detach(), full.detach(), atol=1e-12)
    parameters = [v, y, tp.weight, linear.weight]
    expected = torch.autograd.grad(full.square().sum(), parameters)
    gradients = torch.autograd.grad(fast.square().sum(), parameters)
    for gradient, reference in zip(gradients, expected, strict=True):
        np.testing.assert_allclose(gradient, reference, atol=1e-10)


def test_density_from_the_neighbor_table_equals_the_sum_of_edge_features():
    from lorem_mta.modules.message_passing import (
        _SphericalCoefficients,
        _sum_over_neighbors,
        neighbor_table,
    )

    coefficients = _SphericalCoefficients(3, 16, 4).double()
    # unsorted centres; atoms 5 and 6 have no pairs
    centers = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(2))
    edges = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    harmonics = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    table = neighbor_table(centers, 7)
    assert table.shape == (7, int(torch.bincount(centers).max()))
    expected = _sum_over_neighbors(coefficients(edges, harmonics), centers, 7)
    density = coefficients.density_from_coefficients(
        coefficients.dense(edges), table, harmonics, table
    )
    torch.testing.assert_close(density, expected, rtol=1e-13, atol=1e-13)
    assert density[5:].abs().max() == 0
    assert torch.autograd.gradcheck(
        lambda e, y: coefficients.density_from_coefficients(
            coefficients.dense(e), table, y, table
        ),
        (edges, harmonics),
    )
    # no pairs at all
    empty = neighbor_table(torch.zeros(0, dtype=torch.long), 3)
    assert empty.shape == (3, 0)
    no_pairs = coefficients.density_from_coefficients(
        coefficients.dense(edges[:0]), empty, harmonics[:0], empty
    )
    assert no_pairs.abs().sum() == 0


def test_species_pair_shortcuts_equal_the_per_pair_radial_coefficients():
    from lorem_mta.modules.message_passing import _sum_by_species
    from lorem_mta.modules.radial import RadialCoefficients, apply_by_pair_type, sort_pairs

    torch.manual_seed(3)
    radial_coefficients = RadialCoefficients(4, 6, 5).double()
    embedding = torch.randn(3, 4, dtype=torch.float64)
    species_index = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    centers = torch.randint(0, 7, (30,))
    neighbors = torch.randint(0, 7, (30,))
    radial = torch.randn(30, 6, dtype=torch.float64)
    # the MLP on every pair (what the model computes in message-passing steps)
    per_pair = radial_coefficients(embedding[species_index], centers, neighbors, radial)

    matrices = radial_coefficients.pair_matrices(embedding)
    order, counts, inverse = sort_pairs(species_index, centers, neighbors, 3)
    by_type = apply_by_pair_type(radial, matrices, order, counts)
    torch.testing.assert_close(by_type[inverse], per_pair, rtol=1e-12, atol=1e-12)
    # sum over the neighbours from the radial basis summed per neighbour species
    expected = torch.zeros(7, 5, dtype=torch.float64).index_add(0, centers, per_pair)
    summed = _sum_by_species(matrices, species_index, centers, neighbors, radial, 3)
    torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("degrees,features", [((2, 2, 2), 4), ((1, 3, 2), 3), ((3, 1, 1), 2)])
def test_static_forms_equal_the_eager_forms(degrees, features):
    # what the compiled training step runs (static slices instead of index tensors)
    from lorem_mta.modules.spherical import degree_sums, static_degree_sums

    tp = TensorProduct(*degrees, features, rank_one=True).double()
    linear = EquivariantLinear(degrees[0], 3, features).double()
    # more than 8 input channels: one matrix product per degree
    wide = EquivariantLinear(degrees[0], 12, features).double()
    with torch.no_grad():
        tp.weight.normal_()
    x = torch.randn(5, (degrees[0] + 1) ** 2, features, dtype=torch.float64)
    y = torch.randn(5, (degrees[1] + 1) ** 2, features, dtype=torch.float64)
    v = torch.randn(5, (degrees[0] + 1) ** 2, dtype=torch.float64)
    scale = torch.randn(degrees[0] + 1, features, dtype=torch.float64)
    h = torch.randn(5, (degrees[0] + 1) ** 2, 3, dtype=torch.float64)
    pairs = [
        (lambda a, b: tp(a, b), lambda a, b: tp.static_forward(a, b), (x, y)),
        (
            lambda a, b: tp.rank_one(v, a, b),
            lambda a, b: tp.static_rank_one(v, a, b),
            (scale, y),
        ),
        (linear, linear.per_degree, (h,)),
        (wide, wide.per_degree, (torch.randn(5, h.shape[1], 12, dtype=torch.float64),)),
        (
            lambda a: degree_sums(a, degree_index(degrees[0]), degrees[0]),
            lambda a: static_degree_sums(a, degrees[0]),
            (x,),
        ),
    ]
    for eager, static, inputs in pairs:
        inputs = [t.clone().requires_grad_() for t in inputs]
        expected, result = eager(*inputs), static(*inputs)
        torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
        weights = torch.randn_like(expected)
        expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
        grads = torch.autograd.grad((result * weights).sum(), inputs)
        for grad, reference in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)
    # a path set that reaches no l = 1 output: zeros there
    subset = TensorProduct(2, 2, 2, 3, paths=[(1, 1, 0), (2, 2, 2)]).double()
    with torch.no_grad():
        subset.weight.normal_()
    x, y = torch.randn(4, 9, 3, dtype=torch.float64), torch.randn(4, 9, 3, dtype=torch.float64)
    torch.testing.assert_close(subset.static_forward(x, y), subset(x, y), rtol=0, atol=1e-12)
    assert subset.static_forward(x, y)[:, 1:4].abs().max() == 0


def test_compiled_branches_give_the_eager_numbers():
    # torch.compile takes the static branches (torch.compiler.is_compiling()); the
    # eager backend runs them without a C++ compiler
    from lorem_mta.modules.message_passing import _SphericalCoefficients, neighbor_table
    from lorem_mta.modules.spherical import norm_features

    torch.manual_seed(4)
    tp = TensorProduct(2, 2, 2, 4, rank_one=True).double()
    single = TensorProduct(2, 2, 2, 1).double()
    linear = EquivariantLinear(2, 4, 4).double()
    coefficients = _SphericalCoefficients(2, 6, 4).double()
    with torch.no_grad():
        tp.weight.normal_()
        single.weight.normal_()
    centers = torch.randint(0, 6, (30,), generator=torch.Generator().manual_seed(5))
    table = neighbor_table(centers, 7)
    degrees, factors = degree_index(2), torch.ones(3, dtype=torch.float64)

    def model(x, edges, harmonics):
        density = coefficients.density_from_coefficients(
            coefficients.dense(edges), table, harmonics, table
        )
        y = tp(linear(x), density)
        z = tp.rank_one(x[:, :, 0], linear.weight[:, 0, :], y)
        s = single(z[:, :, :1], y[:, :, 1:2])
        return norm_features(z, degrees, factors, 2, 0.1).sum() + s.square().sum()

    x = torch.randn(7, 9, 4, dtype=torch.float64, requires_grad=True)
    edges = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    harmonics = torch.randn(30, 9, dtype=torch.float64, requires_grad=True)
    inputs = (x, edges, harmonics)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    expected, result = model(*inputs), compiled(*inputs)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    expected_grads = torch.autograd.grad(expected, inputs)
    grads = torch.autograd.grad(result, inputs)
    for grad, reference in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, reference, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("num_radial", [3, 4, 8])
def test_bernstein_basis_by_products_equals_the_powers(num_radial):
    # the compiled training step's form of the basis, with its first and second
    # derivatives (force training)
    basis = BernsteinBasis(num_radial, 5.0).double()
    # inside (0, r_c): the second derivative of the powers is NaN at the ends
    r = torch.linspace(0.1, 4.9, 23, dtype=torch.float64, requires_grad=True)
    expected, result = basis(r), basis.by_products(r)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)
    weights = torch.randn_like(expected)
    (first,) = torch.autograd.grad((expected * weights).sum(), r, create_graph=True)
    (first_products,) = torch.autograd.grad((result * weights).sum(), r, create_graph=True)
    torch.testing.assert_close(first_products, first, rtol=1e-10, atol=1e-12)
    (second,) = torch.autograd.grad(first.square().sum(), r)
    (second_products,) = torch.autograd.grad(first_products.square().sum(), r)
    torch.testing.assert_close(second_products, second, rtol=1e-10, atol=1e-10)
