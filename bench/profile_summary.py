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


def _label(frame: str) -> bool:
    return frame.startswith(("process ", "thread "))


def summarise_pyspy(path: Path) -> dict[str, object]:
    """py-spy raw output: `[process …;][thread …;]frame;frame;… count` per line.

    Without --idle, py-spy still counts a thread blocked in a C call that released
    the GIL (a socket send, SQLite's fsync, a queue get) as active: those show up
    under the function that made the call.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    per_thread_self: dict[str, Counter[str]] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        parts = stack.split(";")
        labels = [f for f in parts if _label(f)]
        frames = [f for f in parts if not _label(f)]
        if not frames:
            continue
        thread = labels[-1] if labels else "?"
        if len(thread) > 70:
            thread = thread[:67] + "..."
        total += n
        threads[thread] += n
        leaf = _short(frames[-1])
        self_time[leaf] += n
        per_thread_self.setdefault(thread, Counter())[leaf] += n
        for f in {_short(f) for f in frames}:
            inclusive[f] += n
    if not total:
        return {"text": f"{path}: no samples\n", "top": []}
    out = io.StringIO()
    out.write(f"py-spy: {total} samples ({path})\n\nby thread:\n")
    for t, n in threads.most_common(8):
        out.write(f"  {n / total:6.1%}  {t}\n")
    out.write("\nself time, all threads (leaf frame; blocking C calls count):\n")
    top = []
    for f, n in self_time.most_common(TOP):
        out.write(f"  {n / total:6.1%}  {f}\n")
        top.append({"function": f, "self": round(n / total, 4)})
    for t, _ in threads.most_common(2):
        out.write(f"\nself time in {t}:\n")
        for f, n in per_thread_self[t].most_common(12):
            out.write(f"  {n / total:6.1%}  {f}\n")
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
    top = [
        {
            "function": f"{func[2]} ({func[0]}:{func[1]})",
            "self": round(v[2] / total, 4),
            "calls": v[1],
        }
        for func, v in rows
    ]
    return {"text": out.getvalue(), "top": top}


def summarise(path: Path, kind: str) -> dict[str, object]:
    return summarise_cprofile(path) if kind == "cprofile" else summarise_pyspy(path)


if __name__ == "__main__":
    f = Path(sys.argv[1])
    k = sys.argv[2] if len(sys.argv) > 2 else ("cprofile" if f.suffix == ".pstats" else "py-spy")
    print(summarise(f, k)["text"])
