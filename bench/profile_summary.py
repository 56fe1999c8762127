"""Top hot spots from a cProfile .pstats file or a py-spy `--format raw` (collapsed stacks) file.

    python bench/profile_summary.py FILE [cprofile|py-spy]
"""

from __future__ import annotations

import io
import pstats
import sys
from collections import Counter
from pathlib import Path

TOP = 25


def _short(frame: str) -> str:
    # py-spy frames: "function (path/to/file.py:123)"; keep the last two path parts
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


def summarise_pyspy(path: Path) -> dict[str, object]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        self_time[_short(frames[-1])] += n
        for f in set(frames[1:]):
            inclusive[_short(f)] += n
    if not total:
        return {"text": f"{path}: no samples\n", "top": []}
    out = io.StringIO()
    out.write(f"py-spy: {total} samples ({path})\n\nby thread:\n")
    for t, n in threads.most_common(8):
        out.write(f"  {n / total:6.1%}  {t}\n")
    out.write("\nself time (where the CPU was):\n")
    top = []
    for f, n in self_time.most_common(TOP):
        out.write(f"  {n / total:6.1%}  {f}\n")
        top.append({"function": f, "self": round(n / total, 4)})
    out.write("\ninclusive (on the stack):\n")
    for f, n in inclusive.most_common(TOP + 15):
        out.write(f"  {n / total:6.1%}  {f}\n")
    return {"text": out.getvalue(), "top": top}


def summarise_cprofile(path: Path) -> dict[str, object]:
    out = io.StringIO()
    st = pstats.Stats(str(path), stream=out)
    st.strip_dirs()
    out.write(f"cProfile (main thread only; the spool writer thread is not in it): {path}\n")
    st.sort_stats("tottime").print_stats(TOP)
    st.sort_stats("cumulative").print_stats(TOP)
    total = st.total_tt or 1.0  # type: ignore[attr-defined]
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]  # type: ignore[attr-defined]
    top = [{"function": f"{func[2]} ({func[0]}:{func[1]})", "self": round(v[2] / total, 4),
            "calls": v[1]} for func, v in rows]
    return {"text": out.getvalue(), "top": top}


def summarise(path: Path, kind: str) -> dict[str, object]:
    return summarise_cprofile(path) if kind == "cprofile" else summarise_pyspy(path)


if __name__ == "__main__":
    f = Path(sys.argv[1])
    k = sys.argv[2] if len(sys.argv) > 2 else ("cprofile" if f.suffix == ".pstats" else "py-spy")
    print(summarise(f, k)["text"])
