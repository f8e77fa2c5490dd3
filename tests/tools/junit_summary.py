#!/usr/bin/env python3
"""Count test cases over JUnit XML reports (ctest --output-junit, pytest --junitxml).

usage: junit_summary.py [--extra-failed N] REPORT...
A report that is missing or unreadable counts as one failed case (its suite
did not run to the end).  Prints one line per report on stderr, then
exactly "N passed, N failed[, N skipped]" on stdout.
"""
import sys
import xml.etree.ElementTree as ET


def count(path):
    """(passed, failed, skipped) of one report; a test is failed if any phase failed."""
    passed = failed = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"} or case.get("status") == "fail":
            failed += 1
        elif "skipped" in tags or case.get("status") in ("notrun", "disabled"):
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main(argv):
    extra = 0
    if argv[:1] == ["--extra-failed"]:
        extra, argv = int(argv[1]), argv[2:]
    totals = [0, extra, 0]
    for path in argv:
        try:
            p, f, s = count(path)
        except (OSError, ET.ParseError) as e:
            p, f, s = 0, 1, 0
            print(f"{path}: no usable report ({e}): counted as 1 failed", file=sys.stderr)
        else:
            print(f"{path}: {p} passed, {f} failed, {s} skipped", file=sys.stderr)
        totals = [t + n for t, n in zip(totals, (p, f, s))]
    line = f"{totals[0]} passed, {totals[1]} failed"
    if totals[2]:
        line += f", {totals[2]} skipped"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
