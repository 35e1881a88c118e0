"""The distillation methods: losses (and, for step distillation, the recipes that train with them),
one module per family, shared by every track. Nothing here knows a track or a dataset: losses take
tensors ``[B, ...]`` and callables, recipes take an experiment (:mod:`distill_lab.core.experiment`).

* :mod:`.step` -- step distillation of flows and diffusion models: trajectory, consistency, flow
  maps, distribution matching, rCM, reward tilting. Importing it registers its recipes.
* :mod:`.kd` -- logit-level knowledge and self-distillation: Hinton KD, born-again and anchored
  self-distillation, TAID, PACED, consensus, random teachers, SLA, EMA self-distillation, and
  self-distillation in closed form. Losses on ``[B, ..., C]`` logits, so tokens are examples too.
* :mod:`.arch` -- architecture distillation: a linear-attention student of a softmax-attention
  teacher (LinFusion).
"""
