"""POST /generate's sampling options (n, top_p, stop, seed, alternatives) and its stream."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.numerics

TEXT = "the keys to the old"


def parse_events(raw: str) -> list[tuple[str, dict]]:
    out = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], orjson.loads(fields["data"])))
    return out


async def gen(client, **body) -> dict:
    r = await client.post("/generate", json={"model": "gru", "text": TEXT, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_n_samples_each_equal_a_single_request_with_seed_plus_j(client) -> None:
    kw = {"max_words": 5, "temperature": 1.5, "seed": 100}
    many = await gen(client, n=3, **kw)
    assert len(many["samples"]) == 3
    assert {k: many[k] for k in ("text", "words", "probs")} == {
        k: many["samples"][0][k] for k in ("text", "words", "probs")
    }
    for j, sample in enumerate(many["samples"]):
        one = await gen(client, **{**kw, "seed": 100 + j})
        assert one["words"] == sample["words"] and one["samples"] is None
    assert len({tuple(s["words"]) for s in many["samples"]}) > 1  # not one sample three times


async def test_a_tiny_top_p_keeps_only_the_likeliest_word(client) -> None:
    greedy = await gen(client, max_words=6)
    for top_p in (1e-6, 5e-324):  # the second is 0 in float32: still one word kept
        nucleus = await gen(client, max_words=6, temperature=1.0, top_p=top_p, seed=3)
        assert nucleus["words"] == greedy["words"]
    wide = [
        tuple((await gen(client, max_words=6, temperature=1.0, seed=s))["words"]) for s in (1, 2)
    ]
    assert wide[0] != wide[1]  # the same seeds without top_p do sample


async def test_stop_sequences_end_the_text_and_are_left_out(client) -> None:
    full = await gen(client, max_words=8)
    stop = " ".join(full["words"][3:5])
    cut = await gen(client, max_words=8, stop=["no such words", stop])
    first = next(
        i for i in range(len(full["words"])) if full["words"][i : i + 2] == full["words"][3:5]
    )
    assert cut["words"] == full["words"][:first] and cut["finish_reason"] == "stop"
    assert full["finish_reason"] == "length"
    assert cut["probs"] == full["probs"][:first]


async def test_alternatives_equal_predict(client) -> None:
    out = await gen(client, max_words=3, alternatives=3)
    context = TEXT
    for word, alts in zip(out["words"], out["alternatives"], strict=True):
        body = {"model": "gru", "text": context, "top_k": 3}
        preds = (await client.post("/predict", json=body)).json()["predictions"]
        assert [a["word"] for a in alts] == [p["word"] for p in preds]
        for a, p in zip(alts, preds, strict=True):
            assert abs(a["prob"] - p["prob"]) < 1e-5
        context += " " + word


async def test_stream_events_equal_the_json_answer(client) -> None:
    kw = {"max_words": 4, "temperature": 1.2, "seed": 5, "n": 2, "alternatives": 2}
    answer = await gen(client, **kw)
    r = await client.post("/generate", json={"model": "gru", "text": TEXT, "stream": True, **kw})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_events(r.text)
    for j, sample in enumerate(answer["samples"]):
        words = [e for kind, e in events if kind == "word" and e["sample"] == j]
        assert [w["word"] for w in words] == sample["words"]
        assert [w["prob"] for w in words] == sample["probs"]
        assert [w["alternatives"] for w in words] == sample["alternatives"]
        (done,) = [e for kind, e in events if kind == "done" and e["sample"] == j]
        assert done["text"] == sample["text"] and done["finish_reason"] == "length"
    r = await client.post(
        "/generate",
        json={"model": "gru", "text": TEXT, "max_words": 2},
        headers={"accept": "text/event-stream"},
    )
    assert [kind for kind, _ in parse_events(r.text)] == ["word", "word", "done"]


@pytest.mark.parametrize(
    "body",
    [
        {"n": 0},
        {"n": 65},
        {"top_p": 0},
        {"top_p": 1.5},
        {"stop": [" "]},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"alternatives": 101},
        {"alternatives": -1},
    ],
)
async def test_bad_options_are_422_also_when_streaming(client, body: dict) -> None:
    for stream in (False, True):
        r = await client.post(
            "/generate", json={"text": "the sky", "max_words": 2, "stream": stream, **body}
        )
        assert r.status_code == 422, r.text
        assert r.json()["status"] == 422 and r.json()["message"]


def test_a_stream_closed_early_runs_no_more_passes(tiny_store: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    server = ServerProcess(model_dir, "--no-bootstrap", "--max-words", "5000")
    try:
        server.wait_ready()

        def passes() -> float:
            for line in httpx.get(server.url + "/metrics").text.splitlines():
                if line.startswith("gatehouse_batch_size_count") and 'model="gru"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        body = {"model": "gru", "text": "the sky", "max_words": 5000, "stream": True, "n": 2}
        before = passes()
        with httpx.stream("POST", server.url + "/generate", json=body, timeout=30) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("event: word")
                if seen == 3:
                    break
        time.sleep(1.0)  # the server notices; a pass already queued may still finish
        after = passes()
        time.sleep(0.5)
        assert passes() == after
        assert after - before < 1000  # two samples share each pass: 5000 to run them out
    finally:
        server.stop()
