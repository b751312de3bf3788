"""The official OpenAI Python client against `spillway serve` (run by
tests/integration/serve.rs, which starts the server and passes what
`spillway generate --json` answered for the same requests).

    python3 openai_client.py text BASE_URL KEY EXPECTED.json
    python3 openai_client.py image BASE_URL KEY EXPECTED.json IMAGE.png

Every check asserts; the last line printed is a JSON report."""

import base64
import json
import sys
import threading
import time
import urllib.request

import openai

PROMPT = "Name the capital of France."


def client(base, key, **kw):
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120, **kw)


def status(base, key):
    req = urllib.request.Request(base + "/spillway/status", headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_idle(base, key, within):
    """Seconds until no request is waiting or running."""
    start = time.time()
    while time.time() - start < within:
        q = status(base, key)["queue"]
        if q["in_flight"] == 0 and not q["running"]:
            return time.time() - start
        time.sleep(0.05)
    raise AssertionError(f"the engine was still busy after {within} s")


def text_checks(base, key, expected):
    c = client(base, key)
    report = {}
    model = c.models.list().data[0].id
    report["model"] = model
    msgs = [{"role": "user", "content": PROMPT}]

    # Not streamed: the same greedy reply and token counts as `generate`.
    r = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected["text"], (choice.message.content, expected["text"])
    assert r.usage.prompt_tokens == expected["prompt_tokens"], (r.usage, expected)
    assert r.usage.completion_tokens == expected["generated_tokens"], (r.usage, expected)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == expected["finish_reason"], choice.finish_reason
    report["whole"] = choice.message.content

    # Streamed: the deltas add up to the same text; usage comes last.
    stream = c.chat.completions.create(
        model=model, messages=msgs, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        d = chunk.choices[0]
        if d.delta.content:
            parts.append(d.delta.content)
        if d.finish_reason:
            finish = d.finish_reason
    assert "".join(parts) == expected["text"], parts
    assert len(parts) >= 2, "the reply must arrive in pieces"
    assert finish == expected["finish_reason"], finish
    assert usage.completion_tokens == expected["generated_tokens"], usage
    # The same conversation again: its prompt comes from the KV cache.
    assert usage.prompt_tokens_details.cached_tokens == expected["prompt_tokens"] - 1, usage

    # A follow-up turn reuses the cached conversation.
    follow = msgs + [{"role": "assistant", "content": choice.message.content},
                     {"role": "user", "content": "And of Italy?"}]
    r2 = c.chat.completions.create(model=model, messages=follow, temperature=0, max_tokens=8)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= expected["prompt_tokens"], r2.usage
    report["follow_up_cached_tokens"] = cached

    # A stop string: the text ends before it; finish_reason stop.
    word = expected["text"].split()[3]
    r = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24, stop=[word])
    assert r.choices[0].finish_reason == "stop", r
    assert word not in r.choices[0].message.content
    assert expected["text"].startswith(r.choices[0].message.content), r.choices[0].message.content
    report["stopped_at"] = word

    # max_tokens: exactly that many, finish_reason length.
    r = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3, r

    # Seeded sampling replays; penalties are honoured (not refused).
    kw = dict(model=model, messages=msgs, temperature=1.0, top_p=0.9, seed=7, max_tokens=12)
    a = c.chat.completions.create(**kw).choices[0].message.content
    b = c.chat.completions.create(**kw).choices[0].message.content
    assert a == b, (a, b)
    c.chat.completions.create(**kw, frequency_penalty=1.0, presence_penalty=0.5)

    # Errors in OpenAI's shape.
    try:
        client(base, "wrong-key").chat.completions.create(model=model, messages=msgs)
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
    try:
        c.chat.completions.create(model="no-such-model", messages=msgs)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    for bad in [dict(n=2), dict(logprobs=True), dict(temperature=5)]:
        try:
            c.chat.completions.create(model=model, messages=msgs, **bad)
            raise AssertionError(f"{bad} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400, e
    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 600}])
        raise AssertionError("a prompt longer than the context was accepted")
    except openai.APIStatusError as e:
        assert e.status_code == 413 and e.body["code"] == "context_length_exceeded", e.body
    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * (2 << 20)}])
        raise AssertionError("an oversized body was accepted")
    except openai.APIStatusError as e:
        assert e.status_code == 413, e

    # Four clients at once: each answered, in full.
    results = [None] * 4

    def ask(i):
        r = client(base, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            temperature=0, max_tokens=16)
        results[i] = (r.choices[0].finish_reason, r.usage.completion_tokens)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r[1] > 0 for r in results), results
    report["concurrent"] = results

    # A client that closes its stream early frees the engine at once (a
    # full reply would take thousands of tokens).
    stream = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write a very long story."}],
        temperature=0.8, max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
        if got >= 5:
            break
    stream.close()
    report["freed_after_close_secs"] = wait_idle(base, key, 10)
    # ... and the next request is answered at once, normally.
    start = time.time()
    r = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    report["next_reply_secs"] = time.time() - start
    assert r.choices[0].message.content == expected["text"]
    return report


def image_checks(base, key, expected, image):
    c = client(base, key)
    model = c.models.list().data[0].id
    with open(image, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    msgs = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Describe the image."},
    ]}]
    r = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=8)
    assert r.choices[0].message.content == expected["text"], (r.choices[0].message.content, expected["text"])
    assert r.usage.prompt_tokens == expected["prompt_tokens"], r.usage
    # A web URL is refused (the server was not started to fetch them).
    web = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]
    try:
        c.chat.completions.create(model=model, messages=web)
        raise AssertionError("a web image URL was fetched")
    except openai.BadRequestError as e:
        assert "allow-remote-images" in e.body["message"], e.body
    # A corrupt image is the client's error, not the server's.
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    try:
        c.chat.completions.create(model=model, messages=bad)
        raise AssertionError("a corrupt image was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
    return {"image_reply": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens}


def main():
    mode, base, key, expected = sys.argv[1:5]
    with open(expected) as f:
        expected = json.load(f)
    if mode == "text":
        report = text_checks(base, key, expected)
    else:
        report = image_checks(base, key, expected, sys.argv[5])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
