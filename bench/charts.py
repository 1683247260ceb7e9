#!/usr/bin/env python3
"""SVG charts from the JSON that bench.py writes, drawn with gnuplot (Debian's gnuplot-nox,
which bench/run installs like the peers: one package, no Python dependencies to pin).

    charts.py RESULTS.json OUTDIR

Draws each chart whose part is in the results, and leaves the others in OUTDIR as they are:
  sizes-mbps.svg, sizes-files.svg  throughput against file size (the `sizes` part)
  clients.svg                      the concurrency sweep (the `clients` part)
  cpu.svg                          CPU seconds per GiB, client + server (`sizes`, largest size)
  far.svg                          through the delay relay (the `far` part)
  many.svg                         files/s of the small-file trees (the `many` part)
  many-cpu.svg                     CPU ms per file, client + server (the `many` part)
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

GiB = 1 << 30
SIZE_TOOLS = ("ours (ftpd+ftp-cli)", "ours --digest blake3", "sftp", "scp", "rsync")
LABEL = {"ours (ftpd+ftp-cli)": "ours (TLS, MD5)", "ours --digest blake3": "ours (TLS, BLAKE3)",
         "rsync": "rsync daemon"}


def size_label(n):
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def median(runs, attr):
    good = [r[attr] for r in runs if r["ok"] and r.get(attr) is not None]
    return statistics.median(good) if good else None


def q(s):
    """A gnuplot string literal."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Chart:
    def __init__(self, raw, outdir, name):
        self.raw, self.outdir, self.name = raw, outdir, name
        self.lines = []
        self.ndata = 0
        m, p = raw["machine"], raw["params"]
        self.footer = (f"{m.get('nproc')} vCPU {m.get('cpu')}, {m.get('kernel')}, "
                       f"{p.get('git')}, {m.get('date')}; {p.get('runs')} run(s), medians")

    def data(self, rows):
        """Writes rows (lists, None as missing) to a data file; returns its gnuplot name."""
        self.ndata += 1
        path = self.outdir / f".{self.name}.{self.ndata}.dat"
        path.write_text("".join(" ".join("?" if v is None else (q(v) if isinstance(v, str)
                                                                  else repr(v)) for v in r) + "\n"
                                for r in rows))
        return q(path)

    def draw(self, width=1000, height=520):
        out = self.outdir / f"{self.name}.svg"
        script = [
            f"set terminal svg size {width},{height} noenhanced font 'sans,12' background rgb 'white'",
            f"set output {q(out)}",
            "set datafile missing '?'",
            "set grid",
            "set key outside right top",
            *self.lines,
        ]
        subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)
        for f in self.outdir.glob(f".{self.name}.*.dat"):
            f.unlink()
        print(f"charts: wrote {out}", file=sys.stderr)


def sizes_charts(raw, outdir):
    sizes = raw["params"].get("sizes") or []
    runs = raw["runs"]
    if not sizes:
        return
    xtics = "set xtics (" + ", ".join(f"{q(size_label(s))} {s}" for s, _ in sizes) + ")"
    counts = ", ".join(f"{c} x {size_label(s)}" for s, c in sizes)
    for attr, what, unit in (("mbps", "throughput", "MB/s (10^6 bytes of file content per second)"),
                             ("fps", "files per second", "files/s")):
        c = Chart(raw, outdir, "sizes-mbps" if attr == "mbps" else "sizes-files")
        c.lines += [
            f"set multiplot layout 1,2 title {q(f'{what} against file size on loopback, put -r and get -r of a directory of: {counts}' + chr(10) + c.footer)}",
            "set logscale x 2", "set logscale y", xtics,
            f"set xrange [{sizes[0][0] / 2}:{sizes[-1][0] * 2}]",
            "set xlabel 'file size (log scale)'", f"set ylabel {q(unit + ', log scale')}",
            "set key inside bottom right" if attr == "mbps" else "set key inside top right",
        ]
        for kind in ("put", "get"):
            tools = [t for t in SIZE_TOOLS
                     if any(t in runs.get(f"size-{kind}-{s}", {}) for s, _ in sizes)]
            rows = [[s, *[median(runs.get(f"size-{kind}-{s}", {}).get(t, []), attr) for t in tools]]
                    for s, _ in sizes]
            f = c.data(rows)
            plots = [f"{f} using 1:{i + 2} with linespoints lw 2 pt {i + 5} title {q(LABEL.get(t, t))}"
                     for i, t in enumerate(tools)]
            c.lines += [f"set title {q(f'{kind} -r')}",
                        "plot " + ", ".join(plots)]
        c.lines.append("unset multiplot")
        c.draw(1300, 560)


def cpu_chart(raw, outdir):
    sizes = raw["params"].get("sizes") or []
    if not sizes:
        return
    runs = raw["runs"]
    size, count = sizes[-1]
    c = Chart(raw, outdir, "cpu")
    files = {}
    for kind in ("put", "get"):
        rows = []
        for t in (*SIZE_TOOLS, "md5sum"):
            rs = runs.get(f"size-{kind}-{size}", {}).get(t, [])
            good = [r for r in rs if r["ok"]]
            if good:
                gib = good[0]["nbytes"] / GiB
                rows.append([LABEL.get(t, t), median(rs, "cli_cpu") / gib,
                             median(rs, "srv_cpu") / gib])
        files[kind] = c.data(rows)
    title = (f"CPU seconds per GiB moved (user+sys), {count} x {size_label(size)} on loopback"
             + chr(10) + c.footer)
    c.lines += [
        f"set multiplot layout 1,2 title {q(title)}",
        "set style data histograms", "set style histogram rowstacked",
        "set style fill solid 0.8 border -1", "set boxwidth 0.8",
        "set ylabel 'CPU s per GiB (client + server)'", "set xlabel 'tool'",
        "set yrange [0:*]", "set key inside top right", "set xtics rotate by -20",
    ]
    for kind in ("put", "get"):
        sub = "put (md5sum: hashing the files once, for scale)" if kind == "put" else "get"
        c.lines += [f"set title {q(sub)}",
                    f"plot {files[kind]} using 2:xtic(1) title 'client', '' using 3 title 'server'"]
    c.lines.append("unset multiplot")
    c.draw(1300, 560)


def clients_chart(raw, outdir):
    counts = raw["params"].get("client_counts") or []
    if not counts:
        return
    runs = raw["runs"]
    tool = "ours (ftpd+ftp-cli)"
    rows = []
    for n in counts:
        rs = runs.get(f"clients-{n}", {}).get(tool, [])
        if not rs:
            continue
        # Failures, RSS and fds from every run (a failed run is still a measurement of
        # them); throughput and latency are medians of the ok runs, else of all runs.
        ok = [r for r in rs if r["ok"]] or rs
        med = lambda a: statistics.median(r[a] for r in ok if r.get(a) is not None) \
            if any(r.get(a) is not None for r in ok) else None
        rows.append([n, med("mbps"), med("p50"), med("p99"), max(r["srv_rss"] for r in rs) / 1024,
                     max(r.get("peak_fds", 0) for r in rs), sum(r["failures"] for r in rs)])
    if not rows:
        return
    c = Chart(raw, outdir, "clients")
    f = c.data(rows)
    xt = "set xtics (" + ", ".join(f"'{n}' {n}" for n in counts) + ")"
    c.lines += [
        f"set multiplot layout 2,2 title {q('concurrent clients on loopback, each ftp-cli process puts its own 1 MiB file and gets it back (TLS, MD5)' + chr(10) + c.footer)}",
        "set logscale x", xt, f"set xrange [0.7:{counts[-1] * 1.5}]",
        "set xlabel 'concurrent clients (log scale)'", "set key inside top left",
        "set title 'total throughput (all bytes put and got / wall time of the batch)'",
        "set ylabel 'MB/s'", "set yrange [0:*]",
        f"plot {f} using 1:2 with linespoints lw 2 pt 7 title 'MB/s'",
        "set title 'time per client process (connect, TLS, login, put, get), successful ones'",
        "set ylabel 'seconds'", "set logscale y", "set yrange [*:*]",
        f"plot {f} using 1:3 with linespoints lw 2 pt 7 title 'p50', '' using 1:4 with linespoints lw 2 pt 9 title 'p99'",
        "unset logscale y",
        "set title 'ftpd peak memory and open file descriptors'",
        "set ylabel 'peak RSS, MiB (VmHWM)'", "set y2label 'peak open fds'", "set y2tics", "set ytics nomirror",
        "set yrange [0:*]", "set y2range [0:*]",
        f"plot {f} using 1:5 with linespoints lw 2 pt 7 title 'RSS MiB', '' using 1:6 axes x1y2 with linespoints lw 2 pt 9 title 'fds (right axis)'",
        "unset y2tics", "unset y2label", "set ytics mirror",
        "set title 'clients that failed or got a file back that differs'",
        "set ylabel 'clients'", "set yrange [0:*]",
        f"plot {f} using 1:7 with linespoints lw 2 pt 7 lc rgb 'red' title 'failed'",
        "unset multiplot",
    ]
    c.draw(1300, 900)


def far_chart(raw, outdir):
    far = raw["params"].get("far")
    if not far:
        return
    runs = raw["runs"]
    tools = ("ours (ftpd+ftp-cli)", "sftp", "rsync")
    c = Chart(raw, outdir, "far")
    rt = 2 * far["delay_ms_each_way"]
    c.lines += [
        f"set multiplot layout 1,2 title {q(f'through a delay relay on loopback, {rt} ms round trip (bench/delay_relay.py)' + chr(10) + c.footer)}",
        "set style data histograms", "set style histogram clustered gap 1",
        "set style fill solid 0.8 border -1", "set yrange [0:*]",
        "set key outside bottom center horizontal", "set xlabel 'direction'",
    ]
    for what, attr, unit, title in (
            ("tree", "fps", "files/s", f"{far['nfiles']} x {size_label(far['fsize'])}, put -r / get -r"),
            ("big", "mbps", "MB/s", f"one {size_label(far['big'])} file")):
        rows = [[kind, *[median(runs.get(f"far-{kind}-{what}", {}).get(t, []), attr) for t in tools]]
                for kind in ("put", "get")]
        f = c.data(rows)
        plots = [f"{f} using {i + 2}{':xtic(1)' if i == 0 else ''} title {q(LABEL.get(t, t))}"
                 for i, t in enumerate(tools)]
        c.lines += [f"set title {q(title)}", f"set ylabel {q(unit)}", "plot " + ", ".join(plots)]
    c.lines.append("unset multiplot")
    c.draw(1200, 520)


MANY_TOOLS = ("ours (ftpd+ftp-cli)", "ours --insecure-plaintext", "ours --no-fsync", "rsync", "sftp")
MANY_LABEL = {"ours (ftpd+ftp-cli)": "ours (TLS)", "ours --insecure-plaintext": "ours (plaintext)",
              "ours --no-fsync": "ours (TLS, ftpd --no-fsync)", "rsync": "rsync daemon",
              "sftp": "sftp (OpenSSH)"}
MANY_SHORT = {"ours (ftpd+ftp-cli)": "ours TLS", "ours --insecure-plaintext": "ours plain",
              "ours --no-fsync": "ours no-fsync", "rsync": "rsync", "sftp": "sftp"}


def many_plan(raw):
    """(cases sorted by file size then count, tools that ran, {(key, tool)} capped)."""
    m = raw["params"].get("many")
    if not m:
        return None
    runs = raw["runs"]
    cases = sorted(((c, s) for c, s, _ in m["cases"]), key=lambda x: (x[1], x[0]))
    keys = [f"many-{k}-{c}-{s}" for k in ("put", "get") for c, s in cases]
    tools = [t for t in MANY_TOOLS if any(t in runs.get(k, {}) for k in keys)]
    capped = {(c["key"], c["tool"]) for c in m.get("caps", [])}
    return cases, tools, capped


def many_chart(raw, outdir):
    plan = many_plan(raw)
    if not plan:
        return
    cases, tools, capped = plan
    runs = raw["runs"]
    c = Chart(raw, outdir, "many")
    title = ("many small files on loopback: put -r and get -r of a tree, files per second"
             " (median of the ok runs; higher is better)")
    if capped:
        title += chr(10) + ("* a peer moved only the first files of that tree (a time cap per run; "
                            "the report says which)")
    c.lines += [
        f"set multiplot layout 1,2 title {q(title + chr(10) + c.footer)}",
        "set style data histograms", "set style histogram clustered gap 1",
        "set style fill solid 0.8 border -1", "set yrange [0:*]",
        "set key outside bottom center horizontal",
        "set xlabel 'tree (number of files x file size)'", "set ylabel 'files/s'",
    ]
    for kind in ("put", "get"):
        rows = []
        for n, s in cases:
            key = f"many-{kind}-{n}-{s}"
            star = "*" if any((key, t) in capped for t in tools) else ""
            rows.append([f"{n:,} x {size_label(s)}{star}",
                         *[median(runs.get(key, {}).get(t, []), "fps") for t in tools]])
        f = c.data(rows)
        plots = [f"{f} using {i + 2}{':xtic(1)' if i == 0 else ''} title {q(MANY_LABEL.get(t, t))}"
                 for i, t in enumerate(tools)]
        c.lines += [f"set title {q(kind + ' -r')}", "plot " + ", ".join(plots)]
    c.lines.append("unset multiplot")
    c.draw(1300, 600)


def many_cpu_chart(raw, outdir):
    plan = many_plan(raw)
    if not plan:
        return
    cases, tools, capped = plan
    runs = raw["runs"]
    c = Chart(raw, outdir, "many-cpu")
    title = ("many small files on loopback: CPU milliseconds per file (user+sys), client and "
             "server side, per tool, grouped by tree (files x size); lower is better" + chr(10) +
             "client: ftp-cli / rsync client / sftp+ssh; server: ftpd / rsync daemon / "
             "sshd+sftp-server")
    c.lines += [
        f"set multiplot layout 2,1 title {q(title + chr(10) + c.footer)}",
        "set style data histograms", "set style histogram rowstacked",
        "set style fill solid 0.8 border -1", "set boxwidth 0.8", "set yrange [0:*]",
        "set key inside top left", "set ylabel 'CPU ms per file (client + server)'",
        "set xtics rotate by -30",
    ]
    for kind in ("put", "get"):
        parts = []
        top = 0.0
        for j, (n, s) in enumerate(cases):
            key = f"many-{kind}-{n}-{s}"
            rows = []
            for t in tools:
                rs = runs.get(key, {}).get(t, [])
                good = [r for r in rs if r["ok"]]
                if not good:
                    continue
                files = good[0]["nfiles"]
                label = MANY_SHORT.get(t, t) + ("*" if (key, t) in capped else "")
                rows.append([label, median(rs, "cli_cpu") / files * 1000,
                             median(rs, "srv_cpu") / files * 1000])
                top = max(top, rows[-1][1] + rows[-1][2])
            if not rows:
                continue
            f = c.data(rows)
            titles = ("title 'client'", "title 'server'") if j == 0 else ("notitle", "notitle")
            parts.append(f"newhistogram {q(f'{n:,} x {size_label(s)}')} lt 1, "
                         f"{f} using 2:xtic(1) {titles[0]} lc rgb '#4477aa', "
                         f"'' using 3 {titles[1]} lc rgb '#ee6677'")
        if not parts:
            continue
        # gnuplot's autoscale misses the tops of stacks after the first newhistogram.
        c.lines += [f"set title {q(kind + ' -r' + ('  (* capped: a prefix of the tree)' if capped else ''))}",
                    f"set yrange [0:{top * 1.12 if top else 1}]", "plot " + ", ".join(parts)]
    c.lines.append("unset multiplot")
    c.draw(1300, 900)


def main():
    raw = json.loads(Path(sys.argv[1]).read_text())
    outdir = Path(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    for chart in (sizes_charts, cpu_chart, clients_chart, far_chart, many_chart, many_cpu_chart):
        chart(raw, outdir)


if __name__ == "__main__":
    main()
