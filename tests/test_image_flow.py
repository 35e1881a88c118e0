"""CifarFlow: the toy-2D experiment interface on images, so the registered recipes run unchanged;
and the flow teacher's folder (fp16 weights, sha256 manifest)."""

import json

import pytest
import torch
import torch.nn.functional as F

from distill_lab.cifar.flow_config import ImageScale, to_flow_images
from distill_lab.cifar.flow_experiment import CifarFlow
from distill_lab.cifar.flow_teacher import (FlowTeacherUnavailable, load_flow_teacher, save_flow_teacher,
                                            train_flow_teacher)
from distill_lab.core.flows import sample_ode
from distill_lab.core.registry import get_recipe
from distill_lab.methods.step.students import OneStepGenerator
from distill_lab.nets.unet import TimeUNet

TINY = ImageScale(resolution=8, unet=dict(base=8, mults=(1, 2)), teacher_steps=4, teacher_batch=8,
                  teacher_lr=1e-3, teacher_ema=0.9, batch=8, student_steps=3, eval_n=40, teacher_nfe=4)


def pooled_features(x):
    """A 12-number stand-in for the classifier's features (fast, deterministic)."""
    return F.avg_pool2d(x.float(), 4).flatten(1).double()


def synthetic_data(n_train=64, n_test=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    u8 = lambda n: torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)  # noqa: E731
    return {"train": to_flow_images(u8(n_train), 8), "test": to_flow_images(u8(n_test), 8)}


@pytest.fixture(scope="module")
def exp():
    torch.manual_seed(0)
    teacher = TimeUNet(base=8, mults=(1, 2))
    return CifarFlow("ci", teacher=teacher, data=synthetic_data(), feature_fn=pooled_features,
                     image_scale=TINY, progress=False)


def test_area_downsampling_keeps_the_pixel_convention():
    x = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8).repeat(1, 3, 16, 16)  # [1, 3, 32, 32]
    y = to_flow_images(x, 16)
    assert y.shape == (1, 3, 16, 16) and torch.allclose(y, torch.zeros_like(y))
    assert to_flow_images(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8), 32).eq(1).all()


def test_interface_shapes_and_warm_start(exp):
    assert exp.data_batch(5).shape == exp.noise_batch(5).shape == (5, 3, 8, 8)
    assert exp.data_batch(5).abs().max() <= 1
    assert exp.scale.batch == 8 and exp.scale.pick(ci=1, default=2, gpu=3) == 1
    z = exp.noise(6, 1)
    # the student copy starts as the teacher's one-step Euler sampler
    g = OneStepGenerator(exp.student_net(1))
    with torch.no_grad():
        assert torch.allclose(g(z), sample_ode(exp.velocity, z, 1, "euler"), atol=1e-5)
    assert exp.student_net(2)(z, torch.zeros(6), torch.ones(6)).shape == z.shape
    assert exp.new_net(2).n_times == 2
    assert exp.teacher_sample(z).shape == z.shape


def test_evaluate_reports_value_beside_floor(exp):
    ev = exp.evaluate(lambda z, nfe: sample_ode(exp.velocity, z, nfe), nfe=2)
    assert set(ev) >= {"value", "floor", "ratio", "coupled"}
    assert ev["floor"] > 0 and ev["ratio"] == pytest.approx(ev["value"] / ev["floor"])
    ref = exp.evaluate(lambda z: exp.teacher_sample(z))
    assert ref["coupled"] == pytest.approx(0.0, abs=1e-10)
    real = exp.sample_data(40, seed=3)
    assert exp.evaluate(lambda z: real)["ratio"] < ev["ratio"]  # real images beat an untrained teacher
    curve = exp.teacher_curve((1, 2))
    assert set(curve) == {1, 2} and curve[2] == pytest.approx(ev["value"])
    with pytest.raises(ValueError, match="shape"):
        exp.evaluate(lambda z: z[:, :, :4])


def test_eval_batch_changes_the_chunks_not_the_numbers(exp):
    torch.manual_seed(0)
    small = CifarFlow("ci", teacher=exp.teacher, data=synthetic_data(), feature_fn=pooled_features,
                      image_scale=TINY, progress=False, eval_batch=7)  # 40 images: chunks of 7, the last of 5
    sizes = []

    def euler(z, nfe):
        sizes.append(len(z))
        return sample_ode(exp.velocity, z, nfe)

    a, b = exp.evaluate(euler, 2), small.evaluate(euler, 2)
    assert sizes == [40] + [7] * 5 + [5]
    assert b["value"] == pytest.approx(a["value"], rel=1e-4) and b["coupled"] == pytest.approx(a["coupled"], rel=1e-4)
    assert torch.allclose(small.eval_teacher, exp.eval_teacher, atol=1e-5)
    assert small.teacher_curve((2,))[2] == pytest.approx(a["value"], rel=1e-4)
    with pytest.raises(ValueError, match="eval_batch"):
        CifarFlow("ci", teacher=exp.teacher, image_scale=TINY, progress=False, eval_batch=0)


def test_evaluate_images_scores_samples_already_drawn(exp):
    """The reference solution scored as it is (coupled error 0) equals scoring its sampler again."""
    ref = exp.evaluate_images(exp.eval_teacher)
    again = exp.evaluate(lambda z: exp.teacher_sample(z))
    assert ref["coupled"] == 0.0 and ref["value"] == pytest.approx(again["value"])
    x = sample_ode(exp.velocity, exp.eval_noise, 2)
    assert exp.evaluate_images(x)["value"] == pytest.approx(exp.evaluate(lambda z, n: sample_ode(exp.velocity, z, n),
                                                                          2)["value"])
    with pytest.raises(ValueError, match="shape"):
        exp.evaluate_images(x[:5])


@pytest.mark.parametrize("name,kw", [("trajectory", dict(steps=3, pool=16)), ("cd", dict(steps=3))])
def test_toy_recipes_run_unchanged_on_images(exp, name, kw):
    torch.manual_seed(0)
    student = get_recipe(name).train(exp, **kw)
    ev = exp.evaluate(student.sample, nfe=1)
    assert torch.isfinite(torch.tensor([ev["value"], ev["coupled"]])).all()


def test_teacher_folder_roundtrip_and_hash_check(tmp_path):
    data = synthetic_data()
    net, info = train_flow_teacher(data["train"], TINY, steps=3, progress=False)
    man = save_flow_teacher(net, tmp_path, TINY, info, command="test", scale="ci")
    assert man["files"]["teacher.pt"]["bytes"] < 200_000 and man["unet"]["base"] == 8
    loaded = load_flow_teacher(tmp_path)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    with torch.no_grad():  # fp16 weights reloaded as float32
        assert torch.allclose(loaded["model"](x, t), net(x, t), atol=2e-2)
    blob = (tmp_path / "teacher.pt").read_bytes()
    (tmp_path / "teacher.pt").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(FlowTeacherUnavailable, match="sha256"):
        load_flow_teacher(tmp_path)
    assert load_flow_teacher(tmp_path, missing_ok=True) is None
    assert load_flow_teacher(tmp_path, verify=False)["model"] is not None
    (tmp_path / "teacher.pt").unlink()
    with pytest.raises(FlowTeacherUnavailable, match="missing"):
        load_flow_teacher(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["command"] == "test"
    assert load_flow_teacher(tmp_path / "nowhere", missing_ok=True) is None


@pytest.mark.parametrize("name", ["ci", "default", "gpu"])
@pytest.mark.parametrize("variant", ["", "attn"])
def test_every_scales_unet_builds_and_trains_a_step_at_its_resolution(name, variant):
    from distill_lab.cifar.flow_config import build_unet, image_scale
    from distill_lab.core.flows import flow_matching_loss
    isc = image_scale(name, variant)
    torch.manual_seed(0)
    net = build_unet(isc)
    x = torch.rand(2, 3, isc.resolution, isc.resolution) * 2 - 1
    loss = flow_matching_loss(net, x)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    assert TimeUNet.from_net(net, 2)(x, torch.zeros(2), torch.ones(2)).shape == x.shape
