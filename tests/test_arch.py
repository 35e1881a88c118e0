"""Architecture distillation (distill_lab.methods.arch): a linear-attention student of a softmax-attention
teacher, LinFusion-style; the U-Net's per-level attention; the attention-teacher variant of the image track."""

import pytest
import torch
import torch.nn.functional as F

from distill_lab.cifar.flow_config import ImageScale, default_teacher_dir, image_scale, to_flow_images
from distill_lab.cifar.flow_experiment import CifarFlow
from distill_lab.methods.arch import (arch_distill_loss, attention_cost, attention_layers, capture_attention,
                                      forward_seconds, linear_attention_student, mixer_seconds,
                                      train_linear_attention, use_fused_softmax)
from distill_lab.nets.unet import TimeUNet


def attn_net(**kw):
    torch.manual_seed(0)
    return TimeUNet(**{**dict(base=8, mults=(1, 2), attn_levels=(0,)), **kw})


# ------------------------------------------------------------------ the U-Net's attention levels
def test_attention_after_every_block_of_the_chosen_levels():
    net = attn_net(blocks=2, attention=True)
    assert sorted(net.level_attn) == ["d0_0", "d0_1", "u0_0", "u0_1"]
    assert sorted(attention_layers(net)) == ["attn"] + [f"level_attn.{k}" for k in sorted(net.level_attn)]
    x = torch.randn(3, 3, 8, 8)
    assert net(x, torch.rand(3)).shape == x.shape
    with pytest.raises(ValueError, match="attn_levels"):
        TimeUNet(mults=(1, 2), attn_levels=(2,))


def test_a_net_without_attention_levels_keeps_its_old_config_and_state():
    old = TimeUNet(base=8, mults=(1, 2))
    assert "attn_levels" not in old.config and len(old.level_attn) == 0
    assert not any("level_attn" in k for k in old.state_dict())
    # the attention layers sit on top of the old network: its weights load with strict=False only
    new = attn_net()
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("level_attn.") for k in missing)


def test_attention_levels_follow_the_teacher_into_its_flow_map_student():
    teacher = attn_net().double()
    student = TimeUNet.from_net(teacher, 2)
    assert sorted(student.level_attn) == sorted(teacher.level_attn)
    x, s = torch.randn(2, 3, 8, 8, dtype=torch.double), torch.rand(2, dtype=torch.double)
    with torch.no_grad():
        assert torch.allclose(student(x, s, torch.ones(2, dtype=torch.double)), teacher(x, s), atol=1e-12)


# ------------------------------------------------------------------ the student and its loss
def test_capture_attention_records_each_layers_residual_branch_and_cleans_up():
    net = attn_net()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    with torch.no_grad(), capture_attention(net) as feats:
        net(x, t)
    assert sorted(feats) == ["level_attn.d0_0", "level_attn.u0_0"]
    layer = net.level_attn["d0_0"]
    h = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        expected = layer(h) - h
        with capture_attention(net) as feats:
            layer(h)
    assert torch.allclose(feats["level_attn.d0_0"], expected)
    assert all(not m._forward_hooks for m in attention_layers(net).values())


def test_student_inherits_every_weight_and_only_its_attention_trains():
    teacher = attn_net()
    student = linear_attention_student(teacher)
    assert {m.kind for m in attention_layers(student).values()} == {"linear"}
    assert {m.kind for m in attention_layers(teacher).values()} == {"softmax"}
    for (n, p), (_, q) in zip(student.named_parameters(), teacher.named_parameters()):
        assert torch.equal(p, q), n
        assert p.requires_grad == n.startswith("level_attn."), n
    # the linear student computes a different function until it is trained
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    with torch.no_grad():
        assert not torch.allclose(student(x, t), teacher(x, t), atol=1e-4)
    with pytest.raises(ValueError, match="no attention layers"):
        linear_attention_student(TimeUNet(base=8, mults=(1, 2)))


def test_loss_is_the_task_loss_alone_for_an_exact_copy_and_grads_reach_only_the_attention():
    teacher = attn_net()
    same = linear_attention_student(teacher, kind="softmax")  # an exact copy, attention trainable
    x1 = torch.randn(4, 3, 8, 8)
    loss, info = arch_distill_loss(same, teacher, x1)
    assert info["out"] == 0 and info["feat"] == 0 and torch.allclose(loss, info["task"])

    student = linear_attention_student(teacher)
    loss, info = arch_distill_loss(student, teacher, x1, w_task=0.0)
    assert info["out"] > 0 and info["feat"] > 0
    loss.backward()
    for n, p in student.named_parameters():
        assert (p.grad is not None) == n.startswith("level_attn."), n
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is under stop-gradient


def test_feature_matching_refuses_mismatched_layers():
    with pytest.raises(ValueError, match="same attention layers"):
        arch_distill_loss(attn_net(attn_levels=(1,)), attn_net(), torch.randn(2, 3, 8, 8))


TINY = ImageScale(resolution=8, unet=dict(base=8, mults=(1, 2), attn_levels=(0,)), teacher_steps=4,
                  teacher_batch=8, teacher_lr=1e-3, teacher_ema=0.9, batch=16, student_steps=250, eval_n=40,
                  teacher_nfe=4)


def test_distillation_brings_the_linear_student_closer_than_the_untrained_swap():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8)
    data = {"train": to_flow_images(u8, 8), "test": to_flow_images(u8[:40], 8)}
    teacher = attn_net()
    with torch.no_grad():  # sharpen the teacher's attention so that the swap changes its function
        for layer in attention_layers(teacher).values():
            layer.qkv.weight.mul_(4.0)
    exp = CifarFlow("ci", teacher=teacher, data=data, feature_fn=lambda x: x.flatten(1).double(),
                    image_scale=TINY, progress=False)
    student, hist = train_linear_attention(exp, lr=3e-3, w_task=0.0)
    swap = linear_attention_student(exp.teacher)
    torch.manual_seed(1)
    x1 = exp.data_batch(64)
    x0, t = torch.randn_like(x1), torch.rand(64)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1
    with torch.no_grad():
        v = exp.teacher(xt, t)
        err_swap = (swap(xt, t) - v).pow(2).mean()
        err_student = (student(xt, t) - v).pow(2).mean()
    print(f"output error to the teacher: swap {err_swap:.4f}, distilled {err_student:.4f}")
    assert err_student < 0.75 * err_swap, (err_student, err_swap)  # measured ratio about 0.5
    assert hist["out"][-1] < hist["out"][0]


# ------------------------------------------------------------------ the cost
def test_attention_cost_ratio_is_tokens_over_channels():
    assert attention_cost(256, 16, "softmax") == 2 * 256 * 256 * 16
    assert attention_cost(256, 16, "softmax") / attention_cost(256, 16, "linear") == pytest.approx(256 / 17)
    with pytest.raises(ValueError, match="unknown attention kind"):
        attention_cost(4, 4, "flash")


def test_linear_mixing_is_faster_where_tokens_far_outnumber_channels():
    # 4,096 tokens of 16 channels: 240x fewer multiply-adds for linear attention; ask only for 3x
    secs = mixer_seconds(4096, 16, batch=2, repeats=3)
    assert set(secs) == {"softmax", "linear", "softmax_fused"}
    assert secs["linear"] * 3 < min(secs["softmax"], secs["softmax_fused"]), secs
    net = attn_net()
    assert forward_seconds(net, torch.randn(2, 3, 8, 8), repeats=2) > 0


# ------------------------------------------------------------------ the attention teacher of the image track
def test_the_attention_variant_of_each_scale():
    plain, attn = image_scale("ci"), image_scale("ci", "attn")
    assert "attn_levels" not in plain.unet and attn.unet["attn_levels"] == (0,)
    assert {k: v for k, v in attn.unet.items() if k != "attn_levels"} == plain.unet
    assert attn.teacher_steps == plain.teacher_steps
    assert default_teacher_dir("ci", "attn").name == "cifar10_flow_attn_ci"
    assert default_teacher_dir("ci").name == "cifar10_flow_ci"
    for scale in ("default", "gpu"):
        assert image_scale(scale, "attn").unet.get("attn_levels")
    with pytest.raises(ValueError, match="unknown teacher variant"):
        image_scale("ci", "mamba")


def test_the_fused_softmax_switch_computes_the_same_function():
    net = attn_net()
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3)
    with torch.no_grad():
        ref = net(x, t)
        use_fused_softmax(net)
        assert {layer.fused for layer in attention_layers(net).values()} == {True}
        assert torch.allclose(net(x, t), ref, atol=1e-5)
