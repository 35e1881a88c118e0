"""The image U-Net: TimeMLP's calling convention, a copy that starts as the teacher's Euler step,
forward-mode derivatives, and the two attention kinds."""

import math

import pytest
import torch

from distill_lab.methods.step.students import ConsistencyFunction, FlowMap, OneStepGenerator
from distill_lab.nets.attention import Attention, mix_tokens
from distill_lab.nets.unet import TimeUNet
from distill_lab.nets.utils import n_params


def tiny(**kw):
    """A net small enough for float64 finite differences in a fraction of a second."""
    return TimeUNet(**{"base": 8, "mults": (1, 2), **kw})


# ------------------------------------------------------------------ calling convention
@pytest.mark.parametrize("mults,size,blocks", [((1, 2), 16, 1), ((1, 2, 2), 32, 1), ((1,), 6, 1), ((1, 2), 8, 2)])
def test_output_is_shaped_like_x_for_any_number_of_resolutions(mults, size, blocks):
    net = TimeUNet(base=8, mults=mults, blocks=blocks)
    x = torch.randn(3, 3, size, size)
    assert net(x, torch.rand(3)).shape == x.shape
    assert net(x, 0.5).shape == x.shape  # a scalar time is repeated over the batch (flows.batch_t)
    assert torch.allclose(net(x, 0.5), net(x, torch.full((3,), 0.5)))


def test_wrappers_take_the_unet_and_keep_their_boundary_conditions():
    x, s = torch.randn(4, 3, 8, 8), torch.rand(4)
    fm = FlowMap(tiny(n_times=2))
    assert torch.equal(fm(x, s, s), x)
    assert torch.equal(ConsistencyFunction(tiny())(x, torch.ones(4)), x)
    assert OneStepGenerator(tiny())(x).shape == x.shape


def test_bad_inputs_raise_clear_errors():
    net = tiny(n_times=2)
    with pytest.raises(ValueError, match="takes 2 time argument"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        net(torch.zeros(2, 192), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.zeros(2, 3, 7, 8), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown attention kind"):
        TimeUNet(attention=True, attn_kind="flash")
    with pytest.raises(ValueError, match="only add time inputs"):
        TimeUNet.from_net(net, 1)


# ------------------------------------------------------------------ the copy that starts as the teacher
@pytest.mark.parametrize("attention", [False, True])
def test_from_net_starts_as_the_teachers_euler_step(attention):
    torch.manual_seed(0)
    teacher = tiny(attention=attention).double()
    fm = FlowMap(TimeUNet.from_net(teacher, 2))
    x, s, t = torch.randn(4, 3, 8, 8).double(), torch.rand(4).double(), torch.rand(4).double()
    v = teacher(x, s)
    assert torch.allclose(fm.net(x, s, t), v, atol=1e-12)           # V(x, s, t) = v(x, s)
    assert torch.allclose(fm.velocity(x, s), v, atol=1e-12)         # the diagonal is the teacher
    euler = x + (t - s).view(-1, 1, 1, 1) * v
    assert torch.allclose(fm(x, s, t), euler, atol=1e-12)           # one Euler step from s to t
    # a copy, not a view: training the student leaves the teacher alone
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(fm.net.parameters(), teacher.parameters()))


def test_the_new_time_input_starts_at_zero_but_learns():
    torch.manual_seed(0)
    student = TimeUNet.from_net(tiny(), 2)
    w = student.time_mlp[0].weight
    d = student.time.dim
    assert torch.equal(w[:, d:], torch.zeros_like(w[:, d:]))
    x, s, t = torch.randn(4, 3, 8, 8), torch.rand(4), torch.rand(4)
    student(x, s, t).pow(2).mean().backward()
    assert w.grad[:, d:].abs().sum() > 0


# ------------------------------------------------------------------ derivatives
@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_jvps_through_the_unet_match_finite_differences(kind):
    torch.manual_seed(0)
    fm = FlowMap(tiny(n_times=2, attention=True, attn_kind=kind)).double()
    x, s, t = torch.randn(3, 3, 8, 8).double(), torch.rand(3).double(), torch.rand(3).double()
    h = 1e-6  # float64 central differences: error O(h^2) times third derivatives, far below atol
    _, dt = fm.jvp_t(x, s, t)
    assert torch.allclose(dt, (fm(x, s, t + h) - fm(x, s, t - h)) / (2 * h), atol=1e-6)
    _, ds = fm.jvp_s(x, s, t)
    assert torch.allclose(ds, (fm(x, s + h, t) - fm(x, s - h, t)) / (2 * h), atol=1e-6)
    v = torch.randn_like(x)
    _, dx = fm.jvp_x(x, s, t, v)
    assert torch.allclose(dx, (fm(x + h * v, s, t) - fm(x - h * v, s, t)) / (2 * h), atol=1e-6)


def test_time_features_have_bounded_derivative():
    """|d/dt [t, sin(w t), cos(w t)]| <= max(1, w_max) with w_max = pi 2^(n_freq - 1): the bound the
    module docstring promises, reached where cos(w_max t) = +-1."""
    for n_freq in (3, 5):
        feats = TimeUNet(base=8, n_freq=n_freq).time
        t = torch.linspace(0, 1, 4097, dtype=torch.float64)
        _, dfeat = torch.func.jvp(feats, (t,), (torch.ones_like(t),))
        w_max = math.pi * 2 ** (n_freq - 1)
        assert dfeat.abs().max() <= w_max * (1 + 1e-6)  # the frequencies are stored in float32
        assert dfeat.abs().max() >= w_max * math.cos(math.pi * 2 ** n_freq / 4096)  # grid resolution


# ------------------------------------------------------------------ attention
@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_attention_weights_are_normalised(kind):
    """Each query's weights sum to one, so values equal at every position come back unchanged."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 4).double(), torch.randn(2, 3, 10, 4).double()
    v = torch.randn(2, 3, 1, 5).double().expand(2, 3, 10, 5)
    assert torch.allclose(mix_tokens(q, k, v, kind, eps=0.0), v, atol=1e-12)


def test_linear_attention_is_the_normalised_kernel_weighting_computed_in_linear_time():
    """phi(q) (phi(k)^T v) / (phi(q) . sum phi(k)) equals sum_j w_ij v_j with the explicit N x N
    weights w_ij = phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j') (Katharopoulos et al. 2020)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 4).double() for _ in range(3))
    phi = lambda u: torch.nn.functional.elu(u) + 1  # noqa: E731
    w = phi(q) @ phi(k).transpose(-1, -2)
    w = w / w.sum(-1, keepdim=True)
    assert torch.allclose(mix_tokens(q, k, v, "linear", eps=0.0), w @ v, atol=1e-12)


def test_softmax_attention_matches_torchs_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, 4).double() for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(mix_tokens(q, k, v, "softmax"), ref, atol=1e-12)


def test_a_softmax_teacher_loads_into_a_linear_attention_student():
    torch.manual_seed(0)
    teacher = tiny(attention=True, attn_kind="softmax")
    student = TimeUNet.from_net(teacher, attn_kind="linear")
    assert student.attn.kind == "linear" and teacher.attn.kind == "softmax"
    sd_t, sd_s = teacher.state_dict(), student.state_dict()
    assert sd_t.keys() == sd_s.keys() and all(torch.equal(sd_t[key], sd_s[key]) for key in sd_t)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert not torch.allclose(student(x, t), teacher(x, t))  # the token mixer did change
    student.attn.kind = "softmax"
    assert torch.allclose(student(x, t), teacher(x, t))      # and it is the only change
    with pytest.raises(ValueError, match="heads do not divide"):
        Attention(10, heads=3)


# ------------------------------------------------------------------ size
def count(channels, base, mults, n_times=1, n_freq=5, emb=None, attention=False):
    """Parameters of the architecture the module docstring describes (blocks=1), counted by hand."""
    emb = emb or 4 * base
    conv = lambda i, o, k: i * o * k * k + o      # noqa: E731
    lin = lambda i, o: i * o + o                    # noqa: E731
    res = lambda i, o: 2 * i + conv(i, o, 3) + lin(emb, o) + 2 * o + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)  # noqa: E731
    widths = [base * m for m in mults]
    total = lin(n_times * (1 + 2 * n_freq), emb) + lin(emb, emb) + conv(channels, base, 3)
    c = base
    for i, w in enumerate(widths):
        total += res(c, w) + (conv(w, w, 3) if i < len(widths) - 1 else 0)
        c = w
    total += 2 * res(c, c) + (2 * c + conv(c, 3 * c, 1) + conv(c, c, 1) if attention else 0)
    for w, skip in zip(reversed(widths), reversed(widths)):
        total += res(c + skip, w)
        c = w
    return total + 2 * c + conv(c, channels, 3)


@pytest.mark.parametrize("kw", [dict(base=32, mults=(1, 2)), dict(base=16, mults=(1, 4), attention=True),
                                dict(base=16, mults=(1, 3)), dict(base=64, mults=(1, 2, 2), n_times=2)])
def test_parameter_count_matches_the_architecture_counted_by_hand(kw):
    net = TimeUNet(**kw)
    expected = count(3, kw["base"], kw["mults"], kw.get("n_times", 1), attention=kw.get("attention", False))
    print(f"TimeUNet({kw}): {n_params(net):,} parameters")
    assert n_params(net) == expected
