"""First start on an empty store: train the three embedded default models, then serve them."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

from models import store

log = logging.getLogger("gatehouse.bootstrap")


def bootstrap_defaults(model_dir: Path) -> None:
    """Train `rnn`, `lstm` and `gru` on the built-in corpus unless the store has models.

    An exclusive lock on the store makes a second server started on the same empty store
    wait for the first one's models instead of training its own copies.
    """
    from models.defaults import train_defaults  # imports the training stack only when needed

    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".bootstrap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if store.list_names(model_dir):
            log.info("store %s already has models: nothing to bootstrap", model_dir)
            return
        log.info("empty model store %s: training the default models (rnn, lstm, gru)", model_dir)
        saved = train_defaults(model_dir, log=lambda msg: log.info("bootstrap: %s", msg))
        log.info("bootstrap done: %s", ", ".join(f"{n}@{v}" for n, v in saved))
