"""Train and commit the ``llm_dlm`` track's masked-diffusion base (:mod:`distill_lab.llm.dlm`).

    python -m distill_lab.llm.dlm_base            # writes datasets/teachers/llm_dlm_mult_ci

The base is one bidirectional tiny GPT trained with MDLM's loss on both views of two-digit products
(:meth:`~distill_lab.llm.dlm.DiffusionLMTask.train_base`). The folder holds ``base.pt`` (fp16 weights)
and ``manifest.json``: the command, the machine, the seconds, the network's settings, the file's sha256,
and the exact match of both views at each of the ci scale's tokens per forward, measured on the fp16
weights reloaded as float32 (what :func:`~distill_lab.llm.dlm.load_base` returns).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.checkpoints import file_records, float32_state, fp16_state, training_record
from ..core.train import seed_everything
from ..nets.utils import n_params
from .dlm import FILES, REBUILD, DiffusionLMTask, base_dir
from .gpt import GPT, GPTConfig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog=REBUILD, description="Train and commit the llm_dlm track's masked-diffusion base.")
    ap.add_argument("--scale", default="ci", help="the scale whose sizes train it (the committed one is ci)")
    ap.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/llm_dlm_mult_ci)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    exp = DiffusionLMTask(args.scale, base="train")
    net = exp.new_model()
    hist = exp.train_base(net, args.steps)
    out = Path(args.out) if args.out else base_dir()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(net), out / "base.pt")
    command = f"{REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv)
    reloaded = GPT(GPTConfig(**asdict(net.config)))
    reloaded.load_state_dict(float32_state(fp16_state(net)))
    quality = {"student_view": exp.curve(reloaded), "teacher_view": exp.curve(reloaded, privileged=True)}
    losses = hist["loss"]
    manifest = {
        "what": "the masked-diffusion base of distill-lab's llm_dlm track (two-digit products, both views)",
        "scale": exp.scale.name,
        "base_training": {k: v for k, v in asdict(exp.ds).items() if k.startswith("base") or k == "view_share"},
        "net": asdict(net.config),
        "tokenizer": exp.tok.chars, "n_params": n_params(net),
        **training_record({"steps": hist["steps"], "train_seconds": hist["seconds"],
                           "final_loss": float(sum(losses[-20:]) / len(losses[-20:]))}, command),
        "quality": {"exact_match_by_tpf": quality, "eval_n": exp.eval_n},
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: manifest[k] for k in ("n_params", "train_seconds", "quality")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
