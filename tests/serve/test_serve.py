#!/usr/bin/env python3
"""Black-box tests of `sluice serve` (tools/cli_serve.c, docs/serve.md).

Starts the real server on a free loopback port with a model (argv[2],
default build/default.sluice) and talks to it with the official openai
client, curl and raw sockets:
  * streaming and non-streaming results equal at temperature 0 (chat and
    completions), usage counts, logprobs, stop sequences;
  * every bad-input class -> a 4xx with an OpenAI-style JSON error body, and
    the server keeps serving;
  * --api-key (401), 429 when busy, 413 for a body over --max-body;
  * 16 concurrent clients, each response equal to the same request served
    alone; a client that disconnects mid-stream frees its sequence;
  * the prefix cache reuses a finished request's context.
Usage: test_serve.py SLUICE [MODEL]; exits non-zero on any failure.
"""
import concurrent.futures as cf
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import openai

SLUICE = sys.argv[1] if len(sys.argv) > 1 else "build/sluice"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "build/default.sluice"
FAILS = []
N_OK = 0


def check(cond, what):
    global N_OK
    if cond:
        N_OK += 1
    else:
        FAILS.append(what)
        print("  FAIL serve:", what, file=sys.stderr)


class Server:
    def __init__(self, *flags):
        self.dir = tempfile.mkdtemp()
        pf = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.p = subprocess.Popen([SLUICE, "serve", "-m", MODEL, "--port", "0", "--port-file", pf,
                                   "--model-name", "demo", *flags], stderr=self.log)
        for _ in range(300):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            if self.p.poll() is not None:
                raise RuntimeError("server exited: " + self.logtext())
            time.sleep(0.05)
        self.port = int(open(pf).read())
        self.url = f"http://127.0.0.1:{self.port}"

    def logtext(self):
        self.log.seek(0)
        return self.log.read()

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def raw(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def metrics(self):
        st, data = self.raw("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self):
        self.p.terminate()
        try:
            rc = self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = -9
        check(rc == 0, f"server exits 0 on SIGTERM (got {rc}): {self.logtext()[-300:]}")


def error_body(status, data, want_status, what, code=None):
    check(status == want_status, f"{what}: status {status}, want {want_status}: {data[:200]!r}")
    try:
        e = json.loads(data)["error"]
        check(isinstance(e["message"], str) and e["message"] and "type" in e,
              f"{what}: error body {data[:200]!r}")
        if code:
            check(e.get("code") == code, f"{what}: code {e.get('code')} want {code}")
    except Exception as ex:  # noqa: BLE001
        check(False, f"{what}: not an OpenAI error body ({ex}): {data[:200]!r}")


def chat_msgs(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def test_basic(s):
    cl = s.client()
    models = cl.models.list()
    check([m.id for m in models.data] == ["demo"], f"models: {models}")
    st, data = s.raw("GET", "/health")
    check(st == 200 and json.loads(data)["status"] == "ok", "health")
    # chat: non-streaming vs streaming at temperature 0
    r = cl.chat.completions.create(model="demo", messages=chat_msgs("Tell me a story."),
                                   max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    text = r.choices[0].message.content
    check(r.choices[0].finish_reason in ("length", "stop"), f"finish {r.choices[0].finish_reason}")
    check(r.usage.completion_tokens == len(r.choices[0].logprobs.content),
          f"usage {r.usage} vs {len(r.choices[0].logprobs.content)} logprobs")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total_tokens")
    check("".join(t.token for t in r.choices[0].logprobs.content) == text,
          "chat logprob tokens concatenate to the text")
    lp = r.choices[0].logprobs.content[0]
    check(len(lp.top_logprobs) == 3 and lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob
          and abs(lp.top_logprobs[0].logprob - lp.logprob) < 1e-5 and lp.logprob <= 0,
          f"top_logprobs at temperature 0: {lp}")
    chunks = list(cl.chat.completions.create(model="demo", messages=chat_msgs("Tell me a story."),
                                             max_tokens=12, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    stext = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(stext == text, f"stream {stext!r} != non-stream {text!r}")
    check(chunks[0].choices[0].delta.role == "assistant", "first chunk has the role")
    fin = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(fin == [r.choices[0].finish_reason], f"stream finish {fin}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
          and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens, f"stream usage {chunks[-1].usage}")
    # completions: usage against the tokenizer
    ids = json.loads(subprocess.run([SLUICE, "tokenize", "-m", MODEL, "--text-file", "/dev/stdin"],
                                    input=b"Once upon a time", capture_output=True).stdout)
    c = cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=10, temperature=0,
                              logprobs=2)
    check(c.usage.prompt_tokens == len(ids), f"prompt_tokens {c.usage.prompt_tokens} vs {len(ids)}")
    check(c.usage.completion_tokens == len(c.choices[0].logprobs.tokens) == 10, f"usage {c.usage}")
    check("".join(c.choices[0].logprobs.tokens) == c.choices[0].text, "completion tokens = text")
    sc = "".join(x.choices[0].text for x in cl.completions.create(
        model="demo", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    check(sc == c.choices[0].text, f"completion stream {sc!r} != {c.choices[0].text!r}")
    # curl: the same request, non-streaming
    out = subprocess.run(["curl", "-s", s.url + "/v1/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"prompt": "Once upon a time", "max_tokens": 10,
                                            "temperature": 0})], capture_output=True).stdout
    check(json.loads(out)["choices"][0]["text"] == c.choices[0].text, f"curl: {out[:200]!r}")
    # seeded sampling is reproducible
    a = [cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=10, temperature=1,
                               top_p=0.9, seed=7, extra_body={"top_k": 50}).choices[0].text for _ in range(2)]
    check(a[0] == a[1], f"seeded samples differ: {a}")
    u = [cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=16,
                               temperature=1).choices[0].text for _ in range(2)]
    check(u[0] != u[1], f"unseeded samples are identical: {u}")
    # stop sequences: the greedy text cut before the first occurrence
    base = cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=30,
                                 temperature=0).choices[0].text
    stop = base[len(base) // 2: len(base) // 2 + 3]
    want = base[:base.index(stop)]
    for stream in (False, True):
        if stream:
            parts = list(cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=30,
                                               temperature=0, stop=[stop, "zzqx-never"], stream=True))
            got = "".join(p.choices[0].text for p in parts)
            finish = parts[-1].choices[0].finish_reason
        else:
            r2 = cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=30,
                                       temperature=0, stop=[stop, "zzqx-never"])
            got, finish = r2.choices[0].text, r2.choices[0].finish_reason
        check(got == want and finish == "stop",
              f"stop {stop!r} (stream={stream}): got {got!r} / {finish}, want {want!r}")


def test_bad_input(s):
    chat = "/v1/chat/completions"
    cmpl = "/v1/completions"
    H = {"Content-Type": "application/json"}
    good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        ("malformed JSON", chat, b'{"messages": [', 400, None),
        ("not an object", chat, b'[1, 2]', 400, None),
        ("messages not an array", chat, json.dumps({"messages": "hi"}).encode(), 400, None),
        ("message without role", chat, json.dumps({"messages": [{"content": "x"}]}).encode(), 400, None),
        ("bad role", chat, json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None),
        ("content of a wrong type", chat, json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, None),
        ("max_tokens string", chat, json.dumps({**good, "max_tokens": "x"}).encode(), 400, None),
        ("max_tokens 0", chat, json.dumps({**good, "max_tokens": 0}).encode(), 400, None),
        ("max_tokens fraction", chat, json.dumps({**good, "max_tokens": 1.5}).encode(), 400, None),
        ("temperature string", chat, json.dumps({**good, "temperature": "hot"}).encode(), 400, None),
        ("temperature 5", chat, json.dumps({**good, "temperature": 5}).encode(), 400, None),
        ("top_p 0", chat, json.dumps({**good, "top_p": 0}).encode(), 400, None),
        ("top_p 1.5", chat, json.dumps({**good, "top_p": 1.5}).encode(), 400, None),
        ("top_k -1", chat, json.dumps({**good, "top_k": -1}).encode(), 400, None),
        ("n 2", chat, json.dumps({**good, "n": 2}).encode(), 400, None),
        ("stream not bool", chat, json.dumps({**good, "stream": "yes"}).encode(), 400, None),
        ("stop of a wrong type", chat, json.dumps({**good, "stop": 3}).encode(), 400, None),
        ("empty stop", chat, json.dumps({**good, "stop": [""]}).encode(), 400, None),
        ("5 stop strings", chat, json.dumps({**good, "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, None),
        ("top_logprobs 50", chat, json.dumps({**good, "logprobs": True, "top_logprobs": 50}).encode(), 400, None),
        ("unknown model", chat, json.dumps({**good, "model": "gpt-17"}).encode(), 404, "model_not_found"),
        ("prompt missing", cmpl, json.dumps({"max_tokens": 2}).encode(), 400, None),
        ("prompt a number", cmpl, json.dumps({"prompt": 7}).encode(), 400, None),
        ("logprobs 9", cmpl, json.dumps({"prompt": "x", "logprobs": 9}).encode(), 400, None),
        ("too-long prompt", cmpl, json.dumps({"prompt": "word " * 3000}).encode(), 400, "context_length_exceeded"),
        ("prompt + max_tokens too long", cmpl, json.dumps({"prompt": "x", "max_tokens": 100000}).encode(), 400,
         "context_length_exceeded"),
        ("non-UTF-8 body", chat, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ]
    for what, path, body, status, code in cases:
        st, data = s.raw("POST", path, body, H)
        error_body(st, data, status, what, code)
    st, data = s.raw("GET", chat)
    error_body(st, data, 405, "GET on a POST route")
    st, data = s.raw("GET", "/nowhere")
    error_body(st, data, 404, "unknown route")
    st, data = s.raw("POST", cmpl, b'{"prompt": "' + b"a" * (70 * 1024) + b'"}', H)
    error_body(st, data, 413, "body over --max-body")
    # the openai client sees the same errors as exceptions with the message
    try:
        s.client().chat.completions.create(model="demo", messages=chat_msgs("x"), temperature=9)
        check(False, "temperature 9 accepted")
    except openai.BadRequestError as e:
        check("temperature" in str(e), f"client error: {e}")
    # ... and the server keeps serving
    st, data = s.raw("POST", cmpl, json.dumps({"prompt": "Once", "max_tokens": 2}).encode(), H)
    check(st == 200 and json.loads(data)["usage"]["completion_tokens"] == 2, f"after errors: {st} {data[:200]!r}")
    m = s.metrics()
    check(m["sluice_http_errors_total"] >= len(cases), f"metrics http errors {m['sluice_http_errors_total']}")


def one_request(s, i, stream):
    cl = s.client()
    words = ["king", "river", "city", "house", "mountain", "priest", "sword", "garden", "sea", "child",
             "temple", "road", "night", "bread", "wind", "stone"]
    prompt = f"The {words[i]} of"
    if i % 2:
        if stream:
            return "".join(c.choices[0].text for c in cl.completions.create(
                model="demo", prompt=prompt, max_tokens=6, temperature=0, stream=True))
        return cl.completions.create(model="demo", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
    msgs = chat_msgs(prompt)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in cl.chat.completions.create(
            model="demo", messages=msgs, max_tokens=6, temperature=0, stream=True) if c.choices)
    return cl.chat.completions.create(model="demo", messages=msgs, max_tokens=6,
                                      temperature=0).choices[0].message.content


def test_concurrency(s):
    n = 16
    alone = [one_request(s, i, False) for i in range(n)]
    m0 = s.metrics()
    with cf.ThreadPoolExecutor(n) as ex:
        futs = [ex.submit(one_request, s, i, i % 3 == 0) for i in range(n)]
        together = [f.result() for f in futs]
    m1 = s.metrics()
    for i in range(n):
        check(together[i] == alone[i], f"client {i}: concurrent {together[i]!r} != alone {alone[i]!r}")
    check(len(set(alone)) > n // 2, f"the prompts give distinct answers: {alone}")
    # continuous batching: the concurrent requests shared decode passes
    check(m1["sluice_batched_decode"] == 1, "one multi-sequence context")
    steps = m1["sluice_decode_steps_total"] - m0["sluice_decode_steps_total"]
    toks = m1["sluice_decode_batch_tokens_total"] - m0["sluice_decode_batch_tokens_total"]
    check(steps > 0 and toks / steps > 2, f"mean decode batch {toks}/{steps} in the concurrent phase")
    check(m1["sluice_decode_batch_size_max"] > 2, f"largest decode batch {m1['sluice_decode_batch_size_max']}")
    check(m1["sluice_expert_loads_total"] > m0["sluice_expert_loads_total"], "expert loads counted")


def test_disconnect(s):
    before = s.metrics()
    sock = socket.create_connection(("127.0.0.1", s.port))
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    got = b""
    while b"data:" not in got:
        got += sock.recv(4096)
    sock.close()
    for _ in range(200):
        m = s.metrics()
        if m["sluice_active_sequences"] == 0 and m["sluice_requests_finished_total"] > before["sluice_requests_finished_total"]:
            break
        time.sleep(0.05)
    check(m["sluice_active_sequences"] == 0, f"the disconnected stream still runs: {m}")
    gen = m["sluice_generated_tokens_total"] - before["sluice_generated_tokens_total"]
    check(gen < 300, f"generated {gen} tokens after the client left")
    st, data = s.raw("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 2}).encode())
    check(st == 200, f"serving after a disconnect: {st}")


def test_prefix_cache(s):
    cl = s.client()
    a = cl.completions.create(model="demo", prompt="The king of the land said", max_tokens=1, temperature=0)
    b = cl.completions.create(model="demo", prompt="The king of the land said to his people that",
                              max_tokens=4, temperature=0)
    cached = b.usage.prompt_tokens_details.cached_tokens if b.usage.prompt_tokens_details else None
    check(cached == a.usage.prompt_tokens, f"cached_tokens {cached}, want {a.usage.prompt_tokens}")
    m = s.metrics()
    check(m["sluice_prompt_tokens_cached_total"] >= a.usage.prompt_tokens, "metrics count cached tokens")


def test_limits():
    r = subprocess.run([SLUICE, "serve", "-m", MODEL, "--port", "0", "--max-seqs", "200"],
                       capture_output=True, timeout=60)
    check(r.returncode == 1 and b"at most 256" in r.stderr,
          f"--max-seqs 200 (+ 200 cached) over the sequence limit: {r.returncode} {r.stderr!r}")
    s = Server("--max-seqs", "1", "--max-queue", "0", "--api-key", "sekret")
    try:
        st, data = s.raw("GET", "/v1/models")
        error_body(st, data, 401, "no API key")
        st, data = s.raw("GET", "/v1/models", headers={"Authorization": "Bearer sekreT"})
        error_body(st, data, 401, "wrong API key")
        check(s.raw("GET", "/health")[0] == 200, "health needs no key")
        try:
            s.client("wrong").models.list()
            check(False, "wrong key accepted by the client")
        except openai.AuthenticationError:
            check(True, "")
        cl = s.client("sekret")
        stream = cl.completions.create(model="demo", prompt="Once upon a time", max_tokens=300,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        st, data = s.raw("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}).encode(),
                         {"Authorization": "Bearer sekret"})
        error_body(st, data, 429, "busy", "server_busy")
        stream.close()
        for _ in range(100):
            st, data = s.raw("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}).encode(),
                             {"Authorization": "Bearer sekret"})
            if st == 200:
                break
            time.sleep(0.05)
        check(st == 200, f"not busy after the stream closed: {st} {data[:200]!r}")
    finally:
        s.stop()


def main():
    t0 = time.time()
    s = Server("--max-seqs", "16", "--max-body", "64K", "--ctx", "512")
    try:
        for t in (test_basic, test_bad_input, test_concurrency, test_disconnect, test_prefix_cache):
            t1 = time.time()
            t(s)
            print(f"  {t.__name__}: {time.time() - t1:.1f} s", file=sys.stderr)
    finally:
        s.stop()
    test_limits()
    print(f"serve: {N_OK} checks passed, {len(FAILS)} failed ({time.time() - t0:.1f} s)")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
