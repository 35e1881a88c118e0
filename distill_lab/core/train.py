"""The training loop every method shares: seeds, a ``tqdm.auto`` bar, a NaN guard, and caching.

A method supplies ``step(i) -> loss`` (a tensor or float, or a dict whose ``"loss"`` entry is the
one watched) that does its own forward, backward and optimizer updates; :func:`fit` runs it, shows
progress, and stops with an error naming the step and the method the moment a loss is not finite.
:func:`load_or_train` returns a cached ``state_dict`` when one exists and trains otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

CACHE_ENV = "DISTILL_LAB_CACHE"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the message names the method and the step."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _as_float(v):
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def fit(step: Callable[[int], object], n_steps: int, desc: str = "train", log_every: int = 50,
        progress: bool = True, check_every: int = 1, deadline: float | None = None) -> dict:
    """Run ``step(i)`` for ``i < n_steps``; return ``{"step": [...], key: [...], "seconds": s, "steps": n}``.

    The watched loss is ``step``'s return value, or its ``"loss"`` entry when it returns a dict (the
    other entries are logged every ``log_every`` steps). The loss is checked every ``check_every``
    steps (each check waits for the device; the gpu scale checks every 25): a non-finite loss raises
    :class:`TrainingDiverged` naming ``desc`` and the step it was seen at, with a hint on what usually
    causes it. ``deadline`` (a ``time.perf_counter()`` value) stops the loop early, for time-boxed
    measurements (``python -m distill_lab gpu-check``): ``"steps"`` says how many steps ran.
    """
    if n_steps < 1:
        raise ValueError(f"{desc}: n_steps must be at least 1, got {n_steps}")
    if check_every < 1:
        raise ValueError(f"{desc}: check_every must be at least 1, got {check_every}")
    hist: dict[str, list] = {"step": []}
    t0 = time.perf_counter()
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, leave=False, mininterval=0.5)
    done = 0
    for i in bar:
        out = step(i)
        done = i + 1
        logs = out if isinstance(out, dict) else {"loss": out}
        if "loss" not in logs:
            raise ValueError(f"{desc}: a step that returns a dict must include a 'loss' entry")
        logged = i % log_every == 0 or i == n_steps - 1
        if logged or i % check_every == 0:
            loss = _as_float(logs["loss"])
            if not np.isfinite(loss):
                raise TrainingDiverged(
                    f"{desc}: the loss became {loss} at step {i} of {n_steps}. Lower the learning rate, "
                    "check the inputs for NaN, or enable gradient clipping."
                )
        if logged:
            hist["step"].append(i)
            for k, v in logs.items():
                hist.setdefault(k, []).append(_as_float(v))
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if deadline is not None and time.perf_counter() >= deadline:
            break
    hist["seconds"] = time.perf_counter() - t0
    hist["steps"] = done
    return hist


def cache_dir() -> Path:
    """``$DISTILL_LAB_CACHE``, else ``~/.cache/distill_lab``."""
    p = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distill_lab")
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_key(**config) -> str:
    """A short stable hash of a JSON-able configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_train(name: str, config: dict, build: Callable[[], torch.nn.Module],
                  train: Callable[[torch.nn.Module], object], refresh: bool = False,
                  verbose: bool = True) -> torch.nn.Module:
    """Build a module, load its weights from the cache if this exact ``config`` was trained before,
    else ``train(module)`` it and save the weights. Returns the module in eval mode.

    The file is ``<cache_dir>/<name>-<hash(config)>.pt``; a file that fails to load is retrained.
    """
    path = cache_dir() / f"{name}-{cache_key(**config)}.pt"
    module = build()
    if path.exists() and not refresh:
        try:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            if verbose:
                print(f"loaded {name} from {path}")
            return module.eval()
        except Exception as err:  # corrupt or stale file: say so and retrain
            print(f"could not load {path} ({err}); retraining")
    train(module)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel test workers may train the same module
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
    tmp.replace(path)
    return module.eval()
