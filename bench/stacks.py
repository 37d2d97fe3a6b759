#!/usr/bin/env python3
"""Where a profile's time goes under one frame: the share of all samples
whose stack holds a frame matching PATTERN (inclusive), split by the frame
it called (or, with --leaf, by the function the sample was in).

    CALL_GRAPH=1 bench/profile.sh recommend
    perf script -i target/bench/recommend.perf > target/bench/recommend.stacks
    bench/stacks.py target/bench/recommend.stacks 'Handler<(M,T1,T2),S>>::call'
    bench/stacks.py target/bench/recommend.stacks in_place_collect --leaf
    bench/stacks.py target/bench/recommend.stacks in_place_collect --comm tokio-rt-worker

Session 10's call-graph figures (README) came from this.
"""
import argparse
import collections
import re


def stacks(path):
    """(thread name, frames leaf first) per sample of `perf script` output."""
    out, frames, comm = [], [], None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                out.append((comm, frames))
            frames = []
        elif line[0] in "\t ":
            parts = line.strip().split(" ", 1)
            sym = parts[1] if len(parts) > 1 else parts[0]
            sym = re.sub(r" \([^()]*\)$", "", sym)
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", sym))
        else:
            if frames:
                out.append((comm, frames))
            frames, comm = [], line.split()[0]
    if frames:
        out.append((comm, frames))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("script", help="output of `perf script`")
    ap.add_argument("pattern", help="part of a frame's name")
    ap.add_argument("--leaf", action="store_true", help="split by the sampled function")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--comm", help="only samples of this thread name (e.g. tokio-rt-worker)")
    a = ap.parse_args()
    samples = [s for s in stacks(a.script) if a.comm is None or s[0] == a.comm]
    split, n = collections.Counter(), 0
    for _, frames in samples:
        at = [i for i, f in enumerate(frames) if a.pattern in f]
        if not at:
            continue
        n += 1
        outer = max(at)
        below = frames[0] if a.leaf else (frames[outer - 1] if outer > 0 else "<self>")
        split[below[:140]] += 1
    total = len(samples) or 1
    print(f"{a.pattern}: {100 * n / total:.1f}% of {total} samples")
    for name, k in split.most_common(a.top):
        print(f"{100 * k / total:5.1f}%  {name}")


main()
