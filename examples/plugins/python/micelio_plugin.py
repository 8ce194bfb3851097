"""A small helper for writing micelio plugins in Python (standard library only).

Copy this file next to your plugin. It speaks the node's plugin protocol
(JSON-RPC 2.0, one message per line on stdin/stdout; see docs/plugins.md):
it answers `initialize` with your manifest, dispatches commands, events and
desired-state applies to your functions, and lets them call the node
(broadcast, state, members).

    from micelio_plugin import Plugin

    p = Plugin(commands=[("hello", "/hello", "says hello")])

    @p.command("hello")
    def hello(call):
        return "hello, " + call["nick"]

    p.run()

A command handler returns a string (exit status 0), or a (text, status)
pair. An apply handler returns the value now in place, or raises to report
a failure (the node retries with backoff). Everything printed with print()
would corrupt the protocol: log with `p.log(...)` or write to stderr, which
the node logs.
"""

import base64
import collections
import json
import os
import sys

PROTOCOL_VERSION = 1


class NodeError(Exception):
    """The node answered a request with an error."""

    def __init__(self, code, message):
        super().__init__("%s (%d)" % (message, code))
        self.code = code
        self.message = message


class Plugin:
    """One plugin: its manifest and its handlers."""

    def __init__(self, commands=(), msg_types=(), desired_prefixes=(), events=()):
        self.manifest = {
            "commands": [
                {"name": c[0], "usage": c[1] if len(c) > 1 else "", "help": c[2] if len(c) > 2 else ""}
                for c in commands
            ],
            "msg_types": list(msg_types),
            "desired_prefixes": list(desired_prefixes),
            "events": list(events),
        }
        self.name = os.environ.get("MICELIO_PLUGIN_NAME", "")
        self.node = {}
        self._commands = {}
        self._events = {}
        self._apply = None
        self._remove = None
        self._on_initialized = None
        self._on_shutdown = None
        self._next_id = 1
        self._later = collections.deque()
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer

    # -- registering handlers -------------------------------------------

    def command(self, name):
        """Decorator: `fn(call)` answers /name. `call` has command, args,
        json, nick, user and key_fingerprint."""

        def wrap(fn):
            self._commands[name] = fn
            return fn

        return wrap

    def on(self, event):
        """Decorator: `fn(params)` for events named `event` ("chat",
        "state", "peer_up", "peer_down", "member_up", "member_down",
        "member_left", "message"), or "*" for all."""

        def wrap(fn):
            self._events[event] = fn
            return fn

        return wrap

    def reconciler(self, apply, remove):
        """`apply(key, value)` returns the value in place (or raises);
        `remove(key)` undoes it (or raises)."""
        self._apply = apply
        self._remove = remove

    def on_initialized(self, fn):
        """Decorator: `fn()` once the node has taken the claims."""
        self._on_initialized = fn
        return fn

    def on_shutdown(self, fn):
        """Decorator: `fn(grace_ms)` when the node stops (then the plugin
        exits)."""
        self._on_shutdown = fn
        return fn

    # -- calling the node -----------------------------------------------

    def broadcast(self, msg_type, payload):
        """Sends `payload` (bytes or str) to the whole mesh as `msg_type`."""
        return self.call("broadcast", dict(msg_type=msg_type, **_bytes("payload", payload)))

    def state_get(self, key):
        """The entry of the full key `key`, or None."""
        return self.call("state.get", {"key": key})["entry"]

    def state_scan(self, prefix, limit=100):
        """Entries whose full key starts with `prefix` (at most 1,000)."""
        return self.call("state.scan", {"prefix": prefix, "limit": limit})["entries"]

    def state_set(self, key, value):
        """Writes `<node>/plugin/<name>/<key>`; returns the full key."""
        return self.call("state.set", dict(key=key, **_bytes("value", value)))["key"]

    def state_delete(self, key):
        """Deletes `<node>/plugin/<name>/<key>`."""
        return self.call("state.delete", {"key": key})["key"]

    def members(self):
        """The mesh's members, with liveness and tags."""
        return self.call("members", {})["members"]

    def log(self, message, level="info"):
        """A line in the node's log, with the plugin's name."""
        self.send({"jsonrpc": "2.0", "method": "log", "params": {"level": level, "message": message}})

    def call(self, method, params):
        """Sends a request and returns its result (raises NodeError)."""
        rid = "p%d" % self._next_id
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            msg = self._read()
            if msg is None:
                raise NodeError(-32000, "the node closed the connection")
            if msg.get("id") == rid and "method" not in msg:
                if "error" in msg:
                    raise NodeError(msg["error"].get("code", 0), msg["error"].get("message", ""))
                return msg.get("result")
            self._later.append(msg)

    def send(self, msg):
        """Writes one message (one line)."""
        self._out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        self._out.flush()

    # -- the loop ---------------------------------------------------------

    def run(self):
        """Serves the node until it says shutdown or closes stdin."""
        while True:
            msg = self._later.popleft() if self._later else self._read()
            if msg is None:
                return
            if self._dispatch(msg) == "stop":
                return

    def _read(self):
        while True:
            line = self._in.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError:
                sys.stderr.write("micelio_plugin: the node sent a line that is not JSON\n")

    def _reply(self, rid, result=None, error=None):
        msg = {"jsonrpc": "2.0", "id": rid}
        if error is not None:
            msg["error"] = {"code": error[0], "message": error[1]}
        else:
            msg["result"] = result
        self.send(msg)

    def _dispatch(self, msg):
        method = msg.get("method")
        params = msg.get("params") or {}
        rid = msg.get("id")
        if method is None:
            return None  # an answer nobody waits for
        if method == "initialize":
            self.node = params.get("node", {})
            self.name = params.get("plugin", self.name)
            self._reply(rid, {"protocol_version": PROTOCOL_VERSION, "manifest": self.manifest})
        elif method == "initialized":
            if self._on_initialized:
                self._on_initialized()
        elif method == "shutdown":
            if self._on_shutdown:
                self._on_shutdown(params.get("grace_ms", 0))
            return "stop"
        elif method == "event":
            fn = self._events.get(params.get("event")) or self._events.get("*")
            if fn:
                fn(params)
        elif method == "command":
            fn = self._commands.get(params.get("command"))
            if fn is None:
                self._reply(rid, error=(-32601, "no command %r" % params.get("command")))
                return None
            try:
                out = fn(params)
            except Exception as e:  # the plugin's own failure
                self._reply(rid, {"text": "error: %s" % e, "status": 1})
                return None
            text, status = (out, 0) if not isinstance(out, tuple) else out
            self._reply(rid, {"text": text or "", "status": status})
        elif method in ("apply", "remove"):
            fn = self._apply if method == "apply" else self._remove
            if fn is None:
                self._reply(rid, {"ok": False, "message": "no reconciler"})
                return None
            try:
                if method == "apply":
                    actual = fn(params["key"], params["value"])
                else:
                    actual = fn(params["key"])
                self._reply(rid, {"ok": True, "actual": actual if isinstance(actual, str) else None})
            except Exception as e:
                self._reply(rid, {"ok": False, "message": str(e)})
        elif rid is not None:
            self._reply(rid, error=(-32601, "no method %r" % method))
        return None


def _bytes(name, value):
    if isinstance(value, str):
        return {name: value}
    return {name + "_b64": base64.b64encode(value).decode()}


def payload_bytes(params, name="payload"):
    """The bytes of a field sent as text or base64 (`payload`, `value`)."""
    if name in params:
        return params[name].encode()
    return base64.b64decode(params.get(name + "_b64", ""))
