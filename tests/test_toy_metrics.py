"""The toy track's sharper metrics and sharper teacher: the exact W2 (POT), the k-NN precision and recall
on points, the checkerboard's off-cell mass, the Fourier features of x and the teacher's late times.

Analytic cases: the exact W2 between a set and itself is 0, between a set and its translate is the
translation's length, in 1D it is the distance between sorted values, and it bounds the sliced W2 from
above; the precision falls for a blurred sampler and the recall for one that misses cells, while the
sliced W2 moves less."""

import json
import math

import pytest
import torch

from distill_lab.core.bench import TOY_ROW_KEYS, format_step_table
from distill_lab.core.scale import Scale
from distill_lab.metrics.samples import exact_w2, get_metric, sliced_w2
from distill_lab.nets.mlp import FourierSpace, TimeMLP
from distill_lab.toy2d.data import checkerboard_off_cells, sample_data
from distill_lab.toy2d.experiment import Toy2D, committed_teacher_dir, teacher_times, train_flow_teacher


def test_exact_w2_is_zero_on_a_set_and_itself_and_symmetric():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    y = torch.randn(300, 2, generator=torch.Generator().manual_seed(1)) * 1.5
    assert exact_w2(x, x) == 0.0
    assert exact_w2(x, y) == pytest.approx(exact_w2(y, x), rel=1e-9)
    assert exact_w2(x, y) > 0.1


def test_exact_w2_of_a_translate_is_the_translation_length():
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(2))
    shift = torch.tensor([0.3, -0.4])
    assert exact_w2(x, x + shift) == pytest.approx(0.5, abs=1e-6)


def test_exact_w2_in_one_dimension_matches_sorted_values():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(500, 1, generator=g), torch.randn(500, 1, generator=g)
    sorted_gap = (x.sort(0).values - y.sort(0).values).pow(2).mean().sqrt().item()
    assert exact_w2(x, y) == pytest.approx(sorted_gap, rel=1e-6)
    # mean of squares, not sum: the same points repeated give the same distance
    assert exact_w2(torch.cat([x, x]), torch.cat([y, y]), max_n=1000) == pytest.approx(sorted_gap, rel=1e-6)


def test_exact_w2_bounds_the_sliced_w2_and_uses_only_max_n_points():
    g = torch.Generator().manual_seed(4)
    x = sample_data("checkerboard", 800, seed=5)
    y = x + 0.2 * torch.randn(800, 2, generator=g)
    assert sliced_w2(x, y, n_proj=512) <= exact_w2(x, y, max_n=800) + 1e-6
    far = torch.cat([y[:100], y[100:] + 50.0])  # points past max_n do not count
    assert exact_w2(x, far, max_n=100) == pytest.approx(exact_w2(x[:100], y[:100]), rel=1e-9)
    assert get_metric("exact_w2") is exact_w2


def test_exact_w2_refuses_bad_input():
    with pytest.raises(ValueError, match="different spaces"):
        exact_w2(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        exact_w2(torch.zeros(5, 2), torch.full((5, 2), float("nan")))
    with pytest.raises(ValueError, match="max_n"):
        exact_w2(torch.zeros(5, 2), torch.zeros(5, 2), max_n=0)


def test_off_cells_is_zero_for_data_and_counts_bleed_exactly():
    data = sample_data("checkerboard", 5000, seed=0)
    assert checkerboard_off_cells(data) == 0.0
    # the centres of the eight empty cells, and two points beyond the board, against two cell centres
    centres = torch.tensor([[i + 0.5, j + 0.5] for i in range(-2, 2) for j in range(-2, 2)]) * 0.9
    parity = (torch.floor(centres[:, 0] / 0.9) % 2) == (torch.floor(centres[:, 1] / 0.9) % 2)
    empty, full = centres[~parity], centres[parity]
    assert checkerboard_off_cells(empty) == 1.0 and checkerboard_off_cells(full) == 0.0
    pts = torch.cat([full[:2], empty[:1], torch.tensor([[3.0, 0.45]])])
    assert checkerboard_off_cells(pts) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        checkerboard_off_cells(torch.zeros(4, 3))


TINY = Scale("ci", teacher_steps=60, width=32, depth=2, batch=256, student_steps=10, eval_n=1500, n_proj=64,
             device="cpu")


@pytest.fixture(scope="module")
def exp():
    return Toy2D("checkerboard", scale=TINY, cache=False, progress=False, sharp_metrics=True)


def test_sharp_metrics_see_bleed_and_missing_cells(exp):
    data = exp.sample_data(1500, 99)
    floor = exp.sharp_floor
    assert floor["w2"] > 0 and 0.9 < floor["precision"] <= 1 and 0.9 < floor["recall"] <= 1
    blurred = exp.sharp(data + 0.25 * torch.randn(1500, 2, generator=torch.Generator().manual_seed(1)))
    assert blurred["precision"] < floor["precision"] - 0.1 and blurred["w2"] > floor["w2"]
    one_half = data[data[:, 0] > 0]  # four of the eight cells, drawn twice as densely
    half = exp.sharp(torch.cat([one_half, one_half])[:1500])
    assert half["recall"] < floor["recall"] - 0.3 and half["precision"] > floor["precision"] - 0.05
    # evaluate reports them, and the bench's rows and table carry them beside their floors
    ev = exp.evaluate(lambda z: data)
    assert ev["w2"] == pytest.approx(exp.sharp(data)["w2"]) and ev["recall"] == pytest.approx(exp.sharp(data)["recall"])
    plain = Toy2D("checkerboard", scale=TINY, cache=False, progress=False)  # off unless asked for
    assert "w2" not in plain.evaluate(lambda z: data)


def test_bench_rows_carry_the_sharp_metrics(exp):
    from distill_lab.toy2d.bench import run_toy2d

    rows = run_toy2d(exp=exp, methods=[], progress=False)
    assert rows and all(set(TOY_ROW_KEYS) <= set(r) for r in rows)
    r64 = next(r for r in rows if r["nfe"] == 64)
    r1 = next(r for r in rows if r["nfe"] == 1)
    assert r64["w2_floor"] == exp.sharp_floor["w2"] and r64["recall_floor"] == exp.sharp_floor["recall"]
    from distill_lab.core.flows import sample_ode

    for r, n in ((r1, 1), (r64, 64)):  # each row's figures are those of the teacher's own samples at its NFE
        assert r["w2"] == pytest.approx(exp.sharp(sample_ode(exp.velocity, exp.eval_noise, n, "euler"))["w2"])
    assert r1["w2"] != r64["w2"]
    table = format_step_table(rows)
    assert "W2" in table.splitlines()[0] and f"W2 {exp.sharp_floor['w2']:.4f}" in table


def test_fourier_space_features_and_the_copied_student():
    fs = FourierSpace(3, period=2.0)
    x = torch.tensor([[0.5, -1.0]])
    f = fs(x)
    assert f.shape == (1, fs.dim(2)) == (1, 14)
    assert torch.allclose(f[0, :2], x[0])
    assert f[0, 2].item() == pytest.approx(math.sin(2 * math.pi * 0.5 / 2.0), abs=1e-6)  # k=0, x_1
    assert f[0, 3].item() == pytest.approx(math.sin(2 * math.pi * 2 * 0.5 / 2.0), abs=1e-6)  # k=1, x_1
    assert f[0, 8].item() == pytest.approx(math.cos(2 * math.pi * 0.5 / 2.0), abs=1e-6)
    assert torch.equal(FourierSpace(0)(x), x)
    with pytest.raises(ValueError, match="n_freq"):
        FourierSpace(-1)
    net = TimeMLP(2, 16, 2, x_freq=4, x_period=3.6)
    two = TimeMLP.from_net(net, 2)
    assert two.space.n_freq == 4 and two.space.period == 3.6
    z, t = torch.randn(8, 2), torch.rand(8)
    assert torch.allclose(two(z, t, torch.rand(8)), net(z, t), atol=1e-6)  # the extra time starts at zero weight


def test_teacher_times_late_leans_to_the_data_end():
    g = torch.Generator().manual_seed(0)
    late = teacher_times(200_000, "late", generator=g)
    assert late.min() >= 0 and late.max() <= 1
    assert late.mean().item() == pytest.approx(2 / 3, abs=0.005)  # E[1 - (1 - u)^2] = 2/3
    assert (late > 0.75).float().mean().item() == pytest.approx(0.5, abs=0.005)  # P(t > 3/4) = 1 - 1/2
    assert teacher_times(100_000, "uniform", generator=g).mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="unknown time sampling 'early'"):
        teacher_times(4, "early")
    with pytest.raises(ValueError, match="unknown time sampling"):
        train_flow_teacher(TimeMLP(2, 8, 1), "moons", steps=5, batch=8, times="early", progress=False)


def test_teacher_ema_leaves_the_average_of_the_weights():
    def run(steps, ema=0.0):
        torch.manual_seed(0)
        net = TimeMLP(2, 8, 1)
        train_flow_teacher(net, "moons", steps=steps, batch=16, seed=3, ema=ema, progress=False)
        return net

    torch.manual_seed(0)
    w0 = TimeMLP(2, 8, 1).state_dict()
    w1, w2, avg = run(1).state_dict(), run(2).state_dict(), run(2, ema=0.5).state_dict()
    for k in w0:  # avg = 0.5 (0.5 w0 + 0.5 w1) + 0.5 w2: the decay weighs the old average, not the new weights
        assert torch.allclose(avg[k], 0.25 * w0[k] + 0.25 * w1[k] + 0.5 * w2[k], atol=1e-6), k
    assert not torch.allclose(avg["net.0.weight"], w2["net.0.weight"])
    with pytest.raises(ValueError, match="ema is a decay"):
        train_flow_teacher(TimeMLP(2, 8, 1), "moons", steps=2, batch=8, ema=1.0, progress=False)


def test_teacher_ablation_trains_and_measures_each_variant(capsys):
    from distill_lab.toy2d import teacher

    res = teacher.ablation(TINY, variants=["before", "now"], progress=False)
    before, now = res["rows"]
    assert (before["variant"], now["variant"]) == ("before", "now")
    for r in res["rows"]:
        assert 0 <= r["off_cells"] <= 1 and 0 <= r["precision"] <= 1 and r["w2"] > 0 and r["seconds"] > 0
    assert res["floor"]["off_cells"] == 0.0 and res["floor"]["w2"] == pytest.approx(res["floor"]["w2"])
    net, _ = teacher.train_variant(Toy2D("checkerboard", scale=TINY, cache=False, progress=False),
                                   teacher.VARIANTS["now"][1])
    assert net.space.n_freq == 4 and teacher.VARIANTS["before"][1]["x_freq"] == 0
    table = teacher.format_ablation(res)
    assert table.splitlines()[-1].startswith("data") and "before" in table and "%" in table
    with pytest.raises(ValueError, match="unknown teacher variant"):
        teacher.ablation(TINY, variants=["sharpest"], progress=False)
    assert teacher.main(["--variants", "sharpest", "--quiet"]) == 2
    assert "unknown teacher variant" in capsys.readouterr().err


def test_a_committed_teacher_is_loaded_only_with_its_own_settings(tmp_path, monkeypatch):
    import distill_lab.toy2d.experiment as ex
    from distill_lab.toy2d import teacher

    monkeypatch.setattr(ex, "TEACHERS_DIR", tmp_path)
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    folder = teacher.commit_teacher(TINY, progress=False)
    assert folder == tmp_path / "toy2d_checkerboard_ci"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["steps"] == TINY.teacher_steps and manifest["steps"] == TINY.teacher_steps
    assert 0 <= manifest["quality"]["precision"] <= 1 and manifest["floor"]["off_cells"] == 0.0
    saved = torch.load(folder / "teacher.pt", weights_only=True)
    exp = Toy2D("checkerboard", scale=TINY, progress=False)
    assert exp.teacher_source == "committed: toy2d_checkerboard_ci" and exp.teacher_history is None
    for k, v in exp.teacher.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # another seed (or any other setting) is another teacher: trained, not the committed one
    other = Toy2D("checkerboard", scale=TINY, seed=1, progress=False)
    assert other.teacher_source == "trained" and other.teacher_history is not None
    assert not torch.equal(other.teacher.state_dict()["net.0.weight"], saved["net.0.weight"])
    # a changed file is refused with the command that rebuilds it
    state = dict(saved)
    state["net.0.weight"] = state["net.0.weight"] + 1
    torch.save(state, folder / "teacher.pt")
    with pytest.raises(ex.ToyTeacherUnavailable, match="sha256.*--commit --scale ci"):
        Toy2D("checkerboard", scale=TINY, progress=False)
    with pytest.raises(ValueError, match="built-in dataset"):
        teacher.commit_teacher(TINY, data=lambda n: torch.zeros(n, 2), progress=False)


@pytest.mark.parametrize("scale", ["ci", "default"])
def test_the_committed_toy_teachers_are_current_and_sharp(scale):
    """Each committed teacher was made with the settings the code builds now (else the labs would train
    one again: rerun `python -m distill_lab.toy2d.teacher --commit --scale SCALE`), and its recorded
    precision and recall are within 5 points of the second data draw's."""
    exp = Toy2D("checkerboard", scale=scale, progress=False)
    assert exp.teacher_source == f"committed: toy2d_checkerboard_{scale}", exp.teacher_source
    manifest = json.loads((committed_teacher_dir("checkerboard", scale) / "manifest.json").read_text())
    q, f = manifest["quality"], manifest["floor"]
    assert f["precision"] - q["precision"] < 0.05 and f["recall"] - q["recall"] < 0.05, (q, f)
    assert q["off_cells"] < 0.06


def test_sliced_w2_with_the_reference_sorted_once_is_the_same_distance():
    from distill_lab.metrics.samples import sliced_quantiles

    g = torch.Generator().manual_seed(5)
    y = torch.randn(700, 2, generator=g)
    ref = sliced_quantiles(y, 64, seed=2)
    for n in (700, 300, 1200):  # equal, fewer and more points than the reference
        x = torch.randn(n, 2, generator=g) * 1.5 + 0.3
        assert sliced_w2(x, y, 64, seed=2, y_sorted=ref) == pytest.approx(sliced_w2(x, y, 64, seed=2), rel=1e-6)
    # the distance of a 1D shift is the shift's projected length: sqrt(mean over directions of (d . a)^2)
    shift = torch.tensor([0.5, 0.0])
    dirs = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    want = float((shift @ dirs).pow(2).mean().sqrt())
    assert sliced_w2(y + shift, y, 64, seed=2, y_sorted=ref) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="sliced_quantiles"):
        sliced_w2(y, y, 32, seed=2, y_sorted=ref)
