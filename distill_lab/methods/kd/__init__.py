"""Logit-level knowledge and self-distillation, one module per family; every name is re-exported here,
so ``from distill_lab.methods import kd`` then ``kd.kd_loss`` reads like the papers.

* :mod:`.common` -- the KL divergences every loss shares;
* :mod:`.hinton` -- Hinton, Vinyals & Dean (2015): temperature-softened KL to a teacher plus CE;
* :mod:`.self_distill` -- born-again networks, ground-truth weighting, recursion anchored to the teacher;
* :mod:`.adaptive` -- TAID, PACED, agreement-weighted consensus of several teachers;
* :mod:`.self_supervised` -- random teachers (DINO head), SLA+SD, EMA self-distillation with a diversity term;
* :mod:`.token` -- the same on language models' token logits ``[B, T, V]`` with a mask: forward and
  reverse KL, GKD's generalised JSD, DistiLLM's skew KL, top-k and sampled-token forms, MiniLLM's
  policy gradient, TAID and PACED through :mod:`.adaptive`;
* :mod:`.kernel_sd` -- self-distillation in closed form for kernel ridge regression (Mobahi et al. 2020);
* :mod:`.momentum_gs` -- Momentum-GS's block-wise fitting with a momentum decoder, on a toy 2D scene.

Losses take logits with the classes last, ``[B, ..., C]``, so the same functions distil a CNN's
class logits and a language model's token logits. The metrics that judge them live in
:mod:`distill_lab.metrics.classification` and :mod:`distill_lab.metrics.representation`.
"""

from . import kernel_sd, momentum_gs  # noqa: F401  (kd.kernel_sd.*, kd.momentum_gs.*)
from .adaptive import (TAIDSchedule, beta_kernel, consensus_loss, consensus_targets, paced_kd_loss, paced_weights,  # noqa: F401
                       taid_loss, taid_target)
from .common import kl_per_example  # noqa: F401
from .hinton import kd_loss  # noqa: F401
from .self_distill import (anchored_distill_loss, anchored_recursion, anchored_target,  # noqa: F401
                           generation_kls, self_distill_loss, self_distill_targets, soft_target_loss)
from .token import (check_mask, forward_kl_loss, gjsd_loss, masked_mean, minillm_loss,  # noqa: F401
                    on_policy_pg_loss, paced_token_loss, reverse_kl_loss, sampled_reverse_kl, skew_kl_loss,
                    taid_token_loss, token_ce_loss, topk_kl_loss)
from .self_supervised import (DINOHead, ema_self_distill_loss, feature_diversity_loss,  # noqa: F401
                              output_information, random_teacher_loss, rotate_batch, sla_aggregate,
                              sla_joint_labels, sla_loss, sla_sd_loss)
