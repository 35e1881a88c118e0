"""Recording wrappers the wiring tests share: replace a function or an optimizer class for one test
(through pytest's ``monkeypatch``, so it is restored afterwards) and keep what each call received."""

import torch


def record(monkeypatch, owner, name, calls=None):
    """Wrap ``owner.name`` so that each call appends ``(args, kwargs, result)`` to ``calls`` (a new list
    unless one is given), and return ``calls``."""
    calls = [] if calls is None else calls
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def record_optimizer(monkeypatch, name="Adam"):
    """Replace ``torch.optim.<name>`` so that each optimizer built appends ``(params, kwargs)``, the
    parameters as a list; return that list."""
    made = []
    cls = getattr(torch.optim, name)

    def build(params, **kwargs):
        params = list(params)
        made.append((params, kwargs))
        return cls(params, **kwargs)

    monkeypatch.setattr(torch.optim, name, build)
    return made
