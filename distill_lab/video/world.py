"""A toy video world with known physics: soft sprites that fly, bounce off the walls and get kicked.

Each sprite has a position ``p`` in the unit square and a velocity ``v`` (units per frame). One frame
of the dynamics (:meth:`World.step`):

1. with probability ``kick_prob`` the velocity turns by a random angle in ``[-kick_angle,
   kick_angle]`` (its speed is kept): the future is uncertain, so predicting it is a generative task;
2. ``p <- p + v``;
3. walls at ``margin`` and ``1 - margin`` reflect elastically: a coordinate past a wall is mirrored
   back inside and that velocity component flips sign.

The state of a clip is ``[B, F, S, 4]`` (``x, y, vx, vy`` for each of ``S`` sprites), the "state level"
for fast tests and figures. :meth:`World.render` turns states into frames ``[B, F, 1, R, R]`` at any
resolution ``R``: each sprite is an isotropic Gaussian blob of width ``sigma`` (in units of the square)
sampled at the pixel centres, blobs add, and intensities ``I in [0, 1]`` become ``2 I - 1`` (background
``-1``, a blob's peak ``+1``), the range the flow models generate. :meth:`World.detect` inverts the
rendering: the brightest pixels and a parabola through the logarithm of the intensities around each
(exact for a Gaussian blob, so ``detect(render(s)) == positions(s)`` up to float rounding), so the
metrics (:mod:`distill_lab.video.metrics`) can read positions, and from them motion, off any frame.

The same seeded generator draws clips of any length and renders them at any resolution, so a clip
four times the training horizon, or a larger frame at the gpu scale, is the same world.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class World:
    """The world's constants (units: the side of the square is 1, time is counted in frames).

    ``n_sprites`` sprites of blob width ``sigma``; walls at ``margin`` from the edges; initial speeds
    uniform in ``[speed_min, speed_max]`` with a uniform direction; a kick each frame with probability
    ``kick_prob`` turns the velocity by up to ``kick_angle`` radians.
    """

    n_sprites: int = 1
    sigma: float = 0.07
    margin: float = 0.15
    speed_min: float = 0.04
    speed_max: float = 0.08
    kick_prob: float = 0.15
    kick_angle: float = math.pi / 3

    def __post_init__(self):
        if self.n_sprites < 1:
            raise ValueError(f"n_sprites must be at least 1, got {self.n_sprites}")
        if not 0 < self.margin < 0.5:
            raise ValueError(f"margin must lie in (0, 0.5), got {self.margin}")
        if not 0 < self.speed_min <= self.speed_max < 1 - 2 * self.margin:
            raise ValueError("speeds must satisfy 0 < speed_min <= speed_max < 1 - 2 margin (one frame's "
                             f"move must stay inside the walls), got {self.speed_min}, {self.speed_max}")

    def config(self) -> dict:
        return asdict(self)

    # ---------------------------------------------------------------- dynamics
    def initial(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random initial states ``[n, S, 4]``: positions uniform between the walls, speeds
        uniform in ``[speed_min, speed_max]``, directions uniform."""
        S = self.n_sprites
        pos = self.margin + (1 - 2 * self.margin) * torch.rand(n, S, 2, generator=generator, dtype=torch.float64)
        speed = self.speed_min + (self.speed_max - self.speed_min) * torch.rand(n, S, generator=generator,
                                                                               dtype=torch.float64)
        angle = 2 * math.pi * torch.rand(n, S, generator=generator, dtype=torch.float64)
        vel = torch.stack([speed * angle.cos(), speed * angle.sin()], -1)
        return torch.cat([pos, vel], -1)

    def move(self, state: torch.Tensor) -> torch.Tensor:
        """One frame of deterministic motion (steps 2 and 3 above), no kick: ``[..., 4] -> [..., 4]``."""
        p, v = state[..., :2] + state[..., 2:], state[..., 2:].clone()
        lo, hi = self.margin, 1 - self.margin
        below, above = p < lo, p > hi
        p = torch.where(below, 2 * lo - p, torch.where(above, 2 * hi - p, p))
        v = torch.where(below | above, -v, v)
        return torch.cat([p, v], -1)

    def step(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One frame of the dynamics: a random kick (with probability ``kick_prob``), then :meth:`move`."""
        kick = torch.rand(state.shape[:-1], generator=generator, dtype=state.dtype) < self.kick_prob
        angle = (2 * torch.rand(state.shape[:-1], generator=generator, dtype=state.dtype) - 1) * self.kick_angle
        angle = torch.where(kick, angle, torch.zeros_like(angle))
        c, s = angle.cos(), angle.sin()
        vx, vy = state[..., 2], state[..., 3]
        turned = torch.stack([state[..., 0], state[..., 1], c * vx - s * vy, s * vx + c * vy], -1)
        return self.move(turned)

    def simulate(self, n: int, frames: int, seed: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` clips of ``frames`` frames: states ``[n, frames, S, 4]`` (float64), reproducible by ``seed``."""
        if frames < 1 or n < 1:
            raise ValueError(f"simulate needs n >= 1 clips of frames >= 1, got n={n}, frames={frames}")
        g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
        states = [self.initial(n, g)]
        for _ in range(frames - 1):
            states.append(self.step(states[-1], g))
        return torch.stack(states, 1)

    def clips(self, n: int, frames: int, resolution: int, device="cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` fresh rendered clips ``[n, frames, 1, R, R]``: from ``generator``, or from a generator
        seeded off the global random stream (so a seeded training run draws the same clips)."""
        g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        return self.render(self.simulate(n, frames, generator=g), resolution).to(device)

    # ---------------------------------------------------------------- pixels
    def render(self, states: torch.Tensor, resolution: int = 16) -> torch.Tensor:
        """States ``[B, F, S, 4]`` (or positions ``[B, F, S, 2]``) to frames ``[B, F, 1, R, R]`` in
        ``[-1, 1]`` (float32): Gaussian blobs of width ``sigma`` at the pixel centres, summed, clipped."""
        if states.dim() != 4 or states.shape[-1] not in (2, 4):
            raise ValueError(f"states must be [B, F, S, 4] (or positions [B, F, S, 2]), got {tuple(states.shape)}")
        pos = states[..., :2].double()
        c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution       # pixel centres
        gx = torch.exp(-(c - pos[..., 0:1]) ** 2 / (2 * self.sigma ** 2))           # [B, F, S, R] (columns)
        gy = torch.exp(-(c - pos[..., 1:2]) ** 2 / (2 * self.sigma ** 2))           # [B, F, S, R] (rows)
        intensity = torch.einsum("bfsi,bfsj->bfij", gy, gx).clamp(max=1.0)           # rows i = y, columns j = x
        return (2 * intensity - 1).float().unsqueeze(2)

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        """Sprite positions ``[B, F, S, 2]`` read off frames ``[B, F, 1, R, R]`` (any values).

        For each sprite, the brightest remaining pixel, refined to sub-pixel by a parabola through the
        logarithm of the intensity at it and its two neighbours, along x and along y (exact for a
        Gaussian blob); then a disc of radius ``3 sigma`` around it is blanked before the next sprite.
        Positions come back in the unit square, sorted by x so that clips compare sprite by sprite.
        """
        if frames.dim() != 5 or frames.shape[2] != 1 or frames.shape[-1] != frames.shape[-2]:
            raise ValueError(f"frames must be [B, F, 1, R, R], got {tuple(frames.shape)}")
        B, F, _, R, _ = frames.shape
        img = ((frames[:, :, 0].double() + 1) / 2).clamp(min=1e-6).reshape(B * F, R, R)
        c = (torch.arange(R, dtype=torch.float64) + 0.5) / R
        found = []
        for _ in range(self.n_sprites):
            flat = img.flatten(1).argmax(1)
            i, j = flat // R, flat % R                                           # row (y), column (x)
            n = torch.arange(B * F)

            def refine(k, axis):
                km, kp = (k - 1).clamp(0, R - 1), (k + 1).clamp(0, R - 1)
                if axis == 0:
                    a, b, d = img[n, km, j], img[n, k, j], img[n, kp, j]
                else:
                    a, b, d = img[n, i, km], img[n, i, k], img[n, i, kp]
                la, lb, ld = a.log(), b.log(), d.log()
                denom = la - 2 * lb + ld
                off = torch.where((denom < -1e-12) & (k > 0) & (k < R - 1), 0.5 * (la - ld) / denom,
                                  torch.zeros_like(lb))
                return (k.double() + 0.5 + off.clamp(-1, 1)) / R

            x, y = refine(j, 1), refine(i, 0)
            found.append(torch.stack([x, y], -1))
            dist2 = (c[None, None, :] - x[:, None, None]) ** 2 + (c[None, :, None] - y[:, None, None]) ** 2
            img = torch.where(dist2 < (3 * self.sigma) ** 2, torch.full_like(img, 1e-6), img)
        pos = torch.stack(found, 1)                                               # [B F, S, 2]
        order = pos[..., 0].argsort(dim=1)
        pos = torch.gather(pos, 1, order[..., None].expand_as(pos))
        return pos.reshape(B, F, self.n_sprites, 2)

    def sort_sprites(self, states: torch.Tensor) -> torch.Tensor:
        """States ``[..., S, D]`` with the sprites in the order :meth:`detect` returns them (by x)."""
        order = states[..., 0].argsort(dim=-1)
        return torch.gather(states, -2, order[..., None].expand_as(states))
