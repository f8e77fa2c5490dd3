#!/usr/bin/env python3
"""gen-data.py - reproducible (adapted for mgmtfs scripts/bench) benchmark inputs (same bytes on every machine).

  gen-data.py big  FILE [MiB=1024]      mixed file: 1 MiB blocks alternating
                                         random bytes / English-like text
  gen-data.py small DIR [N=1000] [KiB=10]  N files, each half random, half text

Random bytes: Python's Mersenne Twister seeded with fixed numbers
(random.Random(seed).randbytes), so the output is identical everywhere for
the same Python 3.9+.  Text: words drawn from a fixed 2,000-word vocabulary
with a Zipf-like weighting, lines of 60-100 chars; gzip -6 gets ~2.6:1 on it,
so the whole mixed file lands near 0.69 of its size at gzip -6.
"""
import os
import random
import sys

MiB = 1 << 20


def vocabulary():
    r = random.Random(12345)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
          2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
    common = ("the of and to in is that it was for on are as with his they "
              "at be this from have or by one had not but what all were when "
              "we there can an your which their said if do will each about "
              "how up out them then she many some so these would other into "
              "has more her two like him see time could no make than first "
              "been its who now people my made over did down only way find "
              "use may water long little very after words called just where "
              "most know get through back much before go good new write our "
              "used me man too any day same right look think also around "
              "another came come work three word must because does part").split()
    words = list(dict.fromkeys(common))
    while len(words) < 2000:
        n = max(2, min(14, int(r.gauss(6.5, 2.5))))
        w = "".join(r.choices(letters, lw, k=n))
        if w not in words:
            words.append(w)
    weights = [1.0 / (i + 1) ** 1.05 for i in range(len(words))]
    return words, weights


WORDS, WEIGHTS = vocabulary()


def make_lines(r, count):
    out = []
    for _ in range(count):
        ws = r.choices(WORDS, WEIGHTS, k=r.randint(10, 16))
        ws[0] = ws[0].capitalize()
        out.append((" ".join(ws) + (".\n" if r.random() < 0.7 else ",\n"))
                   .encode())
    return out


# 200,000 distinct lines (~17 MiB); blocks are random draws of lines, so no
# two blocks repeat while generation stays fast (1 GiB in about half a minute)
LINES = make_lines(random.Random(5), 200000)


def text_block(r, size):
    out, n = [], 0
    while n < size:
        for line in r.choices(LINES, k=256):
            out.append(line)
            n += len(line)
    return b"".join(out)[:size]


def big(path, mib=1024):
    rnd = random.Random(1)
    txt = random.Random(2)
    with open(path + ".tmp", "wb") as f:
        for i in range(mib):
            f.write(rnd.randbytes(MiB) if i % 2 == 0 else text_block(txt, MiB))
    os.replace(path + ".tmp", path)


def small(d, n=1000, kib=10):
    # build in DIR.tmp, rename when complete: a present DIR is always whole
    final, d = d, d.rstrip("/") + ".tmp"
    if os.path.isdir(d):
        import shutil
        shutil.rmtree(d)
    os.makedirs(d)
    half = kib * 1024 // 2
    rnd = random.Random(3)
    txt = random.Random(4)
    for i in range(n):
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(rnd.randbytes(half))
            f.write(text_block(txt, kib * 1024 - half))
    os.replace(d, final)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("big", "small"):
        sys.exit(__doc__)
    if sys.argv[1] == "big":
        big(sys.argv[2], *map(int, sys.argv[3:4]))
    else:
        small(sys.argv[2], *map(int, sys.argv[3:5]))
