"""The OpenAI-compatible `/v1` API, driven by the real `openai` SDK against a real server
process on loopback, checked against Gatehouse's own /generate, /predict and /score."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.numerics

PROMPTS = ["the clouds are in the", "i grew up in france . i speak", "the keys"]


def piece(word: str) -> str:
    return "\n" if word == "<eos>" else " " + word


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model_dir = tmp_path_factory.mktemp("openai") / "models"
    shutil.copytree(tiny_store, model_dir)  # the server writes its jobs database there
    # A long stream (see the disconnect test) takes far longer than closing it early does.
    proc = ServerProcess(model_dir, "--no-bootstrap", "--max-words", "5000")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def post(server: ServerProcess, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_list_and_retrieve(sdk: openai.OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert ids == {"rnn", "lstm", "gru"}
    card = sdk.models.retrieve("gru@1")
    assert card.id == "gru" and card.object == "model" and card.created > 0


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_greedy_and_seeded_completions_equal_generate(
    sdk: openai.OpenAI, server: ServerProcess, model: str
) -> None:
    for prompt in PROMPTS:
        done = sdk.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
        want = post(server, "/generate", {"model": model, "text": prompt, "max_words": 6})
        assert done.choices[0].text == "".join(piece(w) for w in want["words"])
        assert done.choices[0].finish_reason == "length"
        assert done.usage.completion_tokens == 6
        assert done.usage.prompt_tokens == len(prompt.split())
    sampled = {"temperature": 1.5, "top_k": 10, "seed": 42}
    done = sdk.completions.create(
        model=model,
        prompt=PROMPTS[0],
        max_tokens=8,
        temperature=1.5,
        seed=42,
        extra_body={"top_k": 10},
    )
    want = post(
        server, "/generate", {"model": model, "text": PROMPTS[0], "max_words": 8, **sampled}
    )
    assert done.choices[0].text == "".join(piece(w) for w in want["words"])


def test_logprobs_equal_predict(sdk: openai.OpenAI, server: ServerProcess) -> None:
    prompt = PROMPTS[1]
    done = sdk.completions.create(
        model="lstm", prompt=prompt, max_tokens=4, temperature=0, logprobs=5
    )
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    context = prompt
    for token, token_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        preds = post(server, "/predict", {"model": "lstm", "text": context, "top_k": 100})
        full = {piece(p["word"]): p["prob"] for p in preds["predictions"]}
        assert abs(math.exp(token_lp) - full[token]) < 1e-5
        five = preds["predictions"][:5]
        assert list(top) == [piece(p["word"]) for p in five]
        for p in five:
            assert abs(math.exp(top[piece(p["word"])]) - p["prob"]) < 1e-5
        context += token


def test_echo_logprobs_equal_score(sdk: openai.OpenAI, server: ServerProcess) -> None:
    text = "The keys to the old cabinet are on the table"
    done = sdk.completions.create(
        model="gru", prompt=text, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = done.choices[0]
    assert choice.text == text and done.usage.completion_tokens == 0
    scored = post(server, "/score", {"model": "gru", "text": text, "top_k": 2})
    lp = choice.logprobs
    assert [t.strip() for t in lp.tokens] == scored["tokens"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for got, want in zip(lp.token_logprobs[1:], scored["logprobs"][1:], strict=True):
        assert abs(got - want) < 1e-5
    for top, want in zip(lp.top_logprobs[1:], scored["top"][1:], strict=True):
        assert list(top) == [piece(p["word"]) for p in want]
    # Offsets point at each word (with its leading space) in the text as sent.
    for token, offset in zip(lp.tokens, lp.text_offset, strict=True):
        assert choice.text[offset : offset + len(token)].lower() == token


def test_streaming_assembles_to_the_unstreamed_answer(sdk: openai.OpenAI) -> None:
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 9, "top_p": 0.9}):
        once = sdk.completions.create(model="lstm", prompt=PROMPTS[0], max_tokens=7, **kw)
        chunks = list(
            sdk.completions.create(
                model="lstm",
                prompt=PROMPTS[0],
                max_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
                **kw,
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == once.choices[0].text
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
        assert chunks[-1].usage.completion_tokens == 7


def test_errors_surface_through_the_sdk(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        sdk.completions.create(model="nope", prompt="the sky")
    assert "unknown model 'nope'" in str(e.value) and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.completions.create(model="lstm", prompt="the sky", suffix="!")
    assert e.value.param == "suffix" and "suffix" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        sdk.completions.create(model="lstm", prompt="the sky", extra_body={"mirostat": 1})
    assert e.value.param == "mirostat"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.completions.create(model="lstm", prompt="the sky", max_tokens=10_000)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="lstm", messages=[{"role": "user", "content": "hi"}])


def test_a_stream_closed_early_runs_no_more_passes(server: ServerProcess) -> None:
    def passes() -> float:
        text = httpx.get(server.url + "/metrics").text
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("gatehouse_batch_size_count") and 'model="rnn"' in ln
        )
        return float(line.rsplit(" ", 1)[1])

    body = {"model": "rnn", "prompt": "the sky", "max_tokens": 5000, "stream": True}
    before = passes()
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break
    time.sleep(1.0)  # the server notices the disconnect; any pass still queued finishes
    after = passes()
    time.sleep(0.5)
    assert passes() == after  # nothing runs for it any more
    assert after - before < 1000


def test_the_api_key_applies_to_v1(tiny_store: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    proc = ServerProcess(model_dir, "--no-bootstrap", "--api-key", "s3cret", "--protect-inference")
    try:
        proc.wait_ready()
        wrong = openai.OpenAI(base_url=proc.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.completions.create(model="lstm", prompt="the sky", max_tokens=1)
        assert "API key" in str(e.value)
        right = openai.OpenAI(base_url=proc.url + "/v1", api_key="s3cret", max_retries=0)
        done = right.completions.create(model="lstm", prompt="the sky", max_tokens=2)
        assert done.usage.completion_tokens == 2
    finally:
        proc.stop()


# ---- in process: the parts that need no SDK ------------------------------------------


async def test_stop_n_and_prompt_lists(client) -> None:
    greedy = {"model": "gru", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0}
    full = (await client.post("/v1/completions", json=greedy)).json()["choices"][0]["text"]
    words = full.split(" ")[1:]
    stop = " ".join(words[2:4])
    cut = (await client.post("/v1/completions", json={**greedy, "stop": [stop]})).json()
    first = full.find(" " + stop)
    assert cut["choices"][0]["text"] == full[:first]
    assert cut["choices"][0]["finish_reason"] == "stop"
    many = {"model": "lstm", "prompt": PROMPTS, "max_tokens": 3, "n": 2, "seed": 5}
    body = (await client.post("/v1/completions", json=many)).json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    again = (await client.post("/v1/completions", json=many)).json()
    assert [c["text"] for c in body["choices"]] == [c["text"] for c in again["choices"]]
    assert body["usage"] == {
        "prompt_tokens": sum(len(p.split()) for p in PROMPTS),
        "completion_tokens": 18,
        "total_tokens": sum(len(p.split()) for p in PROMPTS) + 18,
    }


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"prompt": "a"}, 400, "model"),
        ({"model": "lstm"}, 400, "prompt"),
        ({"model": "lstm", "prompt": ""}, 400, "prompt"),
        ({"model": "lstm", "prompt": []}, 400, "prompt"),
        ({"model": "lstm", "prompt": "a", "logprobs": 101}, 400, "logprobs"),
        ({"model": "lstm", "prompt": "a", "temperature": 0.001}, 400, "temperature"),
        ({"model": "lstm", "prompt": "a", "n": 65}, 400, "n"),
        ({"model": "lstm", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "lstm", "prompt": "a", "logit_bias": {"5": 1}}, 400, "logit_bias"),
        ({"model": "lstm", "prompt": "a", "best_of": 2}, 400, "best_of"),
        ({"model": "lstm", "prompt": "a", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"model": "lstm", "prompt": "a " * 2049}, 413, None),
        ({"model": "lstm@9", "prompt": "a"}, 404, None),
    ],
)
async def test_v1_errors_have_openais_shape(client, body: dict, status: int, param) -> None:
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


async def test_neutral_values_of_unsupported_fields_are_accepted(client) -> None:
    neutral = {"suffix": None, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0.0}
    body = {"model": "lstm", "prompt": "a", "max_tokens": 1, "logit_bias": {}, **neutral}
    assert (await client.post("/v1/completions", json=body)).status_code == 200


async def test_only_v1_speaks_openais_error_shape(client) -> None:
    r = await client.post("/v1/completions", content=b"{", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["message"]
    r = await client.post("/predict", json={"model": "nope", "text": "a"})
    assert r.json()["status"] == 404 and r.json()["error"] == "not_found"
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/completions" in spec["paths"] and "/v1/chat/completions" not in spec["paths"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"logprobs": 3, "n": 2, "seed": 1},
        {"echo": True, "logprobs": 2},
        {"prompt": PROMPTS, "stop": ["."], "temperature": 0},
    ],
)
async def test_answers_match_the_documented_schema(client, extra: dict) -> None:
    from service.schemas.openai import Completion

    body = {"model": "rnn", "prompt": PROMPTS[0], "max_tokens": 3, **extra}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    answer = Completion.model_validate(r.json())
    prompts = len(body["prompt"]) if isinstance(body["prompt"], list) else 1
    assert [c.index for c in answer.choices] == list(range(prompts * body.get("n", 1)))
