#!/usr/bin/env python3
"""Count test cases over JUnit XML reports (ctest --output-junit, pytest --junitxml).

For ctest reports the cases of each cmocka binary are counted, read from its
output (run ctest with --test-output-size-passed/-failed large enough).

usage: junit_summary.py [--extra-failed N] REPORT...
A report that is missing or unreadable counts as one failed case (its suite
did not run to the end).  Prints one line per report on stderr, then
exactly "N passed, N failed[, N skipped]" on stdout.
"""
import re
import sys
import xml.etree.ElementTree as ET


def cmocka_cases(out, case_failed):
    """(passed, failed, skipped) of the cmocka groups in a ctest test's output, or None.

    A ctest "test" is one cmocka binary; its cases are what we count.  A
    binary that died mid-group counts its unfinished cases as failed; one
    that failed after all its cases passed (a leak report) counts one more.
    """
    groups = [int(n) for n in re.findall(r"^\[==========\] Running (\d+) test", out, re.M)]
    if not groups:
        return None
    total = lambda tag: sum(int(n) for n in re.findall(  # noqa: E731
        r"^\[  %s  ?\] (\d+) test\(s\)" % tag, out, re.M))
    finished = re.findall(r"^\[==========\] \d+ test\(s\) run", out, re.M)
    if len(finished) < len(groups):
        ok = len(re.findall(r"^\[       OK \]", out, re.M))
        return ok, sum(groups) - ok, 0
    passed, failed, skipped = total("PASSED"), total("FAILED"), total("SKIPPED")
    if case_failed and not failed:
        failed = 1
    return passed, failed, skipped


def count(path):
    """(passed, failed, skipped) of one report; a test is failed if any phase failed."""
    passed = failed = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        bad = bool(tags & {"failure", "error"}) or case.get("status") == "fail"
        cm = cmocka_cases(case.findtext("system-out") or "", bad)
        if cm:
            passed, failed, skipped = passed + cm[0], failed + cm[1], skipped + cm[2]
        elif bad:
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
