"""The CIFAR-10 track: knowledge distillation of classifiers, and step distillation of a flow teacher
on images, both with committed teachers.

Data and networks
  * :mod:`.data` -- CIFAR-10 from torchvision's download or an offline copy (``$DISTILL_LAB_CIFAR``);
    subsets, normalisation, augmentation on the tensor, a GPU-resident loader;
  * :mod:`.classifiers` -- CIFAR ResNets, WRNs, the tiny CNN student and the FastVGG teacher.

Knowledge distillation (bench track ``cifar``)
  * :mod:`.classify` -- the classifier training loop every KD recipe shares (cached teacher logits);
  * :mod:`.kd_teacher` -- the committed classifier teacher: train, save with its logits, load;
  * :mod:`.kd_experiment` -- :class:`CifarKD`, the comparison's data, teacher, student and budget;
  * :mod:`.kd_recipes` -- one recipe a KD method, and the bench rows.

Step distillation on images (bench track ``cifar-gen``)
  * :mod:`.flow_config` -- the per-scale settings (:class:`ImageScale`) and images at the scale's resolution;
  * :mod:`.flow_teacher` -- the committed flow-matching U-Net teacher: train, save, load;
  * :mod:`.flow_experiment` -- :class:`CifarFlow`, the toy experiment's contract on images;
  * :mod:`.features` -- the classifier features of the image metrics (FD, not FID).

:mod:`.teachers` is the command that makes both teachers; :mod:`.bench` registers both tracks
(importing this package does it).
"""

from .bench import CifarFlow, CifarKD  # noqa: F401  (registers the tracks and their recipes)
