"""Content manifests of a directory tree, with gitignore-style rules: both ends of the workdir sync.

The launcher imports this module; ``infra/sync.py`` also sends its source verbatim to the host
as ``python3 -c`` so the remote manifest is computed there, by the same code, from the files
themselves. Hence: standard library only, Python 3.7+, no imports from this project.

    python3 -c "$(cat infra/manifest.py)" scan /srv/work '["runs/", "*.pyc"]'   # prints the JSON manifest
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import sys
from typing import Dict, List, Optional, Pattern, Tuple

# what is never mirrored, whatever the project's ignore files say
ALWAYS_IGNORED = [".git/", "__pycache__/", "*.pyc", "runs/"]
# files that usually hold secrets: left out of the sync (and reported) unless .mnist-launch-ignore
# re-includes them by name with a "!pattern" line. They come after .gitignore, so a "!" there does
# not bring a secret back; only the project's own .mnist-launch-ignore can.
SECRET_PATTERNS = [
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.ppk", "*.kdbx",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",  # OpenSSH private keys (and the .pub beside them)
    ".aws/", ".ssh/", ".gnupg/", ".docker/", ".kube/",
    ".netrc", ".git-credentials", ".pypirc", ".npmrc", ".pgpass",
]

Entry = Dict[str, object]  # {"type": "file", "sha256", "size", "exec"} | {"type": "link", "target"} | {"type": "dir"}
Rule = Tuple[Pattern[str], bool, bool]  # (regex on the relative path, negated, directories only)


# -- ignore rules ------------------------------------------------------------------------------

def _class_end(pattern: str, i: int) -> int:
    """Index of the ] closing the class opened at ``i`` (a ] first in the class is a member), or -1."""
    j = i + 1
    if pattern[j:j + 1] == "!":
        j += 1
    if pattern[j:j + 1] == "]":
        j += 1
    return pattern.find("]", j)


def _translate(pattern: str) -> str:
    """A gitignore glob -> regex source: * and ? stay within one path component, ** spans them."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and _class_end(pattern, i) != -1:
            end = _class_end(pattern, i)
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_rules(lines: List[str]) -> List[Rule]:
    """gitignore lines -> rules. Supported: globs, **, trailing / (directories only), a / inside or
    in front (anchored at the root), ! (re-include), # comments. Later rules win, as in git."""
    rules = []
    for raw in lines:
        line = raw.rstrip("\n").rstrip(" ")
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        # a slash anywhere but at the end anchors the pattern at the root; otherwise it matches a name at any depth
        anchored = "/" in line
        body = _translate(line.lstrip("/"))
        regex = body if anchored else "(?:.*/)?" + body
        rules.append((re.compile(regex, re.DOTALL), negated, dir_only))
    return rules


def is_ignored(rules: List[Rule], rel: str, is_dir: bool) -> bool:
    ignored = False
    for regex, negated, dir_only in rules:
        if dir_only and not is_dir:
            continue
        if regex.fullmatch(rel):
            ignored = not negated
    return ignored


def read_rule_lines(root: str, secrets: bool = True) -> List[str]:
    """ALWAYS_IGNORED, the root's .gitignore, SECRET_PATTERNS (unless ``secrets`` is False), then the
    root's .mnist-launch-ignore: later lines win, so only that last file can re-include a secret.
    Only the root's files are read: nested ones are not."""
    lines = list(ALWAYS_IGNORED) + _lines_of(os.path.join(root, ".gitignore"))
    if secrets:
        lines += SECRET_PATTERNS
    return lines + _lines_of(os.path.join(root, ".mnist-launch-ignore"))


def _lines_of(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# -- scanning ----------------------------------------------------------------------------------

def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scan(root: str, rules: List[Rule], left_out: "Optional[List[str]]" = None,
         unless: "Optional[List[Rule]]" = None) -> Dict[str, Entry]:
    """Relative path -> entry for everything under ``root`` not ignored. Symlinks are recorded, never
    followed; sockets and fifos are skipped. A missing root is an empty tree. With ``left_out`` and
    ``unless``: the paths ``rules`` ignore that ``unless`` would have kept are appended to
    ``left_out`` (directories with a trailing /): what the secret patterns held back."""
    manifest: Dict[str, Entry] = {}
    if not os.path.lexists(root):
        return manifest
    if not os.path.isdir(root):
        raise NotADirectoryError(root)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for de in it:
                rel = rel_dir + "/" + de.name if rel_dir else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked (a job writing next to the code)
                is_dir = stat.S_ISDIR(st.st_mode)
                if is_ignored(rules, rel, is_dir):
                    if left_out is not None and unless is not None and not is_ignored(unless, rel, is_dir):
                        left_out.append(rel + "/" if is_dir else rel)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    manifest[rel] = {"type": "link", "target": os.readlink(de.path)}
                elif is_dir:
                    manifest[rel] = {"type": "dir"}
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    manifest[rel] = {"type": "file", "sha256": file_sha256(de.path), "size": st.st_size,
                                     "exec": bool(st.st_mode & stat.S_IXUSR)}
    return manifest


# -- deleting (on the host) --------------------------------------------------------------------

def _inside(root: str, rel: str) -> bool:
    """True when ``rel`` names something below ``root`` without passing through a symlink."""
    if os.path.isabs(rel) or ".." in rel.split("/") or not rel:
        return False
    parent = os.path.dirname(os.path.join(root, rel))
    real_root = os.path.realpath(root)
    return os.path.realpath(parent) == os.path.normpath(os.path.join(real_root, os.path.dirname(rel)))


def delete(root: str, paths: List[str]) -> List[str]:
    """Remove files, symlinks and (empty) directories, deepest first; returns the ones removed.
    A directory that still holds ignored content (a __pycache__, outputs) is left in place."""
    removed = []
    for rel in sorted(paths, key=lambda p: (-p.count("/"), p)):
        if not _inside(root, rel):
            raise ValueError("refusing to delete %r: not a path inside %s" % (rel, root))
        full = os.path.join(root, rel)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                os.rmdir(full)
            else:
                os.unlink(full)
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno == errno.ENOTEMPTY:  # ignored files live there: keep them
                continue
            raise
        removed.append(rel)
    return removed


def main(argv: List[str]) -> int:
    op, root = argv[0], os.path.expanduser(argv[1])
    try:
        if op == "scan":
            json.dump(scan(root, compile_rules(json.loads(argv[2]))), sys.stdout)
        elif op == "delete":
            json.dump(delete(root, json.loads(argv[2])), sys.stdout)
        else:
            print("unknown operation %r" % op, file=sys.stderr)
            return 2
    except (OSError, ValueError) as err:
        # one line the launcher can show as is
        print("%s: %s" % (type(err).__name__, err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
