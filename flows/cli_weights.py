"""`realsr weights list | fetch [NAME ...] | verify [NAME ...]`: the model zoo, with checksums.

Where a weight comes from and how it is proven is in storage.weights; this is its command line.
"""

from __future__ import annotations

import sys

DEMO_NEEDS = ("realesrgan-x4plus", "vgg19", "alexnet", "lpips-alex-heads", "niqe")  # what `realsr demo` runs on


def add_parser(sub) -> None:
    w = sub.add_parser("weights", help="the known weights: list them, fetch them (verified), verify what is here")
    ws = w.add_subparsers(dest="weights_command", required=True)
    ws.add_parser("list", help="each weight's role, licence, size, sha256 and where it is")
    f = ws.add_parser("fetch", help="find or fetch weights into the cache, each verified (default: what the demo needs)")
    f.add_argument("names", nargs="*", help="weight names (`all` for every one)")
    v = ws.add_parser("verify", help="check the sha256 of every weights file present (exit 1 if one is wrong or a named one is missing)")
    v.add_argument("names", nargs="*", help="weight names (default: all)")


def _names(given: list[str], default: tuple[str, ...]) -> list[str]:
    from realsr.storage.weights import CATALOG, WeightsError

    names = list(CATALOG) if given == ["all"] else (given or list(default))
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise WeightsError(f"unknown weights {', '.join(unknown)} (known: {', '.join(CATALOG)})")
    return names


def fetch(names: list[str]) -> list[str]:
    """Each weight found or fetched; returns the one-line reasons of those that could not be had."""
    from realsr.storage.weights import WeightsError, require

    missing = []
    for name in names:
        try:
            path = require(name, log=lambda m: print(m, file=sys.stderr))
            print(f"{name}: {path}")
        except WeightsError as e:
            missing.append(str(e))
    return missing


def run(args) -> int:
    from realsr.storage.weights import CATALOG, cache_dir, locate, search_dirs

    if args.weights_command == "list":
        print(f"searched in order: {', '.join(str(d) for d in search_dirs())}, then fetched into {cache_dir()}")
        for name, w in CATALOG.items():
            found = locate(name)
            print(f"\n{name}: {w.role}\n  licence: {w.licence}")
            for s in w.sources:
                size = f"{s.size / 1e6:.1f} MB download" if s.size else "size not published"
                check = {"file": f"sha256 {s.sha256}", "tensors": f"sha256 of the tensors {s.sha256}"}.get(s.check, "no published sha256: never fetched")
                print(f"  - {s.file} ({check}) from {s.describe()}, {size}")
            absent = "not here (yours to provide)" if all(s.check == "unpublished" for s in w.sources) else "not yet (fetched on first use)"
            print(f"  here: {found.path or absent}" + (f"; NOT VERIFIED: {', '.join(map(str, found.bad))}" if found.bad else ""))
            if w.note:
                print(f"  note: {w.note}")
        return 0
    from realsr.flows.exit_codes import outcome

    if args.weights_command == "fetch":
        names = _names(args.names, DEMO_NEEDS)
        missing = fetch(names)
        for line in missing:
            print(f"error: {line}", file=sys.stderr)
        return outcome(len(names) - len(missing), len(missing))
    bad = ok = 0
    for name in _names(args.names, tuple(CATALOG)):
        found = locate(name)
        for path in found.bad:
            print(f"BAD      {name}: {path} (sha256 does not match the release)")
            bad += 1
        if found.path:
            ok += 1
            proof = (
                f"{found.source.check} sha256 {found.source.sha256[:16]}..." if found.source.sha256 else "no published sha256: keys and shapes checked on load"
            )
            print(f"OK       {name}: {found.path} ({proof})")
        elif args.names:
            print(f"MISSING  {name}")
            bad += 1
        else:
            print(f"-        {name}: not here")
    return outcome(ok, bad)
