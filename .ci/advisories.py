#!/usr/bin/env python3
"""Checks Cargo.lock files against a local copy of the RustSec advisory database.

What `cargo audit --db DB --no-fetch` does for our purposes, without
installing it: `cargo install cargo-audit --locked` (0.22.2) took 6 CPU
minutes (18 minutes of wall time on this shared two-core machine), this
takes under a second. Both read the same .cargo/audit.toml and agree on
this snapshot (cargo-audit: exit 0 on our lock files, exit 1 with rsa back).
Every package in each lock file is compared with
every advisory for a crate of that name, and an advisory applies when the
locked version is neither patched nor unaffected. Vulnerabilities fail the
check; informational advisories (unmaintained, unsound, notice) are
reported as warnings, as cargo-audit does. Advisories listed under
`[advisories] ignore` in .cargo/audit.toml (cargo-audit's own configuration
file, where each entry says why it stays) are reported as ignored. A listed
advisory that no longer applies fails the check, so the list cannot go
stale.

Usage: advisories.py DB LOCKFILE...
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_version(text):
    """(major, minor, patch, pre) from a semver string; pre is "" for a release."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor or 0), int(patch or 0), pre or ""), (minor is None, patch is None)


def key(version):
    """A sort key in which a pre-release comes before its release."""
    major, minor, patch, pre = version
    return (major, minor, patch, 0 if pre else 1, pre)


def matches_comparator(version, comparator):
    """Cargo's semver comparators: =, >, >=, <, <=, ~, ^ (also bare) and wildcards."""
    comparator = comparator.strip()
    if comparator in ("*", ""):
        return True
    op_match = re.match(r"(>=|<=|>|<|=|~|\^)?\s*(.*)", comparator)
    op, rest = op_match.group(1) or "^", op_match.group(2)
    rest = rest.replace(".*", "").replace(".x", "")
    bound, (no_minor, no_patch) = parse_version(rest)
    v, b = key(version), key(bound)
    if op == "=":
        if no_minor:
            return version[0] == bound[0]
        if no_patch:
            return version[:2] == bound[:2]
        return v == b
    if op == ">":
        return v > b
    if op == ">=":
        return v >= b
    if op == "<":
        return v < b
    if op == "<=":
        return v <= b
    if op == "~":
        upper = (bound[0] + 1, 0, 0, "") if no_minor else (bound[0], bound[1] + 1, 0, "")
        return b <= v < key(upper)
    # Caret: the leftmost non-zero part may not change.
    if bound[0] > 0 or no_minor:
        upper = (bound[0] + 1, 0, 0, "")
    elif bound[1] > 0 or no_patch:
        upper = (0, bound[1] + 1, 0, "")
    else:
        upper = (0, 0, bound[2] + 1, "")
    return b <= v < key(upper)


def matches(version, requirement):
    return all(matches_comparator(version, c) for c in requirement.split(","))


def load_advisories(db):
    by_crate = {}
    for path in sorted((db / "crates").glob("*/RUSTSEC-*.md")):
        text = path.read_text()
        front = re.search(r"```toml\n(.*?)\n```", text, re.S)
        if not front:
            continue
        data = tomllib.loads(front.group(1))
        advisory = data["advisory"]
        if advisory.get("withdrawn"):
            continue
        title = next((line[2:].strip() for line in text[front.end():].splitlines() if line.startswith("# ")), "")
        by_crate.setdefault(advisory["package"], []).append((advisory, data.get("versions", {}), title))
    return by_crate


def applies(version, versions):
    safe = versions.get("patched", []) + versions.get("unaffected", [])
    return not any(matches(version, requirement) for requirement in safe)


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 64
    db = Path(argv[1])
    if not (db / "crates").is_dir():
        print(f"advisories: no advisory database at {db}")
        return 2
    config_path = ROOT / ".cargo" / "audit.toml"
    ignored = set()
    if config_path.exists():
        ignored = set(tomllib.loads(config_path.read_text()).get("advisories", {}).get("ignore", []))
    advisories = load_advisories(db)
    commit = re.search(r"commit\s+([0-9a-f]{7,40})", (db / "SNAPSHOT.md").read_text()) if (db / "SNAPSHOT.md").exists() else None
    print(f"advisories: {sum(map(len, advisories.values()))} advisories in {db}" + (f" (advisory-db {commit.group(1)[:12]})" if commit else ""))
    failures, seen_ignored = 0, set()
    for lock in argv[2:]:
        packages = tomllib.loads(Path(lock).read_text()).get("package", [])
        print(f"advisories: {lock}: {len(packages)} packages")
        for package in packages:
            if not package.get("source", "").startswith("registry+"):
                continue  # path and git dependencies (our vendored crates) have no advisories by version
            version, _ = parse_version(package["version"])
            for advisory, versions, title in advisories.get(package["name"], []):
                if not applies(version, versions):
                    continue
                ident = advisory["id"]
                kind = advisory.get("informational") or "vulnerability"
                line = f"{ident} {package['name']} {package['version']} ({kind}): {title}"
                if ident in ignored:
                    seen_ignored.add(ident)
                    print(f"  ignored (see .cargo/audit.toml): {line}")
                elif kind == "vulnerability":
                    failures += 1
                    print(f"  FAIL: {line}")
                else:
                    print(f"  warning: {line}")
    for stale in sorted(ignored - seen_ignored):
        failures += 1
        print(f"  FAIL: {stale} is ignored in .cargo/audit.toml but no longer applies: remove it")
    print(f"advisories: {'failed' if failures else 'passed'} ({failures} failure(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
