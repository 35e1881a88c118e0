"""The streaming-video track: a toy world with known physics, a bidirectional teacher, and block-causal
few-step students that stream (teacher forcing, diffusion forcing, CausVid, Self Forcing and its
ablations).

* :mod:`.world` -- sprites with velocities, elastic walls and random kicks; rendering and detection;
* :mod:`.interactive` -- the interactive world: a scene larger than the frame, a camera and a pushed sprite
  driven by actions, a sparse second stream (issue 14);
* :mod:`.dual_stream` -- OmniForcing's asymmetric block-causal mask for two streams, a global prefix and a sink;
* :mod:`.audio_visual` -- lab 36: a sparse audio stream that follows the video, the joint teacher, the streaming
  student with a sink and a rolling cache a stream, joint Self Forcing; :mod:`.av_bench` -- its track ``video_av``;
* :mod:`.world_model`, :mod:`.world_students` -- the action- and camera-conditioned base model with a memory,
  and the few-step world students distilled from it (recent, retrieved or compressed memory); :mod:`.world_bench`
  -- lab 35's track ``video_world``;
* :mod:`.mcm`, :mod:`.represent` -- lab 37: the Motion Consistency Model; UniSurg's video self-distillation
  and FFP-300K's first-frame propagation; :mod:`.ssl_bench` -- their bench tracks ``video_mcm``,
  ``video_repr``, ``video_ffp``;
* :mod:`.nets` -- the video transformer: full or block-causal attention, RoPE over frames, a KV cache;
* :mod:`.config` -- the track's sizes per scale;
* :mod:`.teacher` -- the committed bidirectional teacher (``python -m distill_lab.video.teacher``);
* :mod:`.rollout` -- streaming with the cache, Self Forcing's training rollout, the teacher's sliding window;
* :mod:`.metrics` -- frame error, drift, physics residual, dynamic degree, motion Fréchet distance;
* :mod:`.experiment` -- :class:`VideoWorld`, the experiment the recipes use;
* :mod:`.recipes` -- one recipe a method; :mod:`.bench` -- the ``video`` bench track (importing this
  package registers both).
"""

from .bench import VideoWorld, run_video  # noqa: F401  (registers the track and its recipes)
from . import ssl_bench  # noqa: F401,E402  (registers the video_mcm, video_repr and video_ffp tracks)
from . import av_bench  # noqa: F401,E402  (registers the video_av track)
from . import world_bench  # noqa: F401,E402  (registers the video_world track)
