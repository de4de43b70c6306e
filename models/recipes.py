"""Named training recipes: sets of TrainConfig defaults per kind, for `--recipe NAME`.

A recipe only fills in defaults: flags given next to it override single settings, and the
name is recorded in the run's config (`recipe`), hence in the version's meta.json. Each
setting and the reason for it is in docs/recipes.md; keep the two in step.

Plain data: this module imports nothing of the training code, so the config can check a
recipe's name against it.
"""

from __future__ import annotations

from typing import Any

# WikiText-2 at the medium size (2 x 650, tied) for a fixed budget of minutes on one GPU:
# the AWD-LSTM family of regularisers, AdamW with a short warm-up and a cosine anneal laid
# over the planned steps (so a budget sets epochs or max_steps and the lr still ends low).
_MEDIUM: dict[str, Any] = {
    "embedding_size": 650,
    "hidden_size": 650,
    "num_layers": 2,
    "tied": True,
    "dropout": 0.4,
    "locked_dropout": True,
    "input_dropout": 0.5,
    "layer_dropout": 0.25,
    "embed_drop": 0.1,
    "weight_drop": 0.5,
    "ar": 2.0,
    "tar": 1.0,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.01,
    "clip": 1.0,
    "schedule": "cosine",
    "warmup_steps": 200,
    "min_lr_ratio": 0.02,
    "batch_size": 64,
    "bptt": 70,
    "epochs": 40,
    "early_stop": 0,  # a fixed budget runs to its end: the anneal is what brings the best
}

# The same at 2 x 200 with batch 20 and bptt 35 (the CPU comparison shape), regularised less:
# a small model trained for a few epochs underfits before it overfits.
_SMALL: dict[str, Any] = {
    **_MEDIUM,
    "embedding_size": 200,
    "hidden_size": 200,
    "dropout": 0.2,
    "input_dropout": 0.25,
    "layer_dropout": 0.1,
    "embed_drop": 0.05,
    "weight_drop": 0.2,
    "ar": 1.0,
    "tar": 1.0,
    "lr": 3e-3,
    "warmup_steps": 100,
    "batch_size": 20,
    "bptt": 35,
    "epochs": 6,
}

# The tanh RNN: no gates to absorb a noisy recurrent matrix, so a heavily dropped and rescaled
# W_hh pushes its spectral radius past 1 and the state saturates; it gets a light weight drop,
# a lower lr and a tighter clip.
_RNN_CHANGES: dict[str, Any] = {"weight_drop": 0.1, "lr": 1e-3, "clip": 0.5, "ar": 1.0}

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "wt2-medium": {
        "lstm": dict(_MEDIUM),
        "gru": dict(_MEDIUM),
        "rnn": {**_MEDIUM, **_RNN_CHANGES},
    },
    "wt2-small": {
        "lstm": dict(_SMALL),
        "gru": dict(_SMALL),
        "rnn": {**_SMALL, **_RNN_CHANGES, "lr": 1.5e-3},
    },
}


def recipe_settings(name: str, arch: str) -> dict[str, Any]:
    """The TrainConfig defaults of recipe `name` for `arch` (a fresh dict, the name included)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    per_arch = RECIPES[name]
    if arch not in per_arch:
        raise ValueError(f"recipe {name!r} has no settings for {arch!r}")
    return {**per_arch[arch], "recipe": name}
