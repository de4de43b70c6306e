"""How fast the gate explorer draws the largest map it must: 512 tokens x an LSTM 2x650.

Starts our server on a store holding one untrained LSTM (2 layers x 650 units; untrained is
fine, drawing does not care what the values mean), opens the gate view in headless
Chromium, and asks for a 512-token text several times. Per run it reports, from the page's
own clock: the /gates answer (server work and transfer, from the resource timing), parsing
its JSON, unpacking the rows into typed arrays, and the draw (six 512 x 650 canvases plus
the DOM around them), then the whole round trip from Enter to the next painted frame.

    python -m bench.bench_ui [--runs 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path

import torch

from models import store
from models.builtin import builtin_text
from models.device import cpu_name
from models.lm import RNNLM, ModelConfig
from models.tokenizer import Tokenizer, Vocab, tokenize

from .server import Server

TOKENS, HIDDEN, LAYERS = 512, 650, 2
CHROMIUM = os.environ.get("GATEHOUSE_CHROMIUM", "/usr/bin/chromium")
# Root on a closed network: no sandbox, and none of Chromium's own calls home.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Enter in the text box, then wait for the view to say it is drawn, then for two animation
# frames: the first runs before paint, the second starts once that frame is on screen.
_ROUND_TRIP = """async (text) => {
  const box = document.getElementById('gates-text');
  const columns = document.getElementById('gate-columns');
  box.value = text;
  const t0 = performance.now();
  box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
  while (!(columns.dataset.state === 'ready' && columns.dataset.text === text)) {
    if (columns.dataset.state === 'error') {
      throw new Error(document.getElementById('gates-error').textContent);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const total = performance.now() - t0;
  const net = performance.getEntriesByType('resource')
    .filter((e) => e.name.includes('/gates?')).at(-1);
  performance.clearResourceTimings();
  const responseMs = net.responseEnd - net.startTime;
  const r = window.gatehouseLastRender;
  return {total, responseMs, parseMs: r.fetchMs - responseMs, ...r};
}"""


def make_store(root: Path) -> str:
    """The model (saved as `lstm`, the view's default) and a 512-token text in its vocabulary."""
    corpus = builtin_text()
    tok = Tokenizer(Vocab.build(Counter(tokenize(corpus, lowercase=True))), lowercase=True)
    torch.manual_seed(0)
    cfg = ModelConfig("lstm", len(tok.vocab), HIDDEN, HIDDEN, LAYERS, dropout=0.0, tied=False)
    store.save_version(root, "lstm", RNNLM(cfg).eval(), tok, {"metrics": {}})
    return " ".join(tokenize(corpus, lowercase=True)[:TOKENS])


def measure(url: str, text: str, runs: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(url + "/ui/gates")
        page.wait_for_selector("#gate-columns[data-state=ready]")
        out = []
        for i in range(runs + 1):
            # A different text each run, so nothing could be served from a cache.
            words = text.split()
            shifted = " ".join(words[i:] + words[:i])
            result = page.evaluate(_ROUND_TRIP, shifted)
            assert result["cells"] == TOKENS * HIDDEN * 6, result
            if i:  # the first run warms the JIT and the server
                out.append(result)
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        text = make_store(root)
        log = Path(tmp) / "server.log"
        with Server(root, "lstm", log, {"GATEHOUSE_TORCH_THREADS": "1"}) as server:
            runs = measure(server.url, text, args.runs)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    summary = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "map": f"{TOKENS} tokens x {HIDDEN} units x 6 gates (layer 0 of an LSTM {LAYERS}x{HIDDEN})",
        "runs": len(runs),
        "median_ms": {
            k: round(med(k), 1)
            for k in ("responseMs", "parseMs", "fetchMs", "flattenMs", "ms", "total")
        },
        "max_draw_ms": round(max(r["ms"] for r in runs), 1),
    }
    print(f"machine: {summary['machine']}")
    print(f"map: {summary['map']}, {summary['runs']} runs, medians:")
    m = summary["median_ms"]
    print(
        f"  /gates answer {m['responseMs']} ms (server work and transfer), JSON parse "
        f"{m['parseMs']} ms, unpack {m['flattenMs']} ms, draw {m['ms']} ms"
    )
    print(f"  Enter to painted frame {m['total']} ms; slowest draw {summary['max_draw_ms']} ms")
    if args.out:
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(summary, indent=2) + "\n")
        tmp_out.replace(args.out)  # whole or absent, never half written
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
