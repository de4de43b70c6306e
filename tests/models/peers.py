"""pytorch/examples' word_language_model, run unmodified from the shared folder.

`train_peers` trains tiny checkpoints with its own `main.py`; `reference` loads them with the
peer's own code (its `model.py`, a full unpickle: these files are the test's own) and writes
what the source model says on a sample, for the imported model to be compared against.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, WIKITEXT

PEER = REPO.parent / "shared" / "peers" / "word_language_model"
KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "Transformer")
SAMPLE_WORDS = 60

# Runs in the peer's folder: its data.Corpus rebuilds the vocabulary, its RNNModel is loaded.
_REFERENCE = """
import json, sys, torch
import data
out = sys.argv[1]
corpus = data.Corpus(sys.argv[2])
words = corpus.dictionary.idx2word
ids = corpus.valid[: int(sys.argv[3])]
result = {"itos": words, "sample": [words[i] for i in ids], "models": {}}
for kind, path in json.loads(sys.argv[4]).items():
    model = torch.load(path, weights_only=False).eval()
    with torch.no_grad():
        logp, _ = model(ids.unsqueeze(1), model.init_hidden(1))
    torch.save(logp, f"{out}/{kind}.logp.pt")
    torch.save(model.state_dict(), f"{out}/{kind}.state.pt")
json.dump(result, open(f"{out}/reference.json", "w"))
"""


def corpus_slice(folder: Path, train_lines: int = 60, other_lines: int = 8) -> Path:
    """The first lines of WikiText-2's splits: a corpus folder the peer's main.py accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_lines), ("valid", other_lines), ("test", other_lines)):
        with open(WIKITEXT / f"{split}.txt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        (folder / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return folder


def train_peers(folder: Path, data: Path) -> dict[str, Path]:
    """One dry-run checkpoint per kind (the GRU tied), trained side by side."""
    procs = {}
    for kind in KINDS:
        save = folder / f"{kind}.pt"
        cmd = [sys.executable, str(PEER / "main.py"), "--data", str(data), "--model", kind]
        cmd += ["--emsize", "16", "--nhid", "16", "--epochs", "1", "--dry-run"]
        cmd += ["--save", str(save), *(["--tied"] if kind == "GRU" else [])]
        log = open(folder / f"{kind}.log", "wb")
        procs[kind] = (subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=log), save, log)
    out = {}
    for kind, (proc, save, log) in procs.items():
        rc = proc.wait(timeout=300)
        log.close()
        if rc != 0 or not save.exists():
            raise RuntimeError(
                f"{kind}: main.py exited {rc}:\n{(folder / f'{kind}.log').read_text()}"
            )
        out[kind] = save
    return out


def reference(folder: Path, data: Path, checkpoints: dict[str, Path]) -> dict:
    """The peer's own vocabulary and sample, its log-probs (`<kind>.logp.pt`, [T, 1*V]) and
    its state_dicts (`<kind>.state.pt`), written into `folder`."""
    recurrent = {k: str(v) for k, v in checkpoints.items() if k != "Transformer"}
    cmd = [sys.executable, "-c", _REFERENCE, str(folder), str(data), str(SAMPLE_WORDS)]
    subprocess.run([*cmd, json.dumps(recurrent)], cwd=PEER, check=True, timeout=300)
    return json.loads((folder / "reference.json").read_text())
