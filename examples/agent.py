#!/usr/bin/env python3
"""A Pod program for podmesh, in Python with only the standard library.

It attaches to a local Pod through the node's local API (docs/local-api.md), prints every
message the Pod receives, replies to its sender, and then acknowledges it, so a message leaves
the inbox only once it has been handled. Messages that arrived while the program was not
running, or that it received but did not acknowledge before it stopped, come back in the
snapshot of its next attach: each message is handled at least once.

    python3 examples/agent.py --data-dir data/n2 --pod b

Replies say "re: <message>"; messages that are themselves replies get none, so two agents
peered with each other do not talk forever.
"""

import argparse
import json
import os
import socket
import sys

REPLY_PREFIX = "re: "


class Connection:
    """One local API connection: JSON lines in both directions."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("r", encoding="utf-8", newline="\n")
        self.next_id = 0

    def send(self, method, params):
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "method": method, "params": params})
        self.sock.sendall(line.encode("utf-8") + b"\n")
        return self.next_id

    def read(self):
        """The next reply or event; None when the node closed the connection."""
        line = self.reader.readline()
        if not line:
            return None
        return json.loads(line)

    def call(self, method, params):
        """Sends a request and returns its reply's data; raises on an error reply. Used on a
        connection that is not attached, so the next line is the reply."""
        request_id = self.send(method, params)
        while True:
            reply = self.read()
            if reply is None:
                raise ConnectionError("the node closed the connection")
            if reply.get("id") != request_id:
                continue
            if reply["event"] == "error":
                error = reply["data"]
                raise RuntimeError(f"{method}: {error['code']}: {error['message']}")
            return reply["data"]


def handle(requests, pod, message):
    """Prints one message, replies to its sender and acknowledges it. A reply the node refuses
    (the sender is not live, its inbox is full) is reported and the message still counts as
    handled, so one refusal does not bring the same message back on every start."""
    sender, text = message["from"], message["message"]
    print(f"[Peer message from `{sender}`] {text}", flush=True)
    if not text.startswith(REPLY_PREFIX):
        try:
            requests.call(
                "send_to_peer", {"pod": pod, "name": sender, "message": REPLY_PREFIX + text}
            )
        except RuntimeError as refused:
            print(f"no reply to {sender}: {refused}", file=sys.stderr, flush=True)
    requests.call("inbox_ack", {"pod": pod, "up_to": message["id"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="the node's data directory")
    parser.add_argument("--socket", help="the local API socket (default <data-dir>/podmesh.sock)")
    parser.add_argument("--pod", required=True, help="the local Pod to follow")
    parser.add_argument(
        "--exit-after", type=int, default=0, help="stop after this many messages (0: never)"
    )
    args = parser.parse_args()
    path = args.socket or os.path.join(args.data_dir, "podmesh.sock")

    events = Connection(path)
    requests = Connection(path)
    attach = events.send("attach", {"pod": args.pod})
    handled = 0
    while True:
        event = events.read()
        if event is None:
            print("the node closed the connection", file=sys.stderr)
            return 1
        kind, data = event["event"], event["data"]
        if kind == "error":
            print(f"{data['code']}: {data['message']}", file=sys.stderr)
            return 1
        if kind == "snapshot" and event.get("id") == attach:
            print(f"attached to {data['pod']['address']}", flush=True)
            backlog = data.get("inbox", [])
        elif kind == "notification":
            backlog = [data]
        else:
            backlog = []  # alerts and other live events: nothing to answer
        for message in backlog:
            handle(requests, args.pod, message)
            handled += 1
            if args.exit_after and handled >= args.exit_after:
                return 0


if __name__ == "__main__":
    sys.exit(main())
