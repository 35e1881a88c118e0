"""Offline sample-quality metrics: the Fréchet distance against its closed forms, precision/recall on
sets whose answer is known by construction, noise floors, and classifier features of images."""

import math

import pytest
import torch

from distill_lab.cifar import features as feat
from distill_lab.cifar.classifiers import TinyCNN
from distill_lab.cifar.data import normalize
from distill_lab.metrics import frechet as gm


def random_rotation(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def with_moments(n, mean, cov, g):
    """``n`` samples whose empirical mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, mean.shape[0], generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = torch.linalg.solve_triangular(chol, z.T, upper=False).T      # empirical covariance I
    return mean + white @ gm._psd_sqrt(cov)


# ------------------------------------------------------------------ Fréchet distance
def test_fd_of_gaussians_with_commuting_covariances_is_closed_form():
    """Same eigenvectors: FD = |m1 - m2|^2 + sum_i (sqrt(l1_i) - sqrt(l2_i))^2."""
    g = torch.Generator().manual_seed(0)
    d = 6
    q = random_rotation(d, g)
    l1, l2 = torch.rand(d, generator=g, dtype=torch.float64) * 3, torch.rand(d, generator=g, dtype=torch.float64) * 3
    m1, m2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    exact = float((m1 - m2).pow(2).sum() + (l1.sqrt() - l2.sqrt()).pow(2).sum())
    assert gm.frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-10)
    # and from samples whose empirical moments are exactly these
    a, b = with_moments(500, m1, s1, g), with_moments(300, m2, s2, g)
    assert gm.frechet_distance(a, b) == pytest.approx(exact, rel=1e-9)


def test_fd_in_two_dimensions_matches_the_closed_form_for_non_commuting_covariances():
    """For a 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M = S1^1/2 S2 S1^1/2,
    tr M = tr(S1 S2) and det M = det S1 det S2."""
    s1 = torch.tensor([[2.0, 0.7], [0.7, 0.5]], dtype=torch.float64)
    s2 = torch.tensor([[0.3, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    m1, m2 = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64)
    cross = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
    exact = float((m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2)) - 2 * cross
    assert gm.frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-12)


def test_fd_is_a_squared_distance_zero_symmetric_and_rotation_invariant():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(300, 5, generator=g, dtype=torch.float64) * 2
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert gm.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert gm.frechet_distance(a, a + c) == pytest.approx(float(c.pow(2).sum()), rel=1e-9)  # shift only the mean
    assert gm.frechet_distance(a, b) == pytest.approx(gm.frechet_distance(b, a), rel=1e-9)
    r = random_rotation(5, g)
    assert gm.frechet_distance(a @ r, b @ r) == pytest.approx(gm.frechet_distance(a, b), rel=1e-9)


def test_fd_is_finite_and_exact_on_rank_deficient_covariances():
    """Features confined to a 3-dim subspace of 8 (singular covariances): FD equals the FD of the
    3-dim coordinates, since an isometric embedding preserves means and the Gaussians' W2."""
    g = torch.Generator().manual_seed(2)
    u = random_rotation(8, g)[:, :3]                                     # orthonormal columns
    a = torch.randn(200, 3, generator=g, dtype=torch.float64)
    b = torch.randn(200, 3, generator=g, dtype=torch.float64) * 1.5 + 0.3
    low = gm.frechet_distance(a, b)
    high = gm.frechet_distance(a @ u.T, b @ u.T)
    assert math.isfinite(high) and high == pytest.approx(low, rel=1e-7)
    dup = gm.frechet_distance(torch.cat([a, a[:, :1]], 1), torch.cat([b, b[:, :1]], 1))  # a copied feature
    assert math.isfinite(dup) and dup >= low


def test_fd_rejects_bad_input_and_warns_on_too_few_samples():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        gm.frechet_distance(torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="different spaces"):
        gm.frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gm.frechet_distance(torch.zeros(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        gm.frechet_distance(torch.full((10, 3), float("nan")), torch.randn(10, 3))
    with pytest.warns(UserWarning, match="rank-deficient"):
        gm.frechet_distance(torch.randn(5, 8), torch.randn(50, 8))


# ------------------------------------------------------------------ precision and recall
def test_identical_sets_have_precision_and_recall_one_and_far_sets_zero():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 4, generator=g)
    assert gm.precision_recall(x, x.clone()) == (1.0, 1.0)
    # 1,000 standard deviations apart: no ball of one set reaches the other
    assert gm.precision_recall(x, x + 1000.0) == (0.0, 0.0)


def test_mode_dropping_keeps_precision_and_loses_exactly_the_dropped_share_of_recall():
    """Real data: two far-apart clusters. A generator that reproduces cluster A's points only is
    inside the real manifold (precision 1) and covers exactly the real points of A (recall |A| / N)."""
    g = torch.Generator().manual_seed(4)
    cluster_a = torch.randn(120, 3, generator=g)
    cluster_b = torch.randn(80, 3, generator=g) + 100.0
    real = torch.cat([cluster_a, cluster_b])
    p, r = gm.precision_recall(real, cluster_a.clone(), k=3)
    assert p == 1.0 and r == pytest.approx(120 / 200, abs=1e-12)


def test_precision_and_recall_swap_when_the_sets_swap():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(150, 4, generator=g), torch.randn(100, 4, generator=g) * 1.5 + 0.5
    p, r = gm.precision_recall(a, b)
    assert gm.precision_recall(b, a) == (r, p)
    assert gm.precision_recall(a, b, batch_size=7) == (p, r)  # chunking changes nothing


def test_precision_recall_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="more than 3"):
        gm.precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)
    with pytest.raises(ValueError, match="positive"):
        gm.precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=0)


# ------------------------------------------------------------------ noise floors
def test_fd_noise_floor_in_one_dimension_matches_its_expectation():
    """Two independent samples of n from N(0, 1): FD = (m1 - m2)^2 + (s1 - s2)^2 with
    E (m1 - m2)^2 = 2 / n and E (s1 - s2)^2 = 2 Var(s) = 2 (1 - c4^2), where E s = c4 (the unbiased
    standard deviation's bias factor, c4 = sqrt(2 / (n - 1)) Gamma(n / 2) / Gamma((n - 1) / 2))."""
    n, reps = 40, 1500
    c4 = math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))
    expected = 2 / n + 2 * (1 - c4 ** 2)
    g = torch.Generator().manual_seed(6)
    floors = torch.tensor([gm.fd_noise_floor(torch.randn(2 * n, 1, generator=g), n, seed=i) for i in range(reps)])
    se = float(floors.std()) / math.sqrt(reps)
    assert abs(float(floors.mean()) - expected) < 4 * se


def test_noise_floors_draw_disjoint_halves_reproducibly_and_say_when_data_is_short():
    a, b = gm.disjoint_halves(100, 50, seed=0)
    assert len(set(a.tolist()) | set(b.tolist())) == 100
    x = torch.randn(100, 3)
    assert gm.fd_noise_floor(x, 50, seed=1) == gm.fd_noise_floor(x, 50, seed=1)
    assert gm.pr_noise_floor(x, 50, seed=1) == gm.pr_noise_floor(x, 50, seed=1)
    with pytest.raises(ValueError, match="2n <= 100"):
        gm.fd_noise_floor(x, 51)


def test_evaluate_features_scores_a_perfect_sampler_exactly_at_the_floor():
    """Hand it the other real half as the 'generated' set: every number equals its floor."""
    g = torch.Generator().manual_seed(7)
    real = torch.randn(400, 4, generator=g, dtype=torch.float64)
    _, b = gm.disjoint_halves(400, 150, seed=3)
    out = gm.evaluate_features(real, real[b], seed=3)
    assert out["n"] == 150
    assert out["fd"] == out["fd_floor"]
    assert (out["precision"], out["recall"]) == (out["precision_floor"], out["recall_floor"])
    # shifting the generated set by c moves only the mean term: |m_B + c - m_A|^2 - |m_B - m_A|^2
    a, _ = gm.disjoint_halves(400, 150, seed=3)
    c = torch.full((4,), 3.0, dtype=torch.float64)
    shifted = gm.evaluate_features(real, real[b] + c, seed=3)
    gap = (real[b].double().mean(0) - real[a].double().mean(0))
    expected = out["fd_floor"] + float(c.double().pow(2).sum() + 2 * (c.double() * gap).sum())
    assert shifted["fd"] == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ images -> features
def test_uint8_and_float_conventions_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = feat.from_uint8(pixels)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(feat.to_uint8(x), pixels)
    assert torch.equal(feat.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))  # clipped
    assert torch.allclose(feat.to_classifier_input(x, quantize=False), normalize(pixels), atol=1e-5)
    assert torch.equal(feat.to_classifier_input(x), normalize(pixels))


def test_classifier_features_take_either_image_kind_and_leave_the_model_alone():
    torch.manual_seed(0)
    model = TinyCNN().train()
    for m in model.modules():  # non-trivial running statistics, to see that they stay untouched
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn = feat.ClassifierFeatures(model, batch_size=7)
    pixels = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    f = fn(pixels)
    assert f.shape == (20, fn.dim) and f.dtype == torch.float64
    assert torch.equal(f, fn(feat.from_uint8(pixels)))          # [-1, 1] floats take the uint8 path
    model.eval()
    with torch.no_grad():
        assert torch.allclose(f, model.features(normalize(pixels)).double(), atol=1e-6)
    assert model.train() and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert fn(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)).shape == (4, fn.dim)  # resized to 32
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        fn(torch.zeros(4, 1, 32, 32))
    with pytest.raises(ValueError, match="uint8 pixels or floats"):
        fn(torch.zeros(4, 3, 32, 32, dtype=torch.int32))


def test_evaluate_samples_takes_any_feature_function():
    """The hook a standard FID package's Inception features would plug into."""
    g = torch.Generator().manual_seed(8)
    real = torch.rand(200, 3, 8, 8, generator=g) * 2 - 1
    fake = torch.rand(50, 3, 8, 8, generator=g) * 2 - 1
    mean_colour = lambda x: x.mean((2, 3))  # noqa: E731  (a toy feature network)
    out = gm.evaluate_samples(real, fake, mean_colour)
    assert set(out) == {"n", "fd", "fd_floor", "precision", "recall", "precision_floor", "recall_floor"}
    assert out["fd"] == gm.frechet_distance(mean_colour(fake), mean_colour(real)[gm.disjoint_halves(200, 50, 0)[0]])
