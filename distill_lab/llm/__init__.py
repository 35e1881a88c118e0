"""The LLM track: a tiny GPT trained from scratch on checkable tasks, a committed teacher per task, and
students distilled token by token, off- and on-policy, with the KD track's own losses.

* :mod:`.gpt` -- the tiny GPT (full-sequence logits, generation with a KV cache);
* :mod:`.tasks` -- multiplication with a chain of thought, star-graph path-finding, sorting; one tokenizer;
* :mod:`.config` -- the track's sizes per scale and task;
* :mod:`.teacher` -- the committed teachers (``python -m distill_lab.llm.teacher --task all``);
* :mod:`.rollout` -- where training sequences come from (data, teacher, student, mixture) and scoring;
* :mod:`.experiment` -- :class:`LLMTask`, the experiment the recipes use;
* :mod:`.recipes` -- one recipe a procedure; :mod:`.bench` -- the ``llm`` bench track (importing this
  package registers both);
* :mod:`.hf` -- the same procedures on Hugging Face causal LMs (``transformers``, an optional extra).
"""

from .bench import LLMTask, run_llm  # noqa: F401  (registers the track and its recipes)
