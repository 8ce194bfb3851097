#!/usr/bin/env python3
"""files: a micelio plugin that manages files from desired state.

    /desire EU files/motd "hello"

makes every node tagged EU write "hello" to <root>/motd; /undesire removes
the file. Keys are `files/<relative path>`; the path may have directories
(`files/app/config.ini`) but no `..`, and the write is atomic (a temporary
file, then a rename). `/files` lists what this node manages.

Run by the node from its config:

    [[plugins]]
    name = "files"
    command = "python3"
    args = ["/path/to/examples/plugins/python/files.py", "--root", "/srv/files"]

Standard library only; the protocol helper is micelio_plugin.py, next to
this file.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from micelio_plugin import Plugin  # noqa: E402

PREFIX = "files/"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--root", required=True, help="the directory the files live in")
args = parser.parse_args()
root = os.path.abspath(args.root)
os.makedirs(root, exist_ok=True)

plugin = Plugin(
    commands=[("files", "/files", "the files this node manages (files plugin)")],
    desired_prefixes=[PREFIX],
)


def path_of(key):
    """The file of a desired key, refusing anything outside the root."""
    rel = key[len(PREFIX):]
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError("not a relative path under the root: %r" % rel)
    return os.path.join(root, *parts)


def apply(key, value):
    path = path_of(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".micelio-tmp"
    with open(tmp, "w") as f:
        f.write(value)
    os.replace(tmp, path)
    return value


def remove(key):
    try:
        path = path_of(key)
    except ValueError:
        return  # never applied: nothing to remove
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


plugin.reconciler(apply, remove)


@plugin.command("files")
def files(call):
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".micelio-tmp"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    if not found:
        return "no files under %s" % root
    return "\n".join(sorted(found))


plugin.run()
