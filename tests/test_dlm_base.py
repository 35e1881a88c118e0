"""The committed masked-diffusion base of the ``llm_dlm`` track (``datasets/teachers/llm_dlm_mult_ci``): it loads
with its hash checked, draws no random numbers, and its manifest records what lab 45 starts from. (Apart from
``tests/test_dlm.py`` because mutation testing runs that file from a copy of the package without the
committed folders.)"""

from __future__ import annotations

import torch

from distill_lab.llm import dlm


def test_loading_the_base_draws_no_random_numbers():
    torch.manual_seed(6)
    dlm.load_base()
    after = torch.rand(3)
    torch.manual_seed(6)
    assert torch.equal(after, torch.rand(3))


def test_the_committed_base_loads_and_reads_the_reference():
    net, manifest = dlm.load_base()
    assert not net.config.causal and manifest["command"].startswith(dlm.REBUILD)
    q = manifest["quality"]["exact_match_by_tpf"]
    # recorded when it was made: the teacher view (reading the reference) far above the student view at every
    # speed, and the student view falling as more tokens are committed a pass
    assert all(q["teacher_view"][t] > q["student_view"][t] + 30 for t in q["student_view"])
    assert q["student_view"]["1"] > 2 * q["student_view"]["15"]
