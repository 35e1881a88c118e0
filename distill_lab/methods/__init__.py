"""Step-distillation methods, one module per family; importing this package registers their recipes.

* :mod:`.trajectory` - trajectory (direct) distillation, progressive distillation
* :mod:`.consistency` - CD, CT, sCM, TBCM, Hyper-SD (TSCD), CTM
* :mod:`.flow_map` - Lagrangian / Eulerian / progressive flow-map self-distillation, AnyFlow
* :mod:`.dmd` - DMD, DMD2's GAN term, ADM, CDM
* :mod:`.rcm` - score-regularised continuous-time consistency (rCM: sCM + DMD)
* :mod:`.reward` - reward-tilted distribution matching (RTDMD)
* :mod:`.arch` - architecture distillation: a linear-attention student of a softmax-attention teacher (LinFusion)
"""

from . import arch, consistency, dmd, flow_map, rcm, reward, trajectory  # noqa: F401
