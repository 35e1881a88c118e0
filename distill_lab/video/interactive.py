"""An interactive toy world: a static scene larger than the frame, a camera the user moves, a sprite the
user pushes, and a sparse second stream ("audio") that follows the video (issue 14, item 1).

The **scene** is the square ``[0, scene_size]^2`` holding ``n_landmarks`` fixed Gaussian landmarks (placed
once by ``scene_seed``, dimmer than the sprites). The **frame** is the unit window of the scene whose
lower-left corner is the **camera** ``c``; the sprites of :class:`~distill_lab.video.world.World` move
inside the frame (screen space), as in the first video issue, in front of the scrolling scene.

**Actions** ``[B, F, 4]``, one a frame, act between frame ``t`` and frame ``t + 1``:

* ``action[..., :2]``, the camera pan: ``c_{t+1} = clip(c_t + clip(a, -max_pan, max_pan), 0, scene_size - 1)``
  (the window never leaves the scene); a zero pan leaves the camera where it is;
* ``action[..., 2:]``, a push on sprite 0: its velocity gains ``clip(a, -max_push, max_push)`` before the
  frame's kick and move (each velocity component is then kept within ``max_speed``).

The **audio** stream runs at one value every ``audio_every`` frames: the height ``y`` of sprite 0 in the
frame, and whether sprite 0 bounced off a wall since the last value (a sparse event).

With ``random_scene=True`` every clip gets a scene of its own (``n_landmarks`` landmarks drawn per clip):
what lies outside the window is then known only from the frames that showed it, so a world model must
remember it (the scene of ``scene_seed`` is one fixed scene a network could learn by heart).

Every frame has a closed form given the initial state, the camera's start, the actions, the scene and
the kicks' seed: :meth:`InteractiveWorld.simulate` returns the states, the camera path, the actions and the audio;
:meth:`InteractiveWorld.render` the frames; :meth:`InteractiveWorld.background` the scene alone at any
camera position, so a revisited place is known exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch

from .world import World

#: the papers of the interactive track (named once; the world students and the bench rows cite them)
RELIC = "RELIC: Interactive Video World Model with Long-Horizon Memory (2025)"
MATRIX_GAME = "Matrix-Game 3.0: Real-Time and Streaming Interactive World Model with Long-Horizon Memory (2026)"
REALCAM = "RealCam: real-time camera-controlled video-to-video generation, its loop-closed data augmentation"


@dataclass(frozen=True)
class InteractiveWorld:
    """The interactive world's constants (units: the frame's side is 1, time in frames); see the module
    docstring. ``world``: the sprites' physics; ``landmark_level``: a landmark's peak intensity (a
    sprite's is 1); ``max_speed``: the bound on each velocity component after a push."""

    world: World = field(default_factory=lambda: World(n_sprites=1, kick_prob=0.0))
    scene_size: float = 2.0
    n_landmarks: int = 6
    landmark_sigma: float = 0.1
    landmark_level: float = 0.5
    scene_seed: int = 0
    max_pan: float = 0.1
    max_push: float = 0.02
    max_speed: float = 0.1
    audio_every: int = 4

    def __post_init__(self):
        if self.scene_size < 1:
            raise ValueError(f"the scene must hold the unit frame: scene_size >= 1, got {self.scene_size}")
        if self.n_landmarks < 0 or self.audio_every < 1:
            raise ValueError(f"n_landmarks must be >= 0 and audio_every >= 1, got {self.n_landmarks}, {self.audio_every}")
        if not 0 < self.max_speed < 1 - 2 * self.world.margin:
            raise ValueError("max_speed must lie in (0, 1 - 2 margin): one frame's move must stay inside the walls, "
                             f"got {self.max_speed}")
        if self.max_pan < 0 or self.max_push < 0:
            raise ValueError(f"max_pan and max_push are bounds (>= 0), got {self.max_pan}, {self.max_push}")

    def config(self) -> dict:
        return asdict(self)

    @cached_property
    def landmarks(self) -> torch.Tensor:
        """``[n_landmarks, 2]``: the landmarks' places in the scene (fixed by ``scene_seed``)."""
        g = torch.Generator().manual_seed(self.scene_seed)
        return self.scene_size * torch.rand(self.n_landmarks, 2, generator=g, dtype=torch.float64)

    def random_landmarks(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, n_landmarks, 2]``: a scene of its own for each of ``n`` clips, landmarks uniform over the scene."""
        return self.scene_size * torch.rand(n, self.n_landmarks, 2, generator=generator, dtype=torch.float64)

    def _scene(self, landmarks: torch.Tensor | None, B: int) -> torch.Tensor:
        if landmarks is None:
            return self.landmarks[None].expand(B, -1, -1)
        if landmarks.dim() != 3 or landmarks.shape[0] != B or landmarks.shape[-1] != 2:
            raise ValueError(f"landmarks must be [B={B}, K, 2] (one scene a clip), got {tuple(landmarks.shape)}")
        return landmarks.double()

    # ---------------------------------------------------------------- the camera and the actions
    def camera_path(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The camera ``[B, F, 2]`` from ``start [B, 2]`` under the pans of ``actions [B, F, 4]`` (the last
        frame's action moves no frame of this clip)."""
        if actions.dim() != 3 or actions.shape[-1] != 4 or start.shape != (actions.shape[0], 2):
            raise ValueError(f"actions must be [B, F, 4] and start [B, 2], got {tuple(actions.shape)} and "
                             f"{tuple(start.shape)}")
        pan = actions[..., :2].double().clamp(-self.max_pan, self.max_pan)
        cams = [start.double().clamp(0, self.scene_size - 1)]
        for t in range(actions.shape[1] - 1):
            cams.append((cams[-1] + pan[:, t]).clamp(0, self.scene_size - 1))
        return torch.stack(cams, 1)

    def random_actions(self, n: int, frames: int, generator: torch.Generator | None = None,
                       persistence: float = 0.8) -> torch.Tensor:
        """``[n, frames, 4]`` actions a player might give: pans and pushes that change smoothly (each frame
        keeps ``persistence`` of the last and adds a uniform draw), within the bounds."""
        a = torch.zeros(n, frames, 4, dtype=torch.float64)
        scale = torch.tensor([self.max_pan, self.max_pan, self.max_push, self.max_push], dtype=torch.float64)
        prev = torch.zeros(n, 4, dtype=torch.float64)
        for t in range(frames):
            prev = persistence * prev + (1 - persistence) * (2 * torch.rand(n, 4, generator=generator,
                                                                             dtype=torch.float64) - 1) * 2 * scale
            a[:, t] = torch.maximum(torch.minimum(prev, scale), -scale)
        return a

    def loop_closed(self, actions: torch.Tensor) -> torch.Tensor:
        """RealCam's loop-closed augmentation on the actions: the clip's pans followed by the same pans
        reversed and negated, so that the camera comes back to where it started (exactly, unless a pan was
        clipped at the scene's edge); no push on the way back. ``[B, F, 4] -> [B, 2 F, 4]``: frame ``F``
        shows the place of frame ``F - 1`` again... down to frame ``2 F - 1``, which shows frame 0's."""
        if actions.dim() != 3 or actions.shape[-1] != 4:
            raise ValueError(f"actions must be [B, F, 4], got {tuple(actions.shape)}")
        pan = actions[..., :2].clamp(-self.max_pan, self.max_pan)
        back = torch.zeros_like(actions)
        back[:, :-1, :2] = -pan[:, :-1].flip(1)  # the move into frame F + j + 1 undoes the one into frame F - 1 - j
        out = torch.cat([actions, back], 1)
        out[:, actions.shape[1] - 1, :2] = 0  # the turn: frame F repeats frame F - 1's place
        return out

    # ---------------------------------------------------------------- dynamics
    def step(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None):
        """One frame of the sprites: sprite 0's velocity gains the clipped push and is kept within
        ``max_speed``, then :meth:`World.step` (kick and move). ``state [B, S, 4]``, ``action [B, 4]``."""
        push = action[:, 2:].to(state.dtype).clamp(-self.max_push, self.max_push)
        state = state.clone()
        state[:, 0, 2:] = (state[:, 0, 2:] + push).clamp(-self.max_speed, self.max_speed)
        return self.world.step(state, generator)

    def simulate(self, n: int, frames: int, actions: torch.Tensor | None = None, seed: int = 0,
                 start: torch.Tensor | None = None, random_scene: bool = False,
                 generator: torch.Generator | None = None) -> dict:
        """``n`` clips of ``frames`` frames under ``actions [n, frames, 4]`` (default: :meth:`random_actions`),
        the camera starting at ``start [n, 2]`` (default: uniform over the scene). Returns ``{"states":
        [n, F, S, 4], "camera": [n, F, 2], "actions": [n, F, 4], "audio": [n, F_a, 2], "landmarks": [n, K, 2]}``
        (``F_a = ceil(F / audio_every)``: sprite 0's height and its bounce flag; ``landmarks``: each clip's
        scene, drawn per clip with ``random_scene``, else the fixed one). ``generator`` replaces ``seed``."""
        if n < 1 or frames < 1:
            raise ValueError(f"simulate needs n >= 1 clips of frames >= 1, got n={n}, frames={frames}")
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        if actions is None:
            actions = self.random_actions(n, frames, g)
        if actions.shape != (n, frames, 4):
            raise ValueError(f"actions must be [n, frames, 4] = [{n}, {frames}, 4], got {tuple(actions.shape)}")
        if start is None:
            start = (self.scene_size - 1) * torch.rand(n, 2, generator=g, dtype=torch.float64)
        states = [self.world.initial(n, g)]
        for t in range(frames - 1):
            states.append(self.step(states[-1], actions[:, t], g))
        states = torch.stack(states, 1)
        scene = self.random_landmarks(n, g) if random_scene else self.landmarks[None].expand(n, -1, -1)
        return {"states": states, "camera": self.camera_path(start, actions), "actions": actions.double(),
                "audio": self.audio(states), "landmarks": scene}

    def bounces(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, F]``: whether sprite 0 was reflected by a wall on its way into frame ``t`` (a velocity
        component changed sign; frame 0 has none)."""
        v = states[:, :, 0, 2:]
        flip = ((v[:, 1:] * v[:, :-1]) < 0).any(-1)
        return torch.cat([torch.zeros_like(flip[:, :1]), flip], 1)

    def audio(self, states: torch.Tensor) -> torch.Tensor:
        """The sparse second stream ``[B, ceil(F / audio_every), 2]``: at frames ``0, audio_every, ...`` sprite
        0's height, and 1 if it bounced at any frame since the previous value (0 otherwise)."""
        F, k = states.shape[1], self.audio_every
        b = self.bounces(states).double()
        n = math.ceil(F / k)
        flags = torch.stack([b[:, max(0, i * k - k + 1):i * k + 1].amax(1) if i else b[:, 0] for i in range(n)], 1)
        return torch.stack([states[:, ::k, 0, 1], flags], -1)

    # ---------------------------------------------------------------- pixels
    def background(self, camera: torch.Tensor, resolution: int = 16,
                   landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """The scene alone seen through windows at ``camera [B, F, 2]``: intensities ``[B, F, R, R]`` in [0, 1]
        (the landmarks, each a Gaussian of peak ``landmark_level``; ``landmarks [B, K, 2]``: each clip's scene,
        default the fixed one)."""
        if camera.dim() != 3 or camera.shape[-1] != 2:
            raise ValueError(f"camera must be [B, F, 2], got {tuple(camera.shape)}")
        c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
        rel = self._scene(landmarks, camera.shape[0])[:, None] - camera.double()[:, :, None]   # [B, F, K, 2]
        gx = torch.exp(-(c - rel[..., 0:1]) ** 2 / (2 * self.landmark_sigma ** 2))      # [B, F, K, R]
        gy = torch.exp(-(c - rel[..., 1:2]) ** 2 / (2 * self.landmark_sigma ** 2))
        return (self.landmark_level * torch.einsum("bfki,bfkj->bfij", gy, gx)).clamp(max=1.0)

    def scene_image(self, landmarks: torch.Tensor | None = None, resolution: int = 16) -> torch.Tensor:
        """The whole scene ``[S R, S R]`` (``S = scene_size``, an integer; ``R`` pixels a frame's side), intensities in
        [0, 1], row 0 at ``y = 0``: the windows at integer cameras laid side by side (``landmarks [K, 2]``: one
        clip's scene, default the fixed one)."""
        S = int(round(self.scene_size))
        if abs(S - self.scene_size) > 1e-9:
            raise ValueError(f"scene_image tiles whole windows: scene_size must be an integer, got {self.scene_size}")
        cams = torch.tensor([[x, y] for y in range(S) for x in range(S)], dtype=torch.float64)[None]   # [1, S^2, 2]
        lm = None if landmarks is None else landmarks[None]
        tiles = self.background(cams, resolution, lm)[0].reshape(S, S, resolution, resolution)        # [y, x, r, c]
        return tiles.permute(0, 2, 1, 3).reshape(S * resolution, S * resolution)

    def render(self, states: torch.Tensor, camera: torch.Tensor, resolution: int = 16,
               landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Frames ``[B, F, 1, R, R]`` in ``[-1, 1]``: the scene (``landmarks [B, K, 2]``, default the fixed one)
        through the camera's window and the sprites (:meth:`World.render`) in front of it, blended as light through
        two filters: ``I = 1 - (1 - sprites)(1 - scene)`` (the "screen" blend: a sprite of intensity 1 is white
        whatever lies behind it, and where the scene is below 1 the sprites' intensities are read back exactly
        by :func:`sprite_positions`; adding and clipping at 1 would lose the part of a sprite over a bright place)."""
        if camera.shape[:2] != states.shape[:2]:
            raise ValueError(f"camera {tuple(camera.shape)} and states {tuple(states.shape)} must share [B, F]")
        sprites = (self.world.render(states, resolution)[:, :, 0].double() + 1) / 2
        scene = self.background(camera, resolution, landmarks)
        return (2 * (1 - (1 - sprites) * (1 - scene)) - 1).float().unsqueeze(2)

    # ---------------------------------------------------------------- what a world model is given
    COND_DIM = 7

    def conditions(self, actions: torch.Tensor, camera: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """The condition stream of a world model ``[B, F, 7]``: for frame ``t`` the action that led into it
        (``actions[:, t - 1]``: the pan over ``max_pan`` and the push over ``max_push``, each in [-1, 1]; zero
        for frame 0), the camera's pose scaled to [-1, 1] over the scene, and a flag, 1 for a frame recalled
        from memory (``memory [B, F]``, default none; a recalled frame has no action into it). What the user
        commands and where the camera is: never the scene, which the model must see (and remember)."""
        if actions.dim() != 3 or actions.shape[-1] != 4 or camera.shape != (*actions.shape[:2], 2):
            raise ValueError(f"actions must be [B, F, 4] and camera [B, F, 2], got {tuple(actions.shape)} and "
                             f"{tuple(camera.shape)}")
        if memory is not None and memory.shape != actions.shape[:2]:
            raise ValueError(f"memory flags must be [B, F] = {list(actions.shape[:2])}, got {tuple(memory.shape)}")
        scale = torch.tensor([self.max_pan, self.max_pan, self.max_push, self.max_push], dtype=torch.float64)
        a = (actions.double() / scale.clamp(min=1e-12)).clamp(-1, 1)
        into = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], 1)
        pose = 2 * camera.double() / max(self.scene_size - 1, 1e-12) - 1
        flag = torch.zeros_like(pose[..., :1]) if memory is None else memory.double()[..., None]
        if memory is not None:
            into = into * (1 - flag)
        return torch.cat([into, pose, flag], -1).float()

    def clips(self, n: int, frames: int, resolution: int = 16, generator: torch.Generator | None = None,
              random_scene: bool = True, actions: torch.Tensor | None = None) -> dict:
        """``n`` clips of a world model's data: :meth:`simulate` (a scene a clip by default) plus ``"frames"``
        ``[n, F, 1, R, R]`` and ``"cond"`` ``[n, F, 7]`` (:meth:`conditions`), float32. ``generator``: default
        one seeded off the global random stream (a seeded training run draws the same clips)."""
        g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        if actions is None:
            actions = self.random_actions(n, frames, g)
        sim = self.simulate(n, frames, actions=actions, random_scene=random_scene, generator=g)
        sim["frames"] = self.render(sim["states"], sim["camera"], resolution, sim["landmarks"])
        sim["cond"] = self.conditions(sim["actions"], sim["camera"])
        return sim


# ---------------------------------------------------------------- revisits
def first_visits(camera: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """``[B, F]``: for each frame, the first earlier frame whose camera was within ``tol`` (max norm) of its
    own, or -1: where the camera came back to a place it had shown."""
    if camera.dim() != 3 or camera.shape[-1] != 2:
        raise ValueError(f"camera must be [B, F, 2], got {tuple(camera.shape)}")
    d = (camera[:, :, None] - camera[:, None]).abs().amax(-1)                  # [B, F, F]
    F = camera.shape[1]
    earlier = torch.ones(F, F, dtype=torch.bool).tril(-1)                        # j < t
    hit = (d <= tol) & earlier
    first = torch.where(hit.any(-1), hit.float().argmax(-1), torch.full(hit.shape[:2], -1))
    return first


def _revisits(frames: torch.Tensor, camera: torch.Tensor, sprite_free: torch.Tensor | None, tol: float):
    """Every revisit of ``frames``: its frame index ``t [N]``, the summed absolute difference to the frame that first
    showed its place over the pixels ``sprite_free`` marks in both ``[N]``, and how many pixels that is ``[N]``."""
    first = first_visits(camera, tol)
    b, t = (first >= 0).nonzero(as_tuple=True)
    now, then = frames[b, t, 0].double(), frames[b, first[b, t], 0].double()
    keep = torch.ones_like(now, dtype=torch.bool) if sprite_free is None else \
        sprite_free[b, t] & sprite_free[b, first[b, t]]
    return t, ((now - then).abs() * keep).flatten(1).sum(1), keep.flatten(1).sum(1).double()


def revisit_error(frames: torch.Tensor, camera: torch.Tensor, sprite_free: torch.Tensor | None = None,
                  tol: float = 1e-9) -> float:
    """Revisit consistency: the mean absolute difference between each frame that shows a place again and the
    frame that first showed it (:func:`first_visits`), over the pixels ``sprite_free [B, F, R, R]`` marks in
    both (default: all), averaged over the revisits; ``nan`` when the camera never came back. ``frames``
    ``[B, F, 1, R, R]``. A memory that stores everything and a generator that draws the scene from it score 0."""
    t, diff, count = _revisits(frames, camera, sprite_free, tol)
    if len(t) == 0:
        return float("nan")
    return float(diff.sum() / count.sum().clamp(min=1))


def revisit_by_frame(frames: torch.Tensor, camera: torch.Tensor, sprite_free: torch.Tensor | None = None,
                     tol: float = 1e-9) -> torch.Tensor:
    """:func:`revisit_error` frame by frame ``[F]``: for each frame, the mean absolute difference to the frame that
    first showed its place, over the pixels ``sprite_free`` marks in both, pooled over the clips that revisit a
    place at that frame; ``nan`` where none does."""
    t, diff, count = _revisits(frames, camera, sprite_free, tol)
    F = camera.shape[1]
    d = torch.zeros(F, dtype=torch.float64).index_add_(0, t, diff)
    n = torch.zeros(F, dtype=torch.float64).index_add_(0, t, count)
    seen = torch.zeros(F, dtype=torch.bool)
    seen[t] = True
    return torch.where(seen, d / n.clamp(min=1), float("nan"))


def nearest_frames(history: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """Camera-aware retrieval (Matrix-Game 3.0): the indices ``[B, k]`` of the ``k`` history frames whose camera
    ``history [B, H, 2]`` lies nearest (max norm) to any of the poses ``query [B, Q, 2]`` of the frames about
    to be made, nearest first."""
    if history.dim() != 3 or query.dim() != 3 or history.shape[0] != query.shape[0] or history.shape[-1] != 2 \
            or query.shape[-1] != 2:
        raise ValueError(f"history must be [B, H, 2] and query [B, Q, 2], got {tuple(history.shape)} and "
                         f"{tuple(query.shape)}")
    if not 1 <= k <= history.shape[1]:
        raise ValueError(f"k must lie in [1, {history.shape[1]}] (the history's frames), got {k}")
    d = (history.double()[:, :, None] - query.double()[:, None]).abs().amax(-1).amin(-1)   # [B, H]
    return d.topk(k, dim=1, largest=False).indices


def sprite_free(world: InteractiveWorld, states: torch.Tensor, resolution: int = 16, radius: float = 4.0) -> torch.Tensor:
    """``[B, F, R, R]``: the pixels farther than ``radius`` sprite widths from every sprite of ``states [B, F, S, 4]``:
    where a frame shows the scene alone (for :func:`revisit_error` and :func:`loop_closure_error`)."""
    c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    p = states[..., :2].double()
    d2 = (c[None, None, None, None, :] - p[..., 0, None, None]) ** 2 + (c[None, None, None, :, None] - p[..., 1, None, None]) ** 2
    return (d2 > (radius * world.world.sigma) ** 2).all(2)


# ---------------------------------------------------------------- metrics of an interactive clip
def loop_closure_error(frames: torch.Tensor, sprite_free: torch.Tensor | None = None) -> float:
    """For clips whose camera ends where it started (:meth:`InteractiveWorld.loop_closed`): the mean absolute
    difference between the last frame and the first over the pixels ``sprite_free [B, F, R, R]`` marks in
    both (default: all). 0 for a world model that remembers the scene it left."""
    if frames.dim() != 5:
        raise ValueError(f"frames must be [B, F, 1, R, R], got {tuple(frames.shape)}")
    first, last = frames[:, 0, 0].double(), frames[:, -1, 0].double()
    keep = torch.ones_like(first, dtype=torch.bool) if sprite_free is None else sprite_free[:, 0] & sprite_free[:, -1]
    return float(((last - first).abs() * keep).sum() / keep.sum().clamp(min=1))


def sprite_positions(world: InteractiveWorld, frames: torch.Tensor, camera: torch.Tensor,
                     landmarks: torch.Tensor | None = None) -> torch.Tensor:
    """The sprites' positions ``[B, F, S, 2]`` read off frames whose camera (and scene, ``landmarks [B, K, 2]``)
    is known: the scene through the window is taken away (the inverse of :meth:`InteractiveWorld.render`'s blend,
    ``sprites = (I - scene) / (1 - scene)``; 0 where the scene is white), then :meth:`World.detect` on what is left."""
    scene = world.background(camera, frames.shape[-1], landmarks)
    inten = (frames[:, :, 0].double() + 1) / 2
    sprites = torch.where(scene < 1 - 1e-6, (inten - scene) / (1 - scene).clamp(min=1e-6), 0.0).clamp(0, 1)
    return world.world.detect((2 * sprites - 1).unsqueeze(2))


def action_following_error(world: InteractiveWorld, positions: torch.Tensor, actions: torch.Tensor,
                           wall_gap: float | None = None) -> float:
    """How far sprite 0's motion is from what the pushes command: with ``d_t = p_{t+1} - p_t`` its
    displacement, the commanded one is ``clip(d_{t-1} + push_t, +-max_speed)`` (no kicks: the default world
    has none), and the error is the mean ``|d_t - commanded_t|`` over the frames whose three positions lie at
    least ``wall_gap`` (default ``max_speed``) inside the walls (a wall's reflection is not the action's doing).
    ``positions [B, F, S, 2]`` (true or detected), ``actions [B, F, 4]``; ``nan`` if no frame qualifies."""
    p = positions[:, :, 0].double()
    if p.shape[1] < 3:
        raise ValueError("action following needs clips of at least 3 frames")
    gap = world.max_speed if wall_gap is None else wall_gap
    d = p[:, 1:] - p[:, :-1]                                                      # [B, F-1, 2]
    push = actions[:, 1:-1, 2:].double().clamp(-world.max_push, world.max_push)  # the push between t and t+1
    want = (d[:, :-1] + push).clamp(-world.max_speed, world.max_speed)
    lo, hi = world.world.margin + gap, 1 - world.world.margin - gap
    inside = ((p > lo) & (p < hi)).all(-1)                                        # [B, F]
    ok = inside[:, :-2] & inside[:, 1:-1] & inside[:, 2:]
    if not ok.any():
        return float("nan")
    return float((d[:, 1:] - want).abs().sum(-1)[ok].mean())


def push_gain(world: InteractiveWorld, positions: torch.Tensor, actions: torch.Tensor,
              wall_gap: float | None = None) -> float:
    """How much of each push the sprite's motion takes up: the least-squares slope of the change of sprite 0's
    displacement, ``d_t - d_{t-1}``, on the clipped push between the two, over the frames
    :func:`action_following_error` keeps (away from the walls). 1 for the world (where no velocity bound is
    reached), 0 for a model that ignores the pushes, a frozen sprite included (which
    :func:`action_following_error` scores only as far off as the pushes are small). ``nan`` if no frame
    qualifies or no push was given."""
    p = positions[:, :, 0].double()
    if p.shape[1] < 3:
        raise ValueError("the push gain needs clips of at least 3 frames")
    gap = world.max_speed if wall_gap is None else wall_gap
    d = p[:, 1:] - p[:, :-1]
    push = actions[:, 1:-1, 2:].double().clamp(-world.max_push, world.max_push)
    lo, hi = world.world.margin + gap, 1 - world.world.margin - gap
    inside = ((p > lo) & (p < hi)).all(-1)
    ok = (inside[:, :-2] & inside[:, 1:-1] & inside[:, 2:])[..., None].expand_as(push)
    change = d[:, 1:] - d[:, :-1]
    den = (push ** 2)[ok].sum()
    if not ok.any() or den <= 0:
        return float("nan")
    return float((change * push)[ok].sum() / den)


def sync_error(world: InteractiveWorld, audio: torch.Tensor, positions: torch.Tensor) -> float:
    """Audio-video sync: the mean ``|audio height - sprite 0's height in the video|`` at the audio stream's
    frames (``0, audio_every, ...``). ``audio [B, F_a, 2]`` (generated or true), ``positions [B, F, S, 2]``
    (read off the video, e.g. :func:`sprite_positions`)."""
    y = positions[:, ::world.audio_every, 0, 1].double()
    if y.shape[1] != audio.shape[1]:
        raise ValueError(f"the audio has {audio.shape[1]} values, the video {y.shape[1]} audio frames")
    return float((audio[..., 0].double() - y).abs().mean())


# ---------------------------------------------------------------- a memory addressed by camera pose
class CameraMemory:
    """Frames (or their latents) stored with the camera pose they were seen from, read back by the nearest
    pose: Matrix-Game 3.0's camera-aware memory retrieval, for one batch of clips.

    ``capacity=None`` stores everything; otherwise at most ``capacity`` entries a clip are kept, and a write
    into a full memory drops one: ``policy="recent"`` the oldest (a sliding window), ``policy="spread"`` the
    most redundant place, the entry with the smallest sum of distances to its two nearest others (so the
    memory covers as many places as it can at a constant size; an end of the path is kept). :meth:`read` returns, for each clip, the ``k`` entries nearest to the asked pose and
    their distances (max norm)."""

    POLICIES = ("recent", "spread")

    def __init__(self, capacity: int | None = None, policy: str = "recent"):
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1 or None (everything), got {capacity}")
        if policy not in self.POLICIES:
            raise ValueError(f"policy is one of {', '.join(self.POLICIES)}, got {policy!r}")
        self.capacity, self.policy = capacity, policy
        self.poses: torch.Tensor | None = None   # [B, M, 2]
        self.items: torch.Tensor | None = None   # [B, M, ...]

    def __len__(self) -> int:
        return 0 if self.poses is None else self.poses.shape[1]

    @property
    def nbytes(self) -> int:
        """The bytes the stored items take (the poses aside)."""
        return 0 if self.items is None else self.items.numel() * self.items.element_size()

    def write(self, pose: torch.Tensor, item: torch.Tensor) -> None:
        """Store ``item [B, ...]`` seen from ``pose [B, 2]``."""
        if pose.dim() != 2 or pose.shape[-1] != 2 or item.shape[0] != pose.shape[0]:
            raise ValueError(f"pose must be [B, 2] and item [B, ...] for the same B, got {tuple(pose.shape)} and "
                             f"{tuple(item.shape)}")
        p, x = pose[:, None].double(), item[:, None]
        self.poses = p if self.poses is None else torch.cat([self.poses, p], 1)
        self.items = x if self.items is None else torch.cat([self.items, x], 1)
        if self.capacity is not None and len(self) > self.capacity:
            if self.policy == "recent":
                drop = torch.zeros(pose.shape[0], dtype=torch.long)
            else:  # the most redundant place: the smallest sum of distances to its two nearest others
                d = (self.poses[:, :, None] - self.poses[:, None]).abs().amax(-1)
                d = d + torch.diag(torch.full((len(self),), float("inf"), dtype=d.dtype))
                drop = d.topk(min(2, len(self) - 1), dim=-1, largest=False).values.sum(-1).argmin(-1)
            keep = torch.ones(self.poses.shape[:2], dtype=torch.bool)
            keep[torch.arange(len(drop)), drop] = False
            B = pose.shape[0]
            self.poses = self.poses[keep].reshape(B, -1, 2)
            self.items = self.items[keep].reshape(B, -1, *self.items.shape[2:])

    def read(self, pose: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` stored items nearest to ``pose [B, 2]``: ``items [B, k, ...]`` and ``distances [B, k]``."""
        if self.poses is None:
            raise ValueError("the memory is empty: write before reading")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must lie in [1, {len(self)}] (the entries stored), got {k}")
        d = (self.poses - pose[:, None].double()).abs().amax(-1)                     # [B, M]
        dist, idx = d.topk(k, dim=1, largest=False)
        items = torch.gather(self.items, 1, idx.view(*idx.shape, *([1] * (self.items.dim() - 2))).expand(
            -1, -1, *self.items.shape[2:]))
        return items, dist


# ---------------------------------------------------------------- pictures
def plot_scene(world: InteractiveWorld, data: dict, i: int = 0, ax=None, resolution: int = 16):
    """Clip ``i`` of ``data`` (:meth:`InteractiveWorld.clips` or a world model's trajectories): its whole scene
    with the camera's window at the first frame (white) and the path of the window's centre (coloured by
    time, the first frame's end marked)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    img = world.scene_image(data["landmarks"][i], resolution)
    S = world.scene_size
    ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1, origin="lower", extent=(0, S, 0, S))
    cam = data["camera"][i].numpy()
    ax.scatter(cam[:, 0] + 0.5, cam[:, 1] + 0.5, c=range(len(cam)), cmap="viridis", s=12, zorder=3)
    ax.plot(cam[:, 0] + 0.5, cam[:, 1] + 0.5, "-", color="C1", lw=1, zorder=2)
    ax.add_patch(plt.Rectangle(tuple(cam[0]), 1, 1, fill=False, ec="w", lw=1.5))
    ax.set_xlim(0, S)
    ax.set_ylim(0, S)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_streams(streams: dict, i: int = 0, frames=None, given: int | None = None, title: str = ""):
    """Clip ``i`` of each stream of ``streams`` (name -> ``[B, F, 1, R, R]``), one row a stream, at ``frames``
    (default all); a red edge marks the frames after the ``given`` ones (made by the model)."""
    import matplotlib.pyplot as plt

    first = next(iter(streams.values()))
    frames = list(range(first.shape[1])) if frames is None else list(frames)
    fig, axes = plt.subplots(len(streams), len(frames), figsize=(0.75 * len(frames), 0.85 * len(streams)),
                             squeeze=False)
    for r, (name, x) in enumerate(streams.items()):
        for c, f in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(x[i, f, 0].numpy(), cmap="gray", vmin=-1, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if given is not None and f >= given and r > 0:
                for sp in ax.spines.values():
                    sp.set_edgecolor("C3")
            if r == 0:
                ax.set_title(str(f), fontsize=6)
        axes[r, 0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
