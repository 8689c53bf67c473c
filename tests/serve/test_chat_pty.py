#!/usr/bin/env python3
"""`sluice chat` through a pseudo-terminal (tools/cli_chat.c): a streamed
answer, readline history (Up arrow recalls the last line), /stats, /reset,
/system, /save and /load (not available until state save/load lands),
Ctrl-C stopping a long answer without ending the session, an unknown
command, Ctrl-D leaving with status 0; a model without a chat template is
refused. Standard library only.
Usage: test_chat_pty.py SLUICE MODEL
"""
import os
import pty
import select
import sys
import time

SLUICE, MODEL = sys.argv[1], sys.argv[2]
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
    for cmd in ("/save conv.bin", "/load conv.bin"):
        p.send(cmd + "\r")
        out = p.read_until(b"\r\n> ")
        check(out and b"not available until state save/load lands" in out, f"{cmd}: {out!r}")
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
    import subprocess
    r = subprocess.run([SLUICE, "chat", "-m", MODEL, "--temp", "hot"], capture_output=True)
    check(r.returncode == 2 and b"--temp" in r.stderr, f"bad --temp: {r.returncode} {r.stderr!r}")
    r = subprocess.run([SLUICE, "chat", "-m", "/nonexistent.sluice"], capture_output=True, stdin=subprocess.DEVNULL)
    check(r.returncode == 1 and b"nonexistent" in r.stderr, f"missing model: {r.returncode} {r.stderr!r}")
    print(f"chat: {'ok' if not FAILS else str(len(FAILS)) + ' failed'}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
