"""Step distillation: a many-step flow teacher into a one- or few-step student, one module per family.

Each module holds its losses (each naming its paper and equation) and the recipes that train a
student with them, written against :class:`distill_lab.core.experiment.StepExperiment`, so the same
recipe runs on toy 2D points, CIFAR-10 images and (later) video frames. Importing this package
registers every recipe in :mod:`distill_lab.core.registry`, in the order the labs teach them:

* :mod:`.students` -- the student parametrisations the recipes share (flow map, consistency
  function, one-step generator, velocity student);
* :mod:`.trajectory` -- trajectory (direct) and progressive distillation;
* :mod:`.arcflow` -- ArcFlow: few-step arcs, a mixture of momentum processes integrated in closed form;
* :mod:`.leap` -- VideoScene's leap flow distillation and leap-time policy, on a toy restoration task;
* :mod:`.consistency` -- CD, CT, sCM, TBCM, Hyper-SD (TSCD), CTM;
* :mod:`.flow_map` -- Lagrangian / Eulerian / progressive flow-map distillation, AnyFlow;
* :mod:`.dmd` -- DMD, DMD2's GAN term, ADM, CDM;
* :mod:`.fewstep` -- few-step distribution matching: DMD on a sampler's grid, TDM, Salt's SC-DMD, GDD;
* :mod:`.tmd` -- Transition Matching Distillation: few outer transitions, each a small conditional flow;
* :mod:`.rcm` -- score-regularised continuous-time consistency (rCM: sCM + DMD);
* :mod:`.reward` -- reward-tilted distribution matching (RTDMD);
* :mod:`.rtdmd_full` -- RTDMD whole: a K-step stochastic generator, AC-DMD, the hybrid policy gradient;
* :mod:`.preference` -- rewards and preferences on a DMD student: Flash-DMD's joint stage, Distillation-DPO,
  GNDM.
"""

from . import trajectory, arcflow, leap, consistency, flow_map, dmd, fewstep, tmd, rcm, reward, preference, rtdmd_full  # noqa: F401  (registers the recipes)
