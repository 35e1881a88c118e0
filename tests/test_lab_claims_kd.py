"""Identities the KD labs (10 to 13) used to assert in their notebooks, now checked here once.

A lab's closing table judges what its run measured; what holds by construction (a limit, a closed
form equal to refitting, a schedule's floor, a teacher rebuilt from its seed) is a unit test: it cannot
fail for a reason a student could learn from, only for a bug.
"""

import math

import pytest
import torch

from distill_lab.cifar import kd_recipes as K
from distill_lab.cifar.classifiers import get_model
from distill_lab.cifar.data import normalize
from distill_lab.core.train import seed_everything
from distill_lab.methods import kd
from distill_lab.methods.kd import kernel_sd


def _centred(z):
    return z - z.mean(-1, keepdim=True)


# ------------------------------------------------------------------ lab 10: the T^2 factor
def test_t2_kl_tends_to_matching_centred_logits_and_so_does_its_gradient():
    """T^2 KL(softmax(t/T) || softmax(s/T)) -> |centred s - centred t|^2 / (2C), with an error O(1/T); the
    gradient of kd_loss (alpha = 1, mean over B) -> (centred s - centred t) / (C B): lab 10's dotted line."""
    g = torch.Generator().manual_seed(0)
    B, C = 32, 10
    s = torch.randn(B, C, generator=g, dtype=torch.float64) * 2 + 1
    t = torch.randn(B, C, generator=g, dtype=torch.float64) * 3 - 2
    limit = ((_centred(s) - _centred(t)) ** 2).sum(-1) / (2 * C)
    errs = [float((T * T * kd.kl_per_example(t, s, T) / limit - 1).abs().max()) for T in (1e2, 1e3, 1e4)]
    assert errs[2] < 1e-3 and errs[0] > 5 * errs[1] > 25 * errs[2]  # falls about tenfold per tenfold T
    grad_limit = (_centred(s) - _centred(t)) / (C * B)
    for T, tol in ((128.0, 0.05), (1e4, 1e-3)):
        z = s.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(kd.kd_loss(z, t, T=T, alpha=1.0)[0], z)
        assert abs(float(grad.norm() / grad_limit.norm()) - 1) < tol
        assert float(torch.nn.functional.cosine_similarity(grad.flatten(), grad_limit.flatten(), 0)) > 1 - tol


# ------------------------------------------------------------------ lab 11: kernel self-distillation
@pytest.fixture(scope="module")
def lab11_problem():
    """Lab 11's toy problem: 40 noisy samples, an RBF kernel with gamma 5, ridge 0.2, a 400-point test grid."""
    x, y, _ = kernel_sd.toy_problem(n=40, noise=0.5, seed=0)
    x_test = torch.linspace(-3, 3, 400, dtype=torch.float64)[:, None]
    return kernel_sd.kernel_matrix(x, gamma=5.0), y, kernel_sd.kernel_matrix(x_test, x, gamma=5.0), 0.2


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_lab11_closed_form_is_what_refitting_gives(lab11_problem, alpha):
    K_, y, K_test, c = lab11_problem
    cf, cf_test = kernel_sd.self_distill_closed_form(K_, y, c, alpha, 30, K_test=K_test)
    it, it_test = kernel_sd.self_distill_iterative(K_, y, c, alpha, 30, K_test=K_test)
    assert max(float((cf - it).abs().max()), float((cf_test - it_test).abs().max())) < 1e-6


def test_lab11_norm_falls_at_every_generation_without_labels(lab11_problem):
    K_, y, _, c = lab11_problem
    n0 = kernel_sd.collapse_curve(K_, y, c, 100, alpha=0.0)
    assert all(b < a for a, b in zip(n0, n0[1:]))


def test_idealised_anchored_recursion_contracts_by_at_least_one_minus_lambda():
    """Lab 11, part 3: KL is convex in its second argument, so each exact generation of the anchored
    recursion at least multiplies KL(base || q) by 1 - lambda (on lab-sized 10-class distributions)."""
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(500, 10, generator=g) * 3).softmax(-1)
    q0 = (torch.randn(500, 10, generator=g)).softmax(-1)
    for lam in (0.2, 0.5, 0.8):
        ratios = kd.generation_kls(kd.anchored_recursion(base, q0, lam, 6), base)["ratio"]
        assert len(ratios) == 6 and all(r <= 1 - lam + 1e-9 for r in ratios)


# ------------------------------------------------------------------ lab 12: the random teacher the slider rebuilds
class _ProbeExp:
    """A stand-in for CifarKD: fit() trains nothing, probe() records the networks it is shown."""

    def __init__(self):
        self.cfg = type("C", (), {"student": "tiny_cnn"})()
        self.device = "cpu"
        self.probed = []
        self.x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def fit(self, model, seed, desc="", batch_loss=None):
        self.batch_loss = batch_loss

    def probe(self, model):
        self.probed.append(model)
        return 0.0

    def pixel_probe(self):
        return 0.0


def test_lab12_rebuilds_the_recipes_random_teacher_from_its_seed():
    exp = _ProbeExp()
    K.train_random_teacher(exp, seed=3, out_dim=32, teacher_seed_offset=10_000)
    teacher = exp.probed[1]  # the recipe probes the student, then its teacher
    seed_everything(3 + 10_000)  # what lab 12 does before rebuilding it
    rebuilt = K.Projected(get_model("tiny_cnn"), 32)
    for (name, a), b in zip(teacher.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in teacher.parameters())


def test_random_teacher_recipe_uses_its_teacher_temperature_and_records_the_targets_information():
    exp = _ProbeExp()
    extra = K.train_random_teacher(exp, seed=3, out_dim=32, teacher_temp=0.005)[1]
    student, teacher = exp.probed
    x = normalize(exp.x)
    with torch.no_grad():
        want_info = kd.output_information(teacher.project(x), 0.005)
        torch.manual_seed(5)
        got = exp.batch_loss(student, x, None, None)[0]
        torch.manual_seed(5)
        view = K._second_view(x)  # the same random crop and flip
        want = kd.random_teacher_loss(student.project(view), teacher.project(x), teacher_temp=0.005)[0]
        default = kd.random_teacher_loss(student.project(view), teacher.project(x))[0]
    torch.testing.assert_close(got, want)
    assert abs(float(want - default)) > 1e-3  # the temperature matters for this check to mean anything
    assert extra["teacher_information"] == pytest.approx(want_info["mutual_information"])
    assert extra["max_information"] == pytest.approx(math.log(6))


# ------------------------------------------------------------------ lab 13: TAID's schedule
def test_taid_t_never_decreases_and_never_falls_below_its_linear_floor():
    """Lab 13 plotted t against its floor; here with a loss that rises and falls, as a noisy run's does."""
    g = torch.Generator().manual_seed(2)
    losses = (2.0 * torch.exp(-torch.arange(300) / 80.0) + 0.3 * torch.rand(300, generator=g)).tolist()
    sched = kd.TAIDSchedule(total_steps=300, t_start=0.4, alpha=0.02)
    ts, floors = [sched.t], [sched.t_linear(0)]
    for n, loss in enumerate(losses, 1):
        ts.append(sched.step(loss))
        floors.append(sched.t_linear(n))
    assert all(b >= a - 1e-12 for a, b in zip(ts, ts[1:]))
    assert all(t >= f - 1e-12 for t, f in zip(ts, floors))
    assert math.isclose(ts[-1], 1.0) and any(t > f + 1e-3 for t, f in zip(ts, floors))  # it ran ahead somewhere
