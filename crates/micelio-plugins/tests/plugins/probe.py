"""The external plugin of the tests, built on examples/plugins/python.

Environment: PROBE_DIR (where it writes what it saw and applied),
PROBE_IGNORE_SHUTDOWN (set: it ignores shutdown and keeps running).
Commands: /probe [fail|set K V|get K|scan PREFIX|del K|log TEXT|
broadcast TEXT|members|crash|crash-forever|garbage|flood|deaf].
"""

import json
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "..", "..", "examples", "plugins", "python"))

from micelio_plugin import NodeError, Plugin, payload_bytes  # noqa: E402

out = os.environ["PROBE_DIR"]
if os.path.exists(os.path.join(out, "CRASH")):
    sys.exit(4)

p = Plugin(
    commands=[("probe", "/probe [what]", "the test plugin")],
    msg_types=[1100],
    desired_prefixes=["files/"],
    events=["chat", "members", "state", "peers"],
)


def note(kind, params):
    with open(os.path.join(out, "events.jsonl"), "a") as f:
        f.write(json.dumps(dict(params, seen=kind)) + "\n")


@p.on("*")
def event(params):
    note(params.get("event"), params)


@p.on("message")
def message(params):
    note("message", dict(params, text=payload_bytes(params).decode()))


@p.command("probe")
def probe(call):
    args = call["args"].split(" ", 2) if call["args"] else []
    what = args[0] if args else ""
    if what == "":
        return "probe on %s from %s" % (p.node.get("name"), call["nick"])
    if what == "fail":
        return ("asked to fail", 1)
    if what == "set":
        return p.state_set(args[1], args[2])
    if what == "get":
        e = p.state_get(args[1])
        return e["value"] if e else "none"
    if what == "scan":
        return ",".join(e["key"] for e in p.state_scan(args[1], 10))
    if what == "del":
        return p.state_delete(args[1])
    if what == "log":
        p.log(call["args"][len("log "):], "warn")
        return "logged"
    if what == "members":
        return ",".join(sorted(m["name"] for m in p.members()))
    if what == "broadcast":
        p.broadcast(1100, call["args"][len("broadcast "):])
        return "sent"
    if what == "crash":
        os._exit(3)
    if what == "crash-forever":
        open(os.path.join(out, "CRASH"), "w").close()
        os._exit(3)
    if what == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.write('{"jsonrpc":"1.0","id":1,"method":"x"}\n')
        sys.stdout.write('{"jsonrpc":"2.0","method":"no-such-notification"}\n')
        sys.stdout.write('{"jsonrpc":"2.0","id":"q","method":"no.such.method"}\n')
        sys.stdout.write("x" * (2 << 20) + "\n")
        sys.stdout.flush()
        return "sent garbage"
    if what == "flood":
        for i in range(1000):
            p.send({"jsonrpc": "2.0", "id": "f%d" % i, "method": "members", "params": {}})
        throttled = 0
        answered = 0
        while answered < 1000:
            msg = p._read()
            if msg is None:
                break
            if str(msg.get("id", "")).startswith("f") and "method" not in msg:
                answered += 1
                if msg.get("error", {}).get("code") == -32003:
                    throttled += 1
            else:
                p._later.append(msg)
        return "throttled %d" % throttled
    if what == "deaf":
        p._reply(call_id[0], {"text": "going deaf", "status": 0})
        time.sleep(3600)
    try:
        return p.call(what, {})
    except NodeError as e:
        return ("node error %d: %s" % (e.code, e.message), 1)


# The id of the command being answered, for "deaf" (which answers early).
call_id = [None]
_dispatch = p._dispatch


def dispatch(msg):
    if msg.get("method") == "command":
        call_id[0] = msg.get("id")
    return _dispatch(msg)


p._dispatch = dispatch


def apply(key, value):
    with open(os.path.join(out, key.replace("/", "_")), "w") as f:
        f.write(value)
    return value


def remove(key):
    try:
        os.remove(os.path.join(out, key.replace("/", "_")))
    except FileNotFoundError:
        pass


p.reconciler(apply, remove)


@p.on_shutdown
def shutdown(grace_ms):
    note("shutdown", {"grace_ms": grace_ms})
    if os.environ.get("PROBE_IGNORE_SHUTDOWN"):
        time.sleep(3600)


p.run()
