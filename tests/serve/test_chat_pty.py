#!/usr/bin/env python3
"""`sluice chat` through a pseudo-terminal (tools/cli_chat.c): a streamed
answer, readline history (Up arrow recalls the last line), /stats, /reset,
/system, /save and /load (a saved conversation continues in a new session
exactly as in the one that saved it, with the context restored rather than
re-evaluated; a state of another model, a missing file and a file that is
not a conversation are refused with a message and the session keeps its
conversation), Ctrl-C stopping a long answer without ending the session, an
unknown command, Ctrl-D leaving with status 0; a model without a chat
template is refused. Standard library only.
Usage: test_chat_pty.py SLUICE MODEL
"""
import os
import pty
import select
import subprocess
import sys
import tempfile
import time

SLUICE, MODEL = sys.argv[1], sys.argv[2]
TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "demo",
                         "tokenizer.json")
FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("  FAIL chat:", what, file=sys.stderr)


class Pty:
    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["TERM"] = "dumb"
            os.execv(SLUICE, [SLUICE, "chat", *args])
        self.buf = b""

    def read_until(self, pat, timeout=30):
        """Reads until pat (bytes) appears after the current mark; returns what came."""
        end = time.time() + timeout
        while pat not in self.buf:
            left = end - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    return None
                if not data:
                    return None
                self.buf += data
        i = self.buf.index(pat) + len(pat)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def send(self, s):
        os.write(self.fd, s.encode() if isinstance(s, str) else s)

    def wait(self, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(st)
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    os.read(self.fd, 4096)
                except OSError:
                    time.sleep(0.05)
        os.kill(self.pid, 9)
        return None


def stat(p, what):
    """The number after `what` in /stats' output, or None."""
    p.send("/stats\r")
    out = p.read_until(b"\r\n> ") or b""
    if what not in out:
        return None
    return int(out.split(what)[1].split()[0].strip(b","))


def save_load(p):
    """/save in session p, then the next turn there; a new session /loads
    and gives that same turn. Refusals keep the session's conversation."""
    n_fail = len(FAILS)
    d = tempfile.mkdtemp()
    conv = os.path.join(d, "conv.state")
    p.send(f"/save {conv}\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"saved " in out and os.path.exists(conv) and os.path.exists(conv + ".json"),
          f"/save: {out!r}")
    n_saved = int(out.split(b"saved ")[1].split()[0]) if out and b"saved " in out else -1
    check(n_saved > 10, f"/save saved the context's tokens: {out!r}")
    p.send("And the queen?\r")
    want = p.read_until(b"\r\n> ")
    check(want is not None and len(want.strip()) > len("And the queen?") + 2, f"turn 2: {want!r}")
    # a new session continues from the file: its context holds the saved
    # tokens before any turn, and the next turn gives the same greedy answer
    q = Pty("-m", MODEL, "--temp", "0", "-n", "12")
    q.read_until(b"\r\n> ")
    q.send("/save\r")
    out = q.read_until(b"\r\n> ")
    check(out and b"needs a FILE" in out, f"/save without a file: {out!r}")
    q.send(f"/load {conv}\r")
    out = q.read_until(b"\r\n> ")
    check(out and b"loaded %d tokens" % n_saved in out and b"3 messages" in out, f"/load: {out!r}")
    check(stat(q, b"context ") == n_saved, "the loaded context holds the saved tokens")
    prompt_before = stat(q, b"prompt tokens ")
    q.send("And the queen?\r")
    got = q.read_until(b"\r\n> ")
    check(got == want, f"the loaded conversation continues as the saved one: {got!r} vs {want!r}")
    prompt_after = stat(q, b"prompt tokens ")
    check(prompt_before is not None and prompt_after is not None and
          prompt_after - prompt_before < n_saved,
          f"only the new turn was evaluated ({prompt_before} -> {prompt_after}, {n_saved} loaded)")
    # refusals: the session keeps its conversation (5 messages now)
    other_model = os.path.join(d, "other.sluice")
    r = subprocess.run([SLUICE, "synth", "--preset", "demo", "--layers", "1", "--seed", "7",
                        "--tokenizer", TOKENIZER, "-o", other_model, "--quiet"],
                       capture_output=True)
    check(r.returncode == 0, f"synth the other model: {r.stderr!r}")
    o = Pty("-m", other_model, "--temp", "0", "-n", "4")
    o.read_until(b"\r\n> ")
    o.send("hi\r")
    o.read_until(b"\r\n> ")
    other = os.path.join(d, "other.state")
    o.send(f"/save {other}\r")
    out = o.read_until(b"\r\n> ")
    check(out and b"saved " in out, f"/save on the other model: {out!r}")
    o.send(b"\x04")
    o.wait()
    bad = os.path.join(d, "bad.state")
    with open(bad, "wb") as f:
        f.write(b"not a state")
    with open(bad + ".json", "w") as f:
        f.write('{"format": "sluice-chat", "version": 1, "system": null, "messages": []}')
    notconv = os.path.join(d, "notconv.state")
    with open(notconv, "wb") as f:
        f.write(b"x")
    with open(notconv + ".json", "w") as f:
        f.write("[1, 2]")
    for path, want_msg in ((other, b"another model"), (os.path.join(d, "missing"), b"cannot read"),
                           (bad, b"not a sluice saved state"),
                           (notconv, b"not a sluice chat conversation")):
        q.send(f"/load {path}\r")
        out = q.read_until(b"\r\n> ")
        check(out and want_msg in out and b"unchanged" in out, f"/load {path}: {out!r}")
    check(stat(q, b"messages ") == 5, "the refused loads kept the conversation")
    check(stat(q, b"context ") > n_saved, "the refused loads kept the context")
    q.send("/load /dev/null/x\r")  # a JSON path that cannot exist
    out = q.read_until(b"\r\n> ")
    check(out and b"cannot read" in out, f"/load under a file: {out!r}")
    q.send(f"/save {os.path.join(d, 'no', 'such', 'dir')}\r")
    out = q.read_until(b"\r\n> ")
    check(out and b"/save: " in out and b"cannot write" in out, f"/save to a missing directory: {out!r}")
    check(os.waitpid(q.pid, os.WNOHANG)[0] == 0, "the session died")
    q.send(b"\x04")
    check(q.wait() == 0, "Ctrl-D after the refusals")
    return len(FAILS) == n_fail


def main():
    p = Pty("-m", MODEL, "--temp", "0", "-n", "12", "--system", "You are terse.")
    check(p.read_until(b"\r\n> ") is not None, "no prompt at start")
    p.send("Tell me about the king\r")
    out = p.read_until(b"\r\n> ")
    check(out is not None and len(out.strip()) > len("Tell me about the king") + 2, f"answer: {out!r}")
    first = out
    # readline history: Up twice (past /reset) + Enter repeats the question;
    # the same greedy answer from a fresh conversation
    p.send("/reset\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"conversation reset" in out, f"/reset: {out!r}")
    p.send("\x1b[A\x1b[A\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"Tell me about the king" in out and first.split(b"\n", 1)[-1] in out,
          f"history recall + same answer after /reset: {out!r} vs {first!r}")
    p.send("/stats\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"generated 24 tokens" in out and b"tok/s" in out and b"expert cache" in out,
          f"/stats: {out!r}")
    check(save_load(p), "save/load")
    p.send("/frobnicate\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"unknown command" in out, f"unknown command: {out!r}")
    p.send("/system Answer in French.\r")
    out = p.read_until(b"\r\n> ")
    check(out and b"system prompt set" in out, f"/system: {out!r}")
    check(os.waitpid(p.pid, os.WNOHANG)[0] == 0, "the session died")
    p.send(b"\x04")
    rc = p.wait()
    check(rc == 0, f"Ctrl-D exit status {rc}")

    # Ctrl-C stops a long answer; the session goes on
    # (an answer long enough to be still running when Ctrl-C arrives on a
    # fast, idle machine: 20000 tokens past the demo's trained length)
    p = Pty("-m", MODEL, "--temp", "0", "-n", "20000", "--ctx", "20100", "--ignore-eos")
    p.read_until(b"\r\n> ")
    p.send("Tell me a very long story\r")
    p.read_until(b"Tell me a very long story")
    time.sleep(0.3)
    p.send(b"\x03")
    out = p.read_until(b"\r\n> ", timeout=30)
    check(out is not None and b"[interrupted]" in out, f"Ctrl-C: {out!r}")
    p.send("/stats\r")
    out = p.read_until(b"\r\n> ")
    gen = None
    if out and b"generated " in out:
        gen = int(out.split(b"generated ")[1].split(b" ")[0])
    check(gen is not None and gen < 20000, f"Ctrl-C stopped the answer early: {out!r}")
    p.send("/quit\r")
    check(p.wait() == 0, "/quit exit status")

    # usage errors
    r = subprocess.run([SLUICE, "chat", "-m", MODEL, "--temp", "hot"], capture_output=True)
    check(r.returncode == 2 and b"--temp" in r.stderr, f"bad --temp: {r.returncode} {r.stderr!r}")
    r = subprocess.run([SLUICE, "chat", "-m", "/nonexistent.sluice"], capture_output=True, stdin=subprocess.DEVNULL)
    check(r.returncode == 1 and b"nonexistent" in r.stderr, f"missing model: {r.returncode} {r.stderr!r}")
    print(f"chat: {'ok' if not FAILS else str(len(FAILS)) + ' failed'}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
