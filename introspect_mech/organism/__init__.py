"""The introspective model organism: a positive control for the toolkit.

SmolLM2-135M-Instruct with a LoRA adapter trained, on CPU, to report concept vectors injected
into its residual stream — on words it never saw in training — while denying when nothing is
injected, answering yes/no questions truthfully under injection, and calling random
norm-matched vectors "something unusual" without naming a concept. Modules:

- ``words``: the concept split (training words vs the paper's 50 held-out words);
- ``recipe``: the training trials, built with the experiments' prompt, window, injection and dose;
- ``forcing``: teacher-forced injected forward passes (``InterventionPlan`` from a hook; shared prefix);
- ``train``: the seeded, resumable training loop;
- ``adapter``: the safetensors + JSON artefact, and merging it into a model (``load_model(adapter=...)``);
- ``evaluate``: a quick held-out evaluation (greedy and T=1) against the organism's goals.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports: `introspect-mech --help` imports the organism's CLI module, which should not
# pull in peft, the word lists or the training code.
_EXPORTS = {
    "EvalConfig": "evaluate", "evaluate_organism": "evaluate", "LoraSpec": "adapter", "apply_adapter": "adapter",
    "read_adapter": "adapter", "RecipeConfig": "recipe", "TrainConfig": "train", "TrainResult": "train",
    "train_organism": "train", "WordSplit": "words", "build_split": "words", "held_out_words": "words",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
