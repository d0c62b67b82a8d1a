#!/usr/bin/env python3
"""Runs a command in a pseudo-terminal and answers its prompts.

Usage: answer.py PROMPT ANSWER [PROMPT ANSWER ...] -- COMMAND [ARGS...]

Waits for each PROMPT to appear in the output, then types ANSWER and Enter. Prints the
whole transcript to stdout and exits with the command's exit code (124 on a timeout).
"""
import os
import pty
import select
import sys
import time

TIMEOUT = 60.0


def main() -> int:
    args = sys.argv[1:]
    split = args.index("--")
    pairs = list(zip(args[:split:2], args[1:split:2]))
    command = args[split + 1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)
    transcript = b""
    deadline = time.monotonic() + TIMEOUT
    pending = list(pairs)
    searched = 0
    while True:
        if time.monotonic() > deadline:
            sys.stdout.write(transcript.decode("utf-8", "replace"))
            sys.stdout.write("\n[timeout waiting for %r]\n" % (pending[0][0] if pending else "exit"))
            os.kill(pid, 9)
            return 124
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                break
            transcript += data
        if pending and pending[0][0].encode() in transcript[searched:]:
            searched = transcript.index(pending[0][0].encode(), searched) + len(pending[0][0])
            time.sleep(0.1)  # let the program switch echo off for a password
            os.write(fd, pending[0][1].encode() + b"\r")
            pending.pop(0)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(transcript.decode("utf-8", "replace"))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
