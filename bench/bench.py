#!/usr/bin/env python3
"""The benchmark driver. Run it through `bench/run`, which installs the peers, builds the
binaries, makes the work directory and cleans everything up; see bench/README.md.

Every workload is run by every tool that can do it, round-robin (run 1 of each tool, then run 2
of each, ...), so that the noise of a shared machine falls on all of them alike and the ratios,
which are all taken within this one run, stay meaningful.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MB = 1e6  # throughput is reported in MB/s = 10^6 bytes per second
CLK = os.sysconf("SC_CLK_TCK")
CIPHER = "aes128-gcm@openssh.com"
TIME = "/usr/bin/time"
# What ftpd logs at start over TLS, followed by the fingerprint clients pin.
PIN_LOG = "clients pin the server key "
# The `far` part: what bench/delay_relay.py holds every byte for, each direction.
FAR_DELAY_MS = 25


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_bytes(n):
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# Processes: every daemon we start gets a pid file in WORK/pids, so that bench/run's EXIT trap
# can stop it by PID even if this driver dies.
# --------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, env, name, argv, cwd=None):
        self.env = env
        self.name = name
        self.log_path = env.work / "logs" / f"{name}.{time.monotonic_ns()}.log"
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.pidfile = env.work / "pids" / f"{name}.{self.pid}"
        self.pidfile.write_text(f"{self.pid}\n")
        env.daemons.append(self)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cpu(self):
        """user+sys seconds of the process itself and of the children it has reaped."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # after the ')' field 0 is state (field 3 of proc(5)); utime=14, stime=15, cutime=16, cstime=17
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime) / CLK, (cutime + cstime) / CLK

    def hwm_kib(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()
        self.pidfile.unlink(missing_ok=True)
        if self in self.env.daemons:
            self.env.daemons.remove(self)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == want and parts[3] == "0A":
            return True
    return False


def wait_until(pred, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


class Timed:
    """One command under /usr/bin/time: wall (our own clock), user, sys, max RSS, exit code."""

    def __init__(self, env, argv, cwd=None, tag="cmd", gate=None):
        self.tfile = env.work / "logs" / f"time.{tag}.{time.monotonic_ns()}"
        self.ofile = env.work / "logs" / f"out.{tag}.{time.monotonic_ns()}"
        self.argv = argv
        self.out = open(self.ofile, "wb")
        self.t0 = time.monotonic()
        timed = [TIME, "-f", "%e %U %S %M", "-o", str(self.tfile), *argv]
        if gate:
            # Wait at the gate (a FIFO: opening it blocks until the driver opens it for
            # writing, the read returns when the driver closes it), then start the clock.
            timed = ["sh", "-c", 'read _ < "$0"; exec "$@"', str(gate), *timed]
        self.proc = subprocess.Popen(
            timed, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
        )

    def wait(self, timeout=3600):
        # Block in waitid (Popen.wait with a timeout polls, up to 50 ms late: half of a
        # 100-file run); a timer enforces the time cap. WNOWAIT leaves the process unreaped
        # until the timer can no longer fire, so that the PIDs it kills are still ours.
        self.timed_out = False
        lock, done = threading.Lock(), []

        def expire():
            with lock:
                if not done:
                    # /usr/bin/time and what it runs (sftp and its ssh, ftp-cli), by PID.
                    self.timed_out = True
                    kill_tree(self.proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            while True:
                try:
                    os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:  # already reaped
                    break
        finally:
            with lock:
                done.append(True)
            timer.cancel()
        self.wall = time.monotonic() - self.t0
        rc = self.proc.wait()
        self.out.close()
        self.rc = rc
        self.user = self.sys = 0.0
        self.rss_kib = 0
        # The process's own elapsed time (10 ms resolution): `wall` is when we got round to
        # waiting for it, which for one of many concurrent clients is later than its exit.
        self.elapsed = self.wall
        try:
            last = self.tfile.read_text().strip().splitlines()[-1].split()
            e, u, s, m = last
            self.elapsed = float(e)
            self.user, self.sys, self.rss_kib = float(u), float(s), int(m)
        except (OSError, ValueError, IndexError):
            pass
        return self

    @property
    def cpu(self):
        return self.user + self.sys

    def output(self, limit=2000):
        try:
            return self.ofile.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def run_timed(env, argv, cwd=None, tag="cmd", timeout=3600):
    return Timed(env, argv, cwd=cwd, tag=tag).wait(timeout)


def descendants(pid):
    """The PIDs of pid's children, their children, ... (from /proc), deepest last."""
    kids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def kill_tree(pid):
    """SIGKILL pid and every process below it, by PID: a run over its time cap."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, stdin=subprocess.DEVNULL)


def rmtree(path):
    if path.exists():
        sh("rm", "-rf", "--one-file-system", str(path))


def fresh_dir(path):
    rmtree(path)
    path.mkdir(parents=True)
    return path


def state_dir(root):
    """Where ftpd keeps the private state of `root` by default: beside it."""
    return root.parent / f".{root.name}.ftpd-state"


def drop_root(root):
    """Remove an upload root and ftpd's state for it (a digest record per file it stored),
    so that the next run's fresh ftpd starts as clean as a peer's empty destination: ftpd
    sweeps stale records at start-up (4 s for 10,000 of them on this machine)."""
    rmtree(root)
    rmtree(state_dir(root))


def fresh_root(root):
    drop_root(root)
    root.mkdir(parents=True)
    return root


def settle():
    """Before a timed run: write back the previous run's dirty pages so that no run pays for
    another's, and give daemons a moment to reap their children."""
    sh("sync")
    time.sleep(0.2)


def warm(*paths):
    """Read every file once so that the timed runs read from the page cache."""
    for p in paths:
        if p.is_dir():
            sh("sh", "-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", str(p))
        else:
            sh("sh", "-c", 'cat "$1" > /dev/null', "sh", str(p))


def same_file(a, b):
    return b.exists() and subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def same_tree(a, b):
    return b.is_dir() and subprocess.run(
        ["diff", "-rq", str(a), str(b)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode == 0


# --------------------------------------------------------------------------------------------
# Environment: binaries, data, peers.
# --------------------------------------------------------------------------------------------


class Env:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.bin = Path(args.bin).resolve()
        self.ftpd = str(self.bin / "ftpd")
        self.cli = str(self.bin / "ftp-cli")
        self.daemons = []
        for d in ("pids", "logs", "src", "peer-root", "ssh", "rsync"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        help_text = subprocess.run([self.ftpd, "--help"], capture_output=True, text=True).stdout
        self.ftpd_extra = []
        if "--max-connections-per-ip" in help_text:
            self.ftpd_extra += ["--max-connections-per-ip", "512"]
        if "--max-connections " in help_text or "--max-connections <" in help_text:
            self.ftpd_extra += ["--max-connections", "1024"]
        # Every benchmark client connects from 127.0.0.1: one address range, many logins at once.
        if "--max-unauthenticated-per-range" in help_text:
            self.ftpd_extra += ["--max-unauthenticated", "1024"]
            self.ftpd_extra += ["--max-unauthenticated-per-range", "512"]
        # Relaxed durability (issue 16's group commits): run that variant only with binaries
        # that have the flag, so that the bench works before and after it lands.
        cli_help = subprocess.run([self.cli, "--help"], capture_output=True, text=True).stdout
        self.ftpd_no_fsync = re.search(r"(^|\s)--no-fsync\b(?!-)", help_text) is not None
        self.cli_no_fsync = re.search(r"(^|\s)--no-fsync\b(?!-)", cli_help) is not None
        self.sshd = None
        self.rsyncd = None

    # ---- ours ----

    def start_ftpd(self, root, plaintext=False, extra=None):
        """ftpd on a free port of 127.0.0.1: TLS 1.3 (its default), or plain TCP with
        `plaintext`. The client learns the key to pin from the daemon's log, as a user would
        from `ftpd --fingerprint`."""
        d = Daemon(self, "ftpd", [self.ftpd, "--root", str(root), "--listen", "127.0.0.1:0",
                                  *(["--insecure-plaintext"] if plaintext else []),
                                  *(self.ftpd_extra if extra is None else extra)])
        d.plaintext = plaintext
        d.fingerprint = None
        addr = []

        def up():
            if d.proc.poll() is not None:
                raise RuntimeError(f"ftpd exited: {d.log_text()[-2000:]}")
            for line in d.log_text().splitlines():
                if PIN_LOG in line:
                    d.fingerprint = line.split(PIN_LOG, 1)[1].split()[0]
                if "listening on " in line:
                    addr.append(line.split("listening on ", 1)[1].split()[0])
                    return True
            return False

        wait_until(up, "ftpd to listen")
        if not plaintext and not d.fingerprint:
            raise RuntimeError(f"ftpd logged no key fingerprint: {d.log_text()[-2000:]}")
        d.addr = addr[0]
        return d

    def cli_argv(self, daemon, commands, extra=(), addr=None):
        """ftp-cli to `daemon` (or to `addr`, a relay in front of it), over TLS pinning its
        key, or in plaintext if it is plaintext."""
        if daemon.plaintext:
            security = ["--insecure-plaintext"]
        else:
            security = ["--fingerprint", daemon.fingerprint]
        return [self.cli, addr or daemon.addr, "-q", *security, *extra, "-c", commands]

    # ---- sshd: a private one on a free port of 127.0.0.1 with its own keys ----

    def start_sshd(self):
        d = self.work / "ssh"
        for key in ("host_ed25519", "client_ed25519"):
            if not (d / key).exists():
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{key}",
                   "-f", str(d / key))
        (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        port = free_port()
        conf = d / "sshd_config"
        conf.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n"
            f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nCompression no\nMaxStartups 100\nMaxSessions 100\n"
            f"Ciphers {CIPHER}\nLogLevel ERROR\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        )
        sh("/usr/sbin/sshd", "-t", "-f", str(conf))
        self.sshd = Daemon(self, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)])
        self.ssh_port = port
        wait_until(lambda: listening(port), "sshd to listen")
        self.ssh_opts = [
            "-F", "/dev/null", "-i", str(d / "client_ed25519"), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "Compression=no", "-c", CIPHER,
        ]
        t = run_timed(self, ["ssh", *self.ssh_opts, "-p", str(port), "root@127.0.0.1", "true"],
                      tag="ssh-check")
        if t.rc != 0:
            raise RuntimeError(f"cannot log in to the private sshd: {t.output()}"
                               f"\n{self.sshd.log_text()[-2000:]}")

    def scp_argv(self, *args, port=None):
        return ["scp", "-q", *self.ssh_opts, "-P", str(port or self.ssh_port), *args]

    def sftp_argv(self, batch_lines, tag, port=None):
        batch = self.work / "logs" / f"sftp.{tag}.{time.monotonic_ns()}"
        batch.write_text("".join(line + "\n" for line in batch_lines))
        return ["sftp", "-q", *self.ssh_opts, "-P", str(port or self.ssh_port), "-b", str(batch),
                "root@127.0.0.1"]

    # ---- rsync daemon on a free port of 127.0.0.1; module `bench` is the work directory ----

    def start_rsyncd(self):
        d = self.work / "rsync"
        port = free_port()
        conf = d / "rsyncd.conf"
        conf.write_text(
            f"pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\nuse chroot = false\n"
            f"max connections = 0\n[bench]\n  path = {self.work}\n  read only = false\n"
            "  uid = root\n  gid = root\n"
        )
        self.rsyncd = Daemon(self, "rsyncd", ["rsync", "--daemon", "--no-detach",
                                              f"--config={conf}", "--address=127.0.0.1",
                                              f"--port={port}"])
        self.rsync_port = port
        wait_until(lambda: listening(port), "rsync daemon to listen")

    def rsync_url(self, rel, port=None):
        return f"rsync://127.0.0.1:{port or self.rsync_port}/bench/{rel}"

    # ---- the delay relay (bench/delay_relay.py) in front of a daemon, for the `far` part ----

    def start_relay(self, target, delay_ms=FAR_DELAY_MS):
        d = Daemon(self, "relay", [sys.executable, str(Path(__file__).with_name("delay_relay.py")),
                                   "--listen", "127.0.0.1:0", "--target", target,
                                   "--delay-ms", str(delay_ms)])
        addr = []

        def up():
            if d.proc.poll() is not None:
                raise RuntimeError(f"delay relay exited: {d.log_text()[-2000:]}")
            for line in d.log_text().splitlines():
                if line.startswith("listening on "):
                    addr.append(line.split()[-1])
                    return True
            return False

        wait_until(up, "the delay relay to listen")
        d.addr = addr[0]
        d.port = int(d.addr.rsplit(":", 1)[1])
        return d

    def stop_all(self):
        for d in list(self.daemons):
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {d.name} {d.pid}: {e}")


def make_random(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


# --------------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------------


class Run:
    """One timed run of one tool on one workload."""

    def __init__(self, ok, wall, nbytes, nfiles, cli_cpu=0.0, srv_cpu=0.0, cli_rss=0,
                 srv_rss=0, failures=0, note=""):
        self.ok, self.wall, self.nbytes, self.nfiles = ok, wall, nbytes, nfiles
        self.cli_cpu, self.srv_cpu = cli_cpu, srv_cpu
        self.cli_rss, self.srv_rss = cli_rss, srv_rss
        self.failures, self.note = failures, note

    @property
    def mbps(self):
        return self.nbytes / self.wall / MB

    @property
    def fps(self):
        return self.nfiles / self.wall

    @property
    def cpu(self):
        return self.cli_cpu + self.srv_cpu

    def as_dict(self):
        d = dict(self.__dict__)
        d.update(mbps=self.mbps, fps=self.fps)
        return d


class Results:
    def __init__(self):
        self.workloads = []  # (key, title, unit) in order
        self.runs = {}  # key -> tool -> [Run]
        self.tools = {}  # key -> [tool] in order

    def workload(self, key, title, unit):
        self.workloads.append((key, title, unit))
        self.runs[key] = {}
        self.tools[key] = []

    def add(self, key, tool, run):
        if tool not in self.runs[key]:
            self.runs[key][tool] = []
            self.tools[key].append(tool)
        self.runs[key][tool].append(run)
        status = "ok" if run.ok else f"FAILED {run.note}"
        if getattr(run, "capped_of", None):
            status += f" (capped: first {run.nfiles} of {run.capped_of} files)"
        log(f"  {key:8} {tool:22} {run.wall:8.2f} s {run.mbps:9.1f} MB/s {run.fps:9.1f} files/s "
            f"cpu {run.cli_cpu:.2f}+{run.srv_cpu:.2f} s  {status}")

    def good(self, key, tool):
        return [r for r in self.runs.get(key, {}).get(tool, []) if r.ok]

    def median(self, key, tool, attr):
        rs = self.good(key, tool)
        return statistics.median(getattr(r, attr) for r in rs) if rs else None

    def peak(self, key, tool, attr):
        rs = self.runs.get(key, {}).get(tool, [])
        return max((getattr(r, attr) for r in rs), default=None)


# --------------------------------------------------------------------------------------------
# The workloads.
# --------------------------------------------------------------------------------------------

OURS = "ours (ftpd+ftp-cli)"
# The same with the optional fast digest (--digest blake3); MD5 (OURS) is the default.
OURS_B3 = "ours --digest blake3"
# Both again without TLS (--insecure-plaintext on both sides), to put a price on TLS: the
# default, and what the targets other than the TLS ones are judged on, is TLS 1.3.
OURS_PT = "ours --insecure-plaintext"
OURS_PT_B3 = "ours plaintext blake3"
# Relaxed durability, when this ftpd has `--no-fsync`: uploads are not fsync'd before they
# are stored (and downloads not either, if ftp-cli has a `--no-fsync` too).
OURS_NOFSYNC = "ours --no-fsync"
OUR_TOOLS = (OURS, OURS_B3, OURS_PT, OURS_PT_B3, OURS_NOFSYNC)
# (digest, over TLS, in plaintext): the pairs the TLS targets compare.
TLS_PAIRS = (("md5", OURS, OURS_PT), ("blake3", OURS_B3, OURS_PT_B3))


def peer_cpu_before(env, daemon):
    return sum(daemon.cpu()) if daemon else 0.0


def failure_note(t, timeout):
    if t.timed_out:
        return f"timed out: stopped after the time cap of {timeout:.0f} s"
    return f"rc={t.rc} {t.output(500)!r}"


def peer_run(env, argv, daemon, tag, check, nbytes, nfiles, extra_procs=(), timeout=3600):
    """Time a peer's client command; the server side's CPU is the daemon's own and its reaped
    children's (sshd and rsync fork one child per connection and wait for it)."""
    settle()
    before = peer_cpu_before(env, daemon)
    t = run_timed(env, argv, tag=tag, timeout=timeout)
    srv = 0.0
    if daemon:
        # the connection's child is reaped just after the client exits
        time.sleep(0.3)
        srv = sum(daemon.cpu()) - before
    ok = t.rc == 0 and not t.timed_out and check()
    return Run(ok, t.wall, nbytes, nfiles, cli_cpu=t.cpu, srv_cpu=srv,
               note="" if ok else failure_note(t, timeout))


def ours_run(env, root, commands, tag, check, nbytes, nfiles, extra=(), plaintext=False,
             far=False, ftpd_args=(), timeout=3600):
    """One run of ftp-cli against a fresh ftpd (with `ftpd_args` added to its usual flags);
    with `far`, through a fresh delay relay."""
    settle()
    d = env.start_ftpd(root, plaintext, extra=[*env.ftpd_extra, *ftpd_args] if ftpd_args else None)
    relay = None
    try:
        addr = None
        if far:
            relay = env.start_relay(d.addr)
            addr = relay.addr
        t = run_timed(env, env.cli_argv(d, commands, extra, addr=addr), tag=tag, timeout=timeout)
        own, _ = d.cpu()
        hwm = d.hwm_kib()
    finally:
        if relay:
            relay.stop()
        d.stop()
    ok = t.rc == 0 and not t.timed_out and check()
    return Run(ok, t.wall, nbytes, nfiles, cli_cpu=t.cpu, srv_cpu=own, cli_rss=t.rss_kib,
               srv_rss=hwm, note="" if ok else failure_note(t, timeout))


def md5sum_run(env, paths, nbytes, nfiles, tag):
    settle()
    t = run_timed(env, ["md5sum", *map(str, paths)], tag=tag)
    return Run(t.rc == 0, t.wall, nbytes, nfiles, cli_cpu=t.cpu, note=f"rc={t.rc}")


def socat_run(env, src, dst, nbytes):
    settle()
    dst.unlink(missing_ok=True)
    port = free_port()
    srv = Timed(env, ["socat", "-u", "-b", "131072",
                      f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                      f"OPEN:{dst},creat,trunc"], tag="socat-srv")
    (env.work / "pids" / f"socat.{srv.proc.pid}").write_text(f"{srv.proc.pid}\n")
    wait_until(lambda: listening(port), "socat to listen")
    t0 = time.monotonic()
    cli = Timed(env, ["socat", "-u", "-b", "131072", f"OPEN:{src}", f"TCP:127.0.0.1:{port}"],
                tag="socat-cli").wait()
    srv.wait()
    wall = time.monotonic() - t0
    (env.work / "pids" / f"socat.{srv.proc.pid}").unlink(missing_ok=True)
    ok = cli.rc == 0 and srv.rc == 0 and same_file(src, dst)
    dst.unlink(missing_ok=True)
    return Run(ok, wall, nbytes, 1, cli_cpu=cli.cpu, srv_cpu=srv.cpu,
               note="" if ok else f"rc={cli.rc}/{srv.rc}")


def bench_one_file(env, res, runs, size, src, served_rel):
    """put and get of one large file, against every peer."""
    w = env.work
    name = src.name
    kput, kget = "put1", "get1"
    res.workload(kput, f"{fmt_bytes(size)} file put", "MB/s")
    res.workload(kget, f"{fmt_bytes(size)} file get", "MB/s")
    put_root = w / "put-root"
    peer_put = w / "peer-root" / "put"
    get_dst = w / "get-dst"
    served = w / "served" / served_rel
    warm(src, served)

    def ours_put(extra=(), plaintext=False):
        fresh_root(put_root)
        r = ours_run(env, put_root, f"put {shlex.quote(str(src))} {name}", "ours-put",
                     lambda: same_file(src, put_root / name), size, 1, extra, plaintext)
        drop_root(put_root)
        return r

    def ours_get(extra=(), plaintext=False):
        fresh_dir(get_dst)
        r = ours_run(env, w / "served", f"get {served_rel} {shlex.quote(str(get_dst / name))}",
                     "ours-get", lambda: same_file(src, get_dst / name), size, 1, extra,
                     plaintext)
        rmtree(get_dst)
        return r

    blake3 = ("--digest", "blake3")

    def peer_put_run(argv, tag, daemon):
        def go():
            fresh_dir(peer_put)
            r = peer_run(env, argv(), daemon, tag, lambda: same_file(src, peer_put / name),
                         size, 1)
            rmtree(peer_put)
            return r
        return go

    def peer_get_run(argv, tag, daemon):
        def go():
            fresh_dir(get_dst)
            r = peer_run(env, argv(), daemon, tag, lambda: same_file(src, get_dst / name),
                         size, 1)
            rmtree(get_dst)
            return r
        return go

    rs = env.rsync_url
    puts = [
        (OURS, ours_put),
        (OURS_PT, lambda: ours_put(plaintext=True)),
        (OURS_B3, lambda: ours_put(blake3)),
        (OURS_PT_B3, lambda: ours_put(blake3, plaintext=True)),
        ("sftp", peer_put_run(lambda: env.sftp_argv([f"put {src} {peer_put}/{name}"], "put"),
                              "sftp-put", env.sshd)),
        ("scp", peer_put_run(lambda: env.scp_argv(str(src), f"root@127.0.0.1:{peer_put}/{name}"),
                             "scp-put", env.sshd)),
        ("rsync", peer_put_run(lambda: ["rsync", str(src), rs(f"peer-root/put/{name}")],
                               "rsync-put", env.rsyncd)),
        ("rsync md5", peer_put_run(lambda: ["rsync", "--checksum-choice=md5", str(src),
                                            rs(f"peer-root/put/{name}")],
                                   "rsync-md5-put", env.rsyncd)),
        ("socat (TCP copy)", lambda: socat_run(env, src, w / "peer-root" / f"socat-{name}", size)),
        ("md5sum", lambda: md5sum_run(env, [src], size, 1, "md5sum")),
    ]
    gets = [
        (OURS, ours_get),
        (OURS_PT, lambda: ours_get(plaintext=True)),
        (OURS_B3, lambda: ours_get(blake3)),
        (OURS_PT_B3, lambda: ours_get(blake3, plaintext=True)),
        ("sftp", peer_get_run(lambda: env.sftp_argv([f"get {served} {get_dst}/{name}"], "get"),
                              "sftp-get", env.sshd)),
        ("scp", peer_get_run(lambda: env.scp_argv(f"root@127.0.0.1:{served}", f"{get_dst}/{name}"),
                             "scp-get", env.sshd)),
        ("rsync", peer_get_run(lambda: ["rsync", rs(f"served/{served_rel}"), f"{get_dst}/{name}"],
                               "rsync-get", env.rsyncd)),
        ("rsync md5", peer_get_run(lambda: ["rsync", "--checksum-choice=md5",
                                            rs(f"served/{served_rel}"), f"{get_dst}/{name}"],
                                   "rsync-md5-get", env.rsyncd)),
        ("md5sum", lambda: md5sum_run(env, [served], size, 1, "md5sum-get")),
    ]
    for i in range(runs):
        log(f"{fmt_bytes(size)} put/get, run {i + 1}/{runs}")
        for tool, fn in puts:
            res.add(kput, tool, fn())
        for tool, fn in gets:
            res.add(kget, tool, fn())


def bench_tree(env, res, runs, nfiles, fsize, src):
    """put -r and get -r of a directory of many small files."""
    w = env.work
    kput, kget = "putR", "getR"
    res.workload(kput, f"{nfiles} x {fmt_bytes(fsize)} files put -r", "files/s")
    res.workload(kget, f"{nfiles} x {fmt_bytes(fsize)} files get -r", "files/s")
    total = nfiles * fsize
    put_root = w / "put-root"
    peer_put = w / "peer-root" / "put"
    get_dst = w / "get-dst"
    served = w / "served" / "small"
    warm(src, served)

    def ours_put():
        fresh_root(put_root)
        r = ours_run(env, put_root, f"put -r {shlex.quote(str(src))} small", "ours-putr",
                     lambda: same_tree(src, put_root / "small"), total, nfiles)
        drop_root(put_root)
        return r

    def ours_get():
        fresh_dir(get_dst)
        r = ours_run(env, w / "served", f"get -r small {shlex.quote(str(get_dst / 'small'))}",
                     "ours-getr", lambda: same_tree(src, get_dst / "small"), total, nfiles)
        rmtree(get_dst)
        return r

    def peer_put_run(argv, tag, daemon):
        def go():
            fresh_dir(peer_put)
            r = peer_run(env, argv(), daemon, tag, lambda: same_tree(src, peer_put / "small"),
                         total, nfiles)
            rmtree(peer_put)
            return r
        return go

    def peer_get_run(argv, tag, daemon):
        def go():
            fresh_dir(get_dst)
            r = peer_run(env, argv(), daemon, tag, lambda: same_tree(src, get_dst / "small"),
                         total, nfiles)
            rmtree(get_dst)
            return r
        return go

    rs = env.rsync_url
    files = sorted(src.iterdir())
    puts = [
        (OURS, ours_put),
        ("sftp", peer_put_run(lambda: env.sftp_argv(
            [f"put -r {src} {peer_put}"], "putr"),
            "sftp-putr", env.sshd)),
        ("scp", peer_put_run(lambda: env.scp_argv("-r", str(src), f"root@127.0.0.1:{peer_put}/small"),
                             "scp-putr", env.sshd)),
        ("rsync", peer_put_run(lambda: ["rsync", "-a", f"{src}/", rs("peer-root/put/small/")],
                               "rsync-putr", env.rsyncd)),
        ("rsync md5", peer_put_run(lambda: ["rsync", "-a", "--checksum-choice=md5", f"{src}/",
                                            rs("peer-root/put/small/")],
                                   "rsync-md5-putr", env.rsyncd)),
        ("md5sum", lambda: md5sum_run(env, files, total, nfiles, "md5sum-r")),
    ]
    gets = [
        (OURS, ours_get),
        ("sftp", peer_get_run(lambda: env.sftp_argv([f"get -r {served} {get_dst}/small"], "getr"),
                              "sftp-getr", env.sshd)),
        ("scp", peer_get_run(lambda: env.scp_argv("-r", f"root@127.0.0.1:{served}",
                                                  f"{get_dst}/small"), "scp-getr", env.sshd)),
        ("rsync", peer_get_run(lambda: ["rsync", "-a", rs("served/small/"), f"{get_dst}/small/"],
                               "rsync-getr", env.rsyncd)),
        ("rsync md5", peer_get_run(lambda: ["rsync", "-a", "--checksum-choice=md5",
                                            rs("served/small/"), f"{get_dst}/small/"],
                                   "rsync-md5-getr", env.rsyncd)),
    ]
    for i in range(runs):
        log(f"{nfiles} small files put -r/get -r, run {i + 1}/{runs}")
        for tool, fn in puts:
            res.add(kput, tool, fn())
        for tool, fn in gets:
            res.add(kget, tool, fn())


def bench_concurrent(env, res, runs, nclients, fsize, src):
    """nclients ftp-cli processes at once, each putting its own file and getting it back."""
    w = env.work
    key = "conc"
    res.workload(key, f"{nclients} concurrent clients, each put+get {fmt_bytes(fsize)}", "MB/s")
    root = w / "put-root"
    out = w / "conc-out"
    files = sorted(src.iterdir())[:nclients]
    warm(src)
    for i in range(runs):
        log(f"{nclients} concurrent clients, run {i + 1}/{runs}")
        fresh_root(root)
        fresh_dir(out)
        settle()
        d = env.start_ftpd(root)
        try:
            t0 = time.monotonic()
            procs = [Timed(env, env.cli_argv(d, f"put {f} {f.name}; get {f.name} {out / f.name}"),
                           tag=f"conc{j}") for j, f in enumerate(files)]
            for p in procs:
                p.wait()
            wall = time.monotonic() - t0
            own, _ = d.cpu()
            hwm = d.hwm_kib()
        finally:
            d.stop()
        failed = [p for p in procs if p.rc != 0]
        bad = [f for f in files if not (same_file(f, root / f.name) and same_file(f, out / f.name))]
        note = ""
        if failed:
            note += f"{len(failed)} clients failed, e.g. rc={failed[0].rc} {failed[0].output(300)!r}; "
        if bad:
            note += f"{len(bad)} files not byte-identical"
        r = Run(not failed and not bad, wall, 2 * fsize * len(files), 2 * len(files),
                cli_cpu=sum(p.cpu for p in procs), srv_cpu=own,
                cli_rss=max(p.rss_kib for p in procs), srv_rss=hwm,
                failures=len(set(failed) | set(bad)), note=note)
        r.client_failures = len(failed)
        r.not_identical = len(bad)
        res.add(key, OURS, r)
        drop_root(root)
        rmtree(out)


def bench_huge(env, res, runs, size, src):
    """One very large put: does ftpd's memory stay flat?"""
    w = env.work
    key = "huge"
    res.workload(key, f"{fmt_bytes(size)} file put (memory)", "MB/s")
    root = w / "put-root"
    warm(src)
    for i in range(runs):
        log(f"{fmt_bytes(size)} put, run {i + 1}/{runs}")
        fresh_root(root)
        res.add(key, OURS, ours_run(env, root, f"put {src} {src.name}", "ours-huge",
                                    lambda: same_file(src, root / src.name), size, 1))
        drop_root(root)
        res.add(key, "md5sum", md5sum_run(env, [src], size, 1, "md5sum-huge"))


def subset_tree(env, tree, served, n, tag):
    """The first n files (sorted by name) of the directory `tree` and of its served copy,
    hard-linked into WORK/subsets under the same directory name: what a capped peer moves
    instead of the whole tree. Returns (src, served, nbytes)."""
    base = env.work / "subsets" / f"{tag}-{n}"
    out = []
    for i, d in enumerate((tree, served)):
        dst = base / str(i) / tree.name
        if not dst.is_dir():
            dst.mkdir(parents=True)
            for f in sorted(d.iterdir())[:n]:
                os.link(f, dst / f.name)
        out.append(dst)
    nbytes = sum(f.stat().st_size for f in out[0].iterdir())
    return out[0], out[1], nbytes


def transfer_tools(env, src, served_rel, nbytes, nfiles, tag, tools, far=None, limits=None,
                   timeout=3600):
    """(puts, gets): (tool, fn) lists that move `src` (a directory, with `put -r`/`get -r`,
    or one file) to a peer and `served_rel` (what ftp-cli uploaded into WORK/served) back,
    each checked byte for byte. `far` is (ssh relay port, rsync relay port): the peers go
    through those relays, and ours through a fresh relay in front of each fresh ftpd.

    `limits` caps a peer (not ours) of a directory: {(tool, "put" or "get"): n} moves only
    the first n files (a hard-linked subset with the same name), and its runs say so
    (`capped_of`: the whole tree's count). `timeout` is each run's time cap, in seconds."""
    w = env.work
    name = src.name
    tree = src.is_dir()
    r_ = "-r " if tree else ""
    same = same_tree if tree else same_file
    put_root = w / "put-root"
    peer_put = w / "peer-root" / "put"
    get_dst = w / "get-dst"
    served_all = w / "served" / served_rel
    ssh_port, rsync_port = far or (None, None)
    rs = lambda rel: env.rsync_url(rel, rsync_port)
    slash = "/" if tree else ""
    rsync_a = ["-a"] if tree else []
    limits = limits or {}

    def ours_put(extra=(), plaintext=False, ftpd_args=()):
        def go():
            fresh_root(put_root)
            r = ours_run(env, put_root, f"put {r_}{shlex.quote(str(src))} {name}", f"ours-put-{tag}",
                         lambda: same(src, put_root / name), nbytes, nfiles, extra, plaintext,
                         far=bool(far), ftpd_args=ftpd_args, timeout=timeout)
            drop_root(put_root)
            return r
        return go

    def ours_get(extra=(), plaintext=False, ftpd_args=()):
        def go():
            fresh_dir(get_dst)
            r = ours_run(env, w / "served",
                         f"get {r_}{served_rel} {shlex.quote(str(get_dst / name))}",
                         f"ours-get-{tag}", lambda: same(src, get_dst / name), nbytes, nfiles,
                         extra, plaintext, far=bool(far), ftpd_args=ftpd_args, timeout=timeout)
            rmtree(get_dst)
            return r
        return go

    def peer(tool, kind, argv, daemon):
        """argv(src, served, served relative to WORK) -> the command; run on the whole tree,
        or on the first n files of it if the tool is capped."""
        dst = peer_put if kind == "put" else get_dst
        n = limits.get((tool, kind))
        capped = tree and n is not None and n < nfiles

        def go():
            if capped:
                s_src, s_served, s_bytes = subset_tree(env, src, served_all, n, tag)
                s_n = n
            else:
                s_src, s_served, s_bytes, s_n = src, served_all, nbytes, nfiles
            fresh_dir(dst)
            r = peer_run(env, argv(s_src, s_served, os.path.relpath(s_served, w)), daemon,
                         f"{kind}-{tag}", lambda: same(s_src, dst / name), s_bytes, s_n,
                         timeout=timeout)
            if capped:
                r.capped_of = nfiles
            rmtree(dst)
            return r
        return go

    blake3 = ("--digest", "blake3")
    # Relaxed durability: ftpd does not fsync an upload before it is stored (only when this
    # ftpd has the flag; the caller checks env.ftpd_no_fsync). A get is relaxed only if
    # ftp-cli has a --no-fsync of its own for what it writes.
    no_fsync = ("--no-fsync",)
    puts = {
        OURS: ours_put(),
        OURS_B3: ours_put(blake3),
        OURS_PT: ours_put(plaintext=True),
        OURS_NOFSYNC: ours_put(ftpd_args=no_fsync),
        "sftp": peer("sftp", "put", lambda s, _v, _r: env.sftp_argv(
            [f"put {r_}{s} {peer_put}{'' if tree else '/' + name}"], "put", ssh_port),
            env.sshd),
        "scp": peer("scp", "put", lambda s, _v, _r: env.scp_argv(
            *(["-r"] if tree else []), str(s), f"root@127.0.0.1:{peer_put}/{name}",
            port=ssh_port), env.sshd),
        "rsync": peer("rsync", "put", lambda s, _v, _r: [
            "rsync", *rsync_a, f"{s}{slash}", rs(f"peer-root/put/{name}{slash}")], env.rsyncd),
        "md5sum": lambda: md5sum_run(env, sorted(src.iterdir()) if tree else [src], nbytes,
                                     nfiles, f"md5sum-{tag}"),
    }
    gets = {
        OURS: ours_get(),
        OURS_B3: ours_get(blake3),
        OURS_PT: ours_get(plaintext=True),
        "sftp": peer("sftp", "get", lambda _s, v, _r: env.sftp_argv(
            [f"get {r_}{v} {get_dst}/{name}"], "get", ssh_port), env.sshd),
        "scp": peer("scp", "get", lambda _s, v, _r: env.scp_argv(
            *(["-r"] if tree else []), f"root@127.0.0.1:{v}", f"{get_dst}/{name}",
            port=ssh_port), env.sshd),
        "rsync": peer("rsync", "get", lambda _s, _v, rel: [
            "rsync", *rsync_a, rs(f"{rel}{slash}"), f"{get_dst}/{name}{slash}"], env.rsyncd),
    }
    if env.cli_no_fsync:
        gets[OURS_NOFSYNC] = ours_get(no_fsync, ftpd_args=no_fsync)
    return ([(t, puts[t]) for t in tools if t in puts], [(t, gets[t]) for t in tools if t in gets])


def size_key(kind, size):
    return f"size-{kind}-{size}"


def bench_sizes(env, res, runs, sizes, src):
    """The size sweep: put -r and get -r of a directory of COUNT files of SIZE, for each
    (SIZE, COUNT), so that throughput can be drawn against file size."""
    tools = (OURS, OURS_B3, "sftp", "scp", "rsync", "md5sum")
    plan = []
    for size, count in sizes:
        d = src / f"sz-{size}"
        kput, kget = size_key("put", size), size_key("get", size)
        unit = "files/s" if size < MiB else "MB/s"
        res.workload(kput, f"size sweep: {count} x {fmt_bytes(size)} put -r", unit)
        res.workload(kget, f"size sweep: {count} x {fmt_bytes(size)} get -r", unit)
        puts, gets = transfer_tools(env, d, d.name, size * count, count, f"sz{size}", tools)
        plan.append((size, count, d, kput, kget, puts, gets))
    for i in range(runs):
        for size, count, d, kput, kget, puts, gets in plan:
            log(f"size sweep {count} x {fmt_bytes(size)}, run {i + 1}/{runs}")
            warm(d, env.work / "served" / d.name)
            for tool, fn in puts:
                res.add(kput, tool, fn())
            for tool, fn in gets:
                res.add(kget, tool, fn())


def far_key(kind, what):
    return f"far-{kind}-{what}"


def bench_far(env, res, runs, nfiles, fsize, big, src, sftp_files, timeout):
    """The many-small-files and the one-large-file transfers again, every tool through the
    same delay relay (FAR_DELAY_MS each way): what round trips cost. sftp pays a round trip
    or more per file (about 0.2 s a file here), so on the tree it moves only the first
    `sftp_files` files: its files/s hardly depends on how many. Returns what was capped."""
    tools = (OURS, "sftp", "rsync")
    caps = []
    relays = [env.start_relay(f"127.0.0.1:{env.ssh_port}"),
              env.start_relay(f"127.0.0.1:{env.rsync_port}")]
    far = (relays[0].port, relays[1].port)
    log(f"delay relays ({FAR_DELAY_MS} ms each way): sshd via {relays[0].addr}, "
        f"rsync daemon via {relays[1].addr}")
    tree, bigf = src / "far-tree", src / "far-big.bin"
    rt = f"{2 * FAR_DELAY_MS} ms round trip"
    parts = []
    for what, path, n, nbytes, unit, title in (
            ("tree", tree, nfiles, nfiles * fsize, "files/s", f"{nfiles} x {fmt_bytes(fsize)}"),
            ("big", bigf, 1, big, "MB/s", f"one {fmt_bytes(big)} file")):
        kput, kget = far_key("put", what), far_key("get", what)
        res.workload(kput, f"far ({rt}): {title} put{' -r' if n > 1 else ''}", unit)
        res.workload(kget, f"far ({rt}): {title} get{' -r' if n > 1 else ''}", unit)
        limits = {}
        if n > 1 and sftp_files < n:
            for kind, key in (("put", kput), ("get", kget)):
                limits[("sftp", kind)] = sftp_files
                caps.append({"key": key, "tool": "sftp", "kind": kind, "moved": sftp_files,
                             "of": n, "why": f"fixed for the far part: sftp waits a round trip "
                                             f"or more per file, about 0.2 s each, so all {n} "
                                             f"would take about {n * 0.2:.0f} s a run"})
        puts, gets = transfer_tools(env, path, path.name, nbytes, n, f"far-{what}", tools, far,
                                    limits=limits, timeout=timeout)
        parts.append((what, path, kput, kget, puts, gets))
    try:
        for i in range(runs):
            for what, path, kput, kget, puts, gets in parts:
                log(f"far {what}, run {i + 1}/{runs}")
                warm(path, env.work / "served" / path.name)
                for tool, fn in puts:
                    res.add(kput, tool, fn())
                for tool, fn in gets:
                    res.add(kget, tool, fn())
    finally:
        for r in relays:
            r.stop()
    return caps


def many_key(kind, count, size):
    return f"many-{kind}-{count}-{size}"


def many_dir(count, size):
    return f"many-{count}x{size}"


# The tools of the `many` part, in the order they take turns; OURS_NOFSYNC only if this ftpd
# has --no-fsync.
MANY_TOOLS = (OURS, OURS_PT, OURS_NOFSYNC, "rsync", "sftp")
MANY_PEERS = ("rsync", "sftp")


def bench_many(env, res, runs, cases, src, cap_s, timeout):
    """Issue 16: `put -r` and `get -r` of trees of many small files (COUNT x SIZE for each
    case), for ours (TLS, plaintext, and --no-fsync if ftpd has it), the rsync daemon and
    sftp, round-robin within each case. `cases` is [(count, size, large)]: the small cases run
    `runs` rounds first; the large ones one round after them, with each peer capped so that
    a run stays within `cap_s` seconds: predicted from its files/s on the small case of the
    same file size, a peer that would take longer moves only the first N files of the tree
    (N a multiple of the small case's count), and the report says so. Ours is never capped;
    `timeout` stops any run (ours too) that goes on longer. Returns what was capped."""
    tools = [t for t in MANY_TOOLS if t != OURS_NOFSYNC or env.ftpd_no_fsync]
    caps = []
    for count, size, _ in cases:
        for kind in ("put", "get"):
            res.workload(many_key(kind, count, size),
                         f"many: {count:,} x {fmt_bytes(size)} {kind} -r", "files/s")

    def limits_for(count, size):
        smaller = [c for c, s, large in cases if s == size and not large and c < count]
        if not smaller:
            return {}
        base = max(smaller)
        limits = {}
        for tool in MANY_PEERS:
            for kind in ("put", "get"):
                fps = res.median(many_key(kind, base, size), tool, "fps")
                if not fps or count / fps <= cap_s:
                    continue
                n = max(base, int(cap_s * fps) // base * base)
                if n >= count:
                    continue
                limits[(tool, kind)] = n
                caps.append({"key": many_key(kind, count, size), "tool": tool, "kind": kind,
                             "moved": n, "of": count,
                             "why": f"time cap {cap_s:.0f} s per run: at {fps:.0f} files/s "
                                    f"(its {base} x {fmt_bytes(size)} {kind} -r) all {count} "
                                    f"would take about {count / fps:.0f} s"})
                log(f"  capped: {tool} {count} x {fmt_bytes(size)} {kind} -r moves the first {n} "
                    f"files ({count / fps:.0f} s predicted for all {count})")
        return limits

    def stage(group, nruns):
        plan = []
        for count, size in group:
            d = src / many_dir(count, size)
            puts, gets = transfer_tools(env, d, d.name, count * size, count,
                                        f"many{count}x{size}", tools,
                                        limits=limits_for(count, size), timeout=timeout)
            plan.append((count, size, d, puts, gets))
        for i in range(nruns):
            for count, size, d, puts, gets in plan:
                log(f"many: {count} x {fmt_bytes(size)}, run {i + 1}/{nruns}")
                warm(d, env.work / "served" / d.name)
                # Round-robin, and each round starts with another tool, so that no tool is
                # always the one right after another's writeback or daemon start.
                k = i % len(puts)
                for tool, fn in puts[k:] + puts[:k]:
                    res.add(many_key("put", count, size), tool, fn())
                k = i % len(gets)
                for tool, fn in gets[k:] + gets[:k]:
                    res.add(many_key("get", count, size), tool, fn())

    stage([(c, s) for c, s, large in cases if not large], runs)
    stage([(c, s) for c, s, large in cases if large], 1)
    return caps


class Sampler:
    """Samples a process's open file descriptors every 20 ms in a thread: the peak count.
    (Peak RSS needs no sampling: the kernel keeps VmHWM.)"""

    def __init__(self, pid):
        self.pid, self.peak_fds, self.stop_ = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop_.is_set():
            try:
                self.peak_fds = max(self.peak_fds, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                pass
            self.stop_.wait(0.02)

    def stop(self):
        self.stop_.set()
        self.thread.join()
        return self.peak_fds


def clients_key(n):
    return f"clients-{n}"


def clients_ftpd_args(n):
    """ftpd's connection caps raised as an admin would for N clients of one address: room for
    all of them at once, logged in or still in the handshake. Nothing else: the memory budget
    and the rest stay at their defaults, since the peak RSS target (< 128 MiB at 1,000) is for
    the daemon as shipped. File descriptors come from bench/run's `ulimit -n 20000`, which ftpd
    inherits: it holds about two per client at the peak (the TLS socket and the staged upload
    or the file being read; 2,013 at 1,000 clients)."""
    cap = str(max(2 * n, 64))
    return ["--max-connections", cap, "--max-connections-per-ip", cap,
            "--max-unauthenticated", cap, "--max-unauthenticated-per-range", cap]


def bench_clients(env, res, runs, counts, fsize, src):
    """The concurrency sweep: N ftp-cli processes at once (started as fast as the driver can
    spawn them), each putting its own file and getting it back, for each N."""
    w = env.work
    root = w / "put-root"
    out = w / "conc-out"
    files = sorted(src.iterdir())
    warm(src)
    for n in counts:
        res.workload(clients_key(n), f"{n} concurrent clients, each put+get {fmt_bytes(fsize)}",
                     "MB/s")
    for i in range(runs):
        for n in counts:
            log(f"{n} concurrent clients, run {i + 1}/{runs}")
            fresh_root(root)
            fresh_dir(out)
            settle()
            d = env.start_ftpd(root, extra=clients_ftpd_args(n))
            sampler = Sampler(d.pid)
            mine = files[:n]
            # Every client waits at a gate until all N are spawned (spawning 1,000 takes the
            # driver seconds, longer than one client's whole transfer), then all go at once.
            gate = w / "logs" / f"gate.{n}.{i}"
            gate.unlink(missing_ok=True)
            os.mkfifo(gate)
            try:
                procs = [Timed(env, env.cli_argv(d, f"put {f} {f.name}; get {f.name} {out / f.name}"),
                               tag=f"cl{n}-{j}", gate=gate) for j, f in enumerate(mine)]
                time.sleep(0.5)
                t0 = time.monotonic()
                with open(gate, "w"):
                    pass
                for p in procs:
                    p.wait()
                wall = time.monotonic() - t0
                own, _ = d.cpu()
                hwm = d.hwm_kib()
            finally:
                fds = sampler.stop()
                d.stop()
            failed = [p for p in procs if p.rc != 0]
            bad = [f for f in mine if not (same_file(f, root / f.name) and same_file(f, out / f.name))]
            note = ""
            if failed:
                note += (f"{len(failed)} clients failed, e.g. rc={failed[0].rc} "
                         f"{failed[0].output(300)!r}; ")
            if bad:
                note += f"{len(bad)} files not byte-identical"
            lat = sorted(p.elapsed for p in procs if p.rc == 0)
            r = Run(not failed and not bad, wall, 2 * fsize * n, 2 * n,
                    cli_cpu=sum(p.cpu for p in procs), srv_cpu=own,
                    cli_rss=max(p.rss_kib for p in procs), srv_rss=hwm,
                    failures=len(set(failed) | set(bad)), note=note)
            r.clients = n
            r.client_failures = len(failed)
            r.not_identical = len(bad)
            r.peak_fds = fds
            r.p50 = percentile(lat, 50)
            r.p99 = percentile(lat, 99)
            res.add(clients_key(n), OURS, r)
            log(f"  {n} clients: p50 {f2(r.p50)} s, p99 {f2(r.p99)} s per client, ftpd peak "
                f"{mib(hwm)} MiB, {fds} fds, {len(failed)} failed, {len(bad)} differ")
            drop_root(root)
            rmtree(out)


def percentile(sorted_xs, q):
    """Nearest-rank percentile; None for no data."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, -(-len(sorted_xs) * q // 100) - 1))
    return sorted_xs[int(k)]


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def ratio(a, b):
    return a / b if a is not None and b else None


def f2(x, nd=2, suffix=""):
    return "—" if x is None else f"{x:.{nd}f}{suffix}"


def mib(kib):
    return "—" if not kib else f"{kib / 1024:.1f}"


def results_rows(res):
    header = ["workload", "tool", "ok runs", "median MB/s", "median files/s", "ours/theirs",
              "CPU s (client+server)", "CPU s/GiB", "ftpd peak RSS MiB", "ftp-cli peak RSS MiB"]
    rows = []
    for key, title, unit in res.workloads:
        attr = "mbps" if unit == "MB/s" else "fps"
        ours = res.median(key, OURS, attr)
        for tool in res.tools[key]:
            runs = res.runs[key][tool]
            good = res.good(key, tool)
            mb = res.median(key, tool, "mbps")
            fps = res.median(key, tool, "fps")
            cli = res.median(key, tool, "cli_cpu")
            srv = res.median(key, tool, "srv_cpu")
            cpu = res.median(key, tool, "cpu")
            nbytes = good[0].nbytes if good else 0
            per_gib = cpu / (nbytes / GiB) if good and nbytes else None
            if tool == "md5sum" or tool.startswith("socat"):
                cpu_s = f2(cli) if tool == "md5sum" else f"{f2(cli)}+{f2(srv)}"
            else:
                cpu_s = f"{f2(cli)}+{f2(srv)}"
            rel = "—" if tool in OUR_TOOLS else f2(ratio(ours, res.median(key, tool, attr)), 2, "x")
            rows.append([
                title, tool, f"{len(good)}/{len(runs)}", f2(mb, 1),
                f2(fps, 1) if unit == "files/s" or key == "conc" else "—", rel, cpu_s,
                f2(per_gib), mib(res.peak(key, tool, "srv_rss")) if tool in OUR_TOOLS else "—",
                mib(res.peak(key, tool, "cli_rss")) if tool in OUR_TOOLS else "—",
            ])
    return header, rows


def targets(res):
    """(header, issue 16's rows, the other rows): (target, measured, threshold, met) rows;
    met is True/False/None (report only)."""
    issue, out = [], []
    sink = [out]
    med = res.median

    def row(name, value, shown, threshold, met):
        sink[0].append([name, shown if value is not None else "not measured", threshold,
                        "report" if met is None else ("met" if met else "NOT MET")
                        if value is not None else "NOT MET (not measured)"])

    md5 = med("put1", "md5sum", "mbps")
    copy = med("put1", "socat (TCP copy)", "mbps")
    bound = 1 / (2 / md5 + 1 / copy) if md5 and copy else None
    # A part left out with --only has no target rows; a part that ran and failed does.
    for ours in (OURS, OURS_B3) if "put1" in res.runs else ():
        # The targets are judged for the default (MD5); the same rows for BLAKE3 are reported
        # beside them, against the same thresholds.
        tag = "" if ours == OURS else " [blake3]"
        put = med("put1", ours, "mbps")
        get = med("get1", ours, "mbps")
        if put is None and ours != OURS:
            continue
        r = ratio(put, bound)
        row(f"put vs bound 1/(2/md5sum + 1/socat){tag}", r,
            f"{f2(r)}x ({f2(put, 1)} vs {f2(bound, 1)} MB/s; md5sum {f2(md5, 1)}, "
            f"socat {f2(copy, 1)})", ">= 0.85x", r is not None and r >= 0.85)
        r = ratio(put, med("put1", "rsync md5", "mbps"))
        row(f"put vs rsync --checksum-choice=md5{tag}", r, f"{f2(r)}x", ">= 1.25x",
            r is not None and r >= 1.25)
        r = ratio(put, med("put1", "rsync", "mbps"))
        row(f"put vs rsync (default checksum){tag}", r, f"{f2(r)}x", "report", None)
        for peer in ("sftp", "scp"):
            r = ratio(put, med("put1", peer, "mbps"))
            row(f"put vs {peer}{tag}", r, f"{f2(r)}x", "report", None)
        for peer in ("sftp", "scp"):
            r = ratio(get, med("get1", peer, "mbps"))
            row(f"get vs {peer}{tag}", r, f"{f2(r)}x", ">= 1.30x", r is not None and r >= 1.3)
        for key, limit in (("put1", 2.4), ("get1", 1.4)):
            ours_cpu = med(key, ours, "cpu")
            cli = med(key, ours, "cli_cpu")
            srv = med(key, ours, "srv_cpu")
            m = med(key, "md5sum", "cpu")
            good = res.good(key, ours)
            gib = good[0].nbytes / GiB if good else None
            r = ratio(ours_cpu, m)
            row(f"{key[:3]} CPU s/GiB, ftpd+ftp-cli vs md5sum{tag}", r,
                f"{f2(r)}x ({f2(ratio(ours_cpu, gib))} vs {f2(ratio(m, gib))} s/GiB; "
                f"ftp-cli {f2(ratio(cli, gib))}, ftpd {f2(ratio(srv, gib))})" if gib else "—",
                f"<= {limit:.2f}x", r is not None and r <= limit)
    tls_targets(res, row)
    for key in ("putR", "getR") if "putR" in res.runs else ():
        r = ratio(med(key, OURS, "fps"), med(key, "rsync", "fps"))
        row(f"{key[:3]} -r small files, files/s vs rsync daemon", r,
            f"{f2(r)}x ({f2(med(key, OURS, 'fps'), 1)} vs {f2(med(key, 'rsync', 'fps'), 1)} files/s)",
            ">= 1.00x", r is not None and r >= 1.0)
    conc = res.runs.get("conc", {}).get(OURS, [])
    if conc:
        fails = sum(getattr(x, "client_failures", 0) for x in conc)
        bad = sum(getattr(x, "not_identical", 0) for x in conc)
        row("concurrent clients: failed clients (all runs)", fails, str(fails), "0", fails == 0)
        row("concurrent clients: files not byte-identical (all runs)", bad, str(bad), "0", bad == 0)
        hwm = res.peak("conc", OURS, "srv_rss")
        row("concurrent clients: ftpd peak RSS", hwm, f"{mib(hwm)} MiB", "< 64 MiB",
            hwm is not None and hwm < 64 * 1024)
    elif "conc" in res.runs:
        row("concurrent clients", None, "", "0 failures", False)
    if "huge" in res.runs:
        hwm = res.peak("huge", OURS, "srv_rss")
        title = next((t for k, t, _ in res.workloads if k == "huge"), "big file put")
        row(f"{title}: ftpd peak RSS", hwm, f"{mib(hwm)} MiB", "< 32 MiB",
            hwm is not None and hwm < 32 * 1024)
    for key in res.runs:
        if not key.startswith("clients-"):
            continue
        rs = res.runs[key].get(OURS, [])
        n = rs[0].clients if rs else "?"
        fails = sum(x.failures for x in rs)
        hwm = res.peak(key, OURS, "srv_rss")
        row(f"{n} concurrent clients: failed or differing clients (all runs)", fails,
            str(fails), "0", fails == 0)
        row(f"{n} concurrent clients: ftpd peak RSS", hwm, f"{mib(hwm)} MiB", "< 128 MiB",
            hwm is not None and hwm < 128 * 1024)
    sink[0] = issue
    issue16_targets(res, row)
    return ["target", "measured (same run)", "threshold", "result"], issue, out


def many_cases_run(res):
    """[(count, size)] of the `many` workloads in this run, in order."""
    out = []
    for key, _, _ in res.workloads:
        if key.startswith("many-put-"):
            _, _, count, size = key.split("-")
            out.append((int(count), int(size)))
    return out


def capped(res, key, tool):
    """'first N of M files' when the tool's runs of this workload were capped, else ''."""
    for r in res.runs.get(key, {}).get(tool, []):
        if getattr(r, "capped_of", None):
            return f"{tool} moved the first {r.nfiles:,} of {r.capped_of:,} files"
    return ""


# Issue 16: ours (TLS, default settings) against each peer, files/s, in each `many` case.
MANY_TARGETS = (("rsync", "the rsync daemon", 1.0), ("sftp", "sftp", 1.5))
# and through the delay relay: (what, attr, unit, ((peer, threshold), ...)).
FAR_TARGETS = (("tree", "fps", "files/s", (("rsync", 1.0), ("sftp", 3.0))),
               ("big", "mbps", "MB/s", (("rsync", 1.0), ("sftp", 1.0))))


def issue16_targets(res, row):
    med = res.median
    for count, size in many_cases_run(res):
        for kind in ("put", "get"):
            key = many_key(kind, count, size)
            ours = med(key, OURS, "fps")
            for peer, name, limit in MANY_TARGETS:
                theirs = med(key, peer, "fps")
                r = ratio(ours, theirs)
                cap = capped(res, key, peer)
                row(f"{count:,} x {fmt_bytes(size)} {kind} -r, files/s, ours vs {name}", r,
                    f"{f2(r)}x ({f2(ours, 1)} vs {f2(theirs, 1)} files/s"
                    f"{'; ' + cap if cap else ''})", f">= {limit:.2f}x",
                    r is not None and r >= limit)
    rt = f"{2 * FAR_DELAY_MS} ms RTT"
    for what, attr, unit, limits in FAR_TARGETS:
        for kind in ("put", "get"):
            key = far_key(kind, what)
            if key not in res.runs:
                continue
            title = next(t for k, t, _ in res.workloads if k == key)
            title = title.split(": ", 1)[1] if ": " in title else title
            for peer, limit in limits:
                r = ratio(med(key, OURS, attr), med(key, peer, attr))
                cap = capped(res, key, peer)
                row(f"far ({rt}): {title}, {unit}, ours vs {peer}", r,
                    f"{f2(r)}x ({f2(med(key, OURS, attr), 1)} vs {f2(med(key, peer, attr), 1)} "
                    f"{unit}{'; ' + cap if cap else ''})", f">= {limit:.2f}x",
                    r is not None and r >= limit)


# The TLS targets, as ratios or differences of medians within one run: what TLS may cost in
# CPU over plaintext on either side, and how fast the TLS default must be against sftp (which
# encrypts too).
TLS_CPU_LIMIT = 0.30  # CPU s per GiB, each side, each case
TLS_VS_SFTP = {("put1", "md5"): 1.15, ("get1", "md5"): 1.0,
               ("put1", "blake3"): 1.5, ("get1", "blake3"): 1.5}


def per_gib(res, key, tool, attr):
    good = res.good(key, tool)
    return ratio(res.median(key, tool, attr), good[0].nbytes / GiB) if good else None


def tls_targets(res, row):
    """The TLS rows of the targets table."""
    med = res.median
    for key in ("put1", "get1"):
        if key not in res.runs:
            continue
        what = key[:3]
        for digest, tls, plain in TLS_PAIRS:
            limit = TLS_VS_SFTP[(key, digest)]
            r = ratio(med(key, tls, "mbps"), med(key, "sftp", "mbps"))
            row(f"TLS {what} [{digest}] vs sftp", r,
                f"{f2(r)}x ({f2(med(key, tls, 'mbps'), 1)} vs {f2(med(key, 'sftp', 'mbps'), 1)} "
                "MB/s)", f">= {limit:.2f}x", r is not None and r >= limit)
            r = ratio(med(key, plain, "mbps"), med(key, "sftp", "mbps"))
            row(f"plaintext {what} [{digest}] vs sftp", r, f"{f2(r)}x", "report", None)
            for side, attr in (("ftp-cli", "cli_cpu"), ("ftpd", "srv_cpu")):
                a, b = per_gib(res, key, tls, attr), per_gib(res, key, plain, attr)
                d = a - b if a is not None and b is not None else None
                row(f"TLS CPU over plaintext, {what} [{digest}], {side}", d,
                    f"{d:+.2f} s/GiB ({f2(a)} vs {f2(b)})" if d is not None else "",
                    f"<= {TLS_CPU_LIMIT:.2f} s/GiB", d is not None and d <= TLS_CPU_LIMIT)


def tls_rows(res):
    """One row per case and transport: throughput, each side's CPU per GiB, what TLS adds."""
    header = ["case", "transport", "ok runs", "median MB/s", "vs sftp", "ftp-cli CPU s/GiB",
              "ftpd CPU s/GiB", "TLS adds, ftp-cli s/GiB", "TLS adds, ftpd s/GiB"]
    rows = []
    for key in ("put1", "get1"):
        if key not in res.runs:
            continue
        sftp = res.median(key, "sftp", "mbps")
        for digest, tls, plain in TLS_PAIRS:
            for transport, tool in (("TLS 1.3", tls), ("plaintext", plain)):
                cli = per_gib(res, key, tool, "cli_cpu")
                srv = per_gib(res, key, tool, "srv_cpu")
                adds = ["—", "—"]
                if tool == tls:
                    for i, attr in enumerate(("cli_cpu", "srv_cpu")):
                        a, b = per_gib(res, key, tls, attr), per_gib(res, key, plain, attr)
                        if a is not None and b is not None:
                            adds[i] = f"{a - b:+.2f}"
                mb = res.median(key, tool, "mbps")
                rows.append([f"{key[:3]} {digest}", transport,
                             f"{len(res.good(key, tool))}/{len(res.runs[key].get(tool, []))}",
                             f2(mb, 1), f2(ratio(mb, sftp), 2, "x"), f2(cli), f2(srv), *adds])
    return header, rows


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *map(line, rows)])


def md_table(header, rows):
    esc = lambda s: str(s).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def machine():
    def first(path, prefix):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def ver(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    mem_kib = int(first("/proc/meminfo", "MemTotal").split()[0])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory": f"{mem_kib / (1 << 20):.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "OpenSSH": ver(["ssh", "-V"]),
        "rsync": ver(["rsync", "--version"]),
        "socat": ver(["socat", "-V"]).replace("socat by Gerhard Rieger and contributors - see www.dest-unreach.org", "")
        or ver(["sh", "-c", "socat -V | sed -n 2p"]),
        "md5sum": ver(["md5sum", "--version"]),
    }


def report(env, res, info, params, started, path):
    th, irows, orows = targets(res)
    trows = irows + orows
    rh, rrows = results_rows(res)
    tlh, tlrows = tls_rows(res)
    mh, mrows = many_rows(res)
    caps = caps_lines(res, params)
    text = ["", "== Targets of issue 16 (ratios from this one run) ==", text_table(th, irows),
            *caps, "",
            "== Other targets (ratios from this one run) ==", text_table(th, orows), "",
            "== Many small files (medians of the ok runs) ==", text_table(mh, mrows), "",
            "== TLS vs plaintext (medians of the ok runs) ==", text_table(tlh, tlrows), "",
            "== Results (medians of the ok runs) ==", text_table(rh, rrows), ""]
    print("\n".join(text))
    met = sum(1 for r in trows if r[3] == "met")
    not_met = sum(1 for r in trows if r[3].startswith("NOT"))
    print(f"targets: {met} met, {not_met} not met, {len(trows) - met - not_met} report only")

    per_run_h = ["workload", "tool", "run", "ok", "wall s", "MB/s", "files/s", "client CPU s",
                 "server CPU s", "ftpd RSS MiB", "ftp-cli RSS MiB", "note"]
    per_run = []
    for key, title, _ in res.workloads:
        for tool in res.tools[key]:
            for i, r in enumerate(res.runs[key][tool], 1):
                per_run.append([key, tool, i, "yes" if r.ok else "NO", f"{r.wall:.2f}",
                                f"{r.mbps:.1f}", f"{r.fps:.1f}", f"{r.cli_cpu:.2f}",
                                f"{r.srv_cpu:.2f}", mib(r.srv_rss), mib(r.cli_rss),
                                ((f"capped: first {r.nfiles} of {r.capped_of} files. "
                                  if getattr(r, "capped_of", None) else "")
                                 + (r.note or ""))[:160].replace("\n", " ")])
    elapsed = time.monotonic() - started
    info = dict(info)
    info["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    md = [
        "# Benchmarks",
        "",
        f"Generated by `{params['command']}` on {info['date']} "
        f"({'quick mode' if params['quick'] else 'full mode'}, {params['runs']} run(s) per tool, "
        f"{elapsed / 60:.0f} minutes). The suite overwrites this file; see `bench/README.md` for "
        "what is measured and how.",
        "",
        "Every ratio below is taken between tools measured in this same run, round-robin, on a "
        "machine that other work shares; absolute numbers move from run to run, ratios much less.",
        "",
        "## Targets",
        "",
        f"{met} met, {not_met} not met, {len(trows) - met - not_met} reported without a target. "
        f"Product: {params['git']}; parts run: {', '.join(params['parts'])}"
        + (" (" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in params['part_seconds'].items())
           + ")" if params.get("part_seconds") else "") + ".",
        "",
        "### Issue 16: many small files, and a far link",
        "",
        ("Ours is the default (TLS 1.3, MD5, fsync before `stored`, `put -r`/`get -r` with the "
         "default `-P 4`); the rsync daemon is default rsync (`-a`, no fsync); sftp is "
         "OpenSSH's `put -r`/`get -r`. files/s and MB/s are medians of the ok runs, in the "
         "same rounds.\n\n" + md_table(th, irows)) if irows else
        "Not measured: neither `many` nor `far` ran (`bench/run --only many,far`).",
        "",
        *([*caps, ""] if caps else []),
        "### Other parts",
        "",
        md_table(th, orows) if orows else "None of the other parts ran.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- product: {params['git']}",
        "",
        "## Results",
        "",
        "Medians of the runs that succeeded and were verified byte for byte. MB/s is 10^6 "
        "bytes per second of file content (for the concurrent workload: all bytes put and got, "
        "over the wall time of the whole batch; files/s counts each put and each get). "
        "CPU s is user+sys: for ours, ftp-cli (from `/usr/bin/time`) + ftpd (from "
        "`/proc/PID/stat` just before it is stopped); for sftp/scp/rsync, the client + the "
        "daemon's reaped per-connection children; for socat, receiver + sender. Peak RSS is "
        "the largest over the runs: ftpd's VmHWM read from `/proc/PID/status` before it stops, "
        "ftp-cli's `/usr/bin/time %M` (the largest of all clients for the concurrent workload).",
        "",
        md_table(rh, rrows),
        "",
        *many_section(res, params, mh, mrows),
        "## TLS vs plaintext",
        "",
        "The same binaries over TLS 1.3 (the default) and with `--insecure-plaintext` on both "
        "sides, taking turns with the peers in the same rounds. CPU s/GiB: ftp-cli from "
        "`/usr/bin/time`, ftpd from `/proc/PID/stat`; \"TLS adds\" is the median over TLS "
        "minus the median in plaintext.",
        "",
        md_table(tlh, tlrows) if tlrows else "Not measured (the one-file workload did not run).",
        "",
        *clients_section(res),
        *charts_section(path, params),
        "## Every run",
        "",
        md_table(per_run_h, per_run),
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in NOTES],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))
    raw = {"machine": info, "params": params,
           "runs": {k: {t: [r.as_dict() for r in rs] for t, rs in v.items()}
                    for k, v in res.runs.items()}}
    (Path(params["repo"]) / "target" / "bench-last.json").write_text(json.dumps(raw, indent=1))
    log(f"wrote {path} and target/bench-last.json")
    return not_met


MANY_LABEL = {OURS: "ours (TLS)", OURS_PT: "ours --insecure-plaintext",
              OURS_NOFSYNC: "ours (TLS), ftpd --no-fsync", "rsync": "rsync daemon",
              "sftp": "sftp"}


def many_rows(res):
    """One row per `many` case, direction and tool: files/s, the ratios to the peers, CPU
    per file on each side."""
    header = ["tree", "direction", "tool", "ok runs", "files/s", "vs rsync daemon", "vs sftp",
              "client CPU ms/file", "server CPU ms/file", "both, ms/file", "note"]
    rows = []
    med = res.median
    for count, size in many_cases_run(res):
        for kind in ("put", "get"):
            key = many_key(kind, count, size)
            rsync, sftp = med(key, "rsync", "fps"), med(key, "sftp", "fps")
            for tool in res.tools.get(key, []):
                good = res.good(key, tool)
                fps = med(key, tool, "fps")
                n = good[0].nfiles if good else None
                ms = lambda attr: f2(med(key, tool, attr) / n * 1000, 3) if n else "—"
                failed = [r for r in res.runs[key][tool] if not r.ok]
                note = "; ".join(x for x in (
                    capped(res, key, tool).replace(f"{tool} moved", "moved"),
                    f"{len(failed)} failed: {failed[0].note[:60]}" if failed else "") if x)
                rows.append([f"{count:,} x {fmt_bytes(size)}", f"{kind} -r",
                             MANY_LABEL.get(tool, tool),
                             f"{len(good)}/{len(res.runs[key][tool])}", f2(fps, 1),
                             f2(ratio(fps, rsync), 2, "x"), f2(ratio(fps, sftp), 2, "x"),
                             ms("cli_cpu"), ms("srv_cpu"), ms("cpu"), note or "—"])
    return header, rows


def caps_lines(res, params):
    """What was capped or stopped, in words (empty when neither part ran)."""
    lines = []
    for part in ("many", "far"):
        p = params.get(part)
        if not p:
            continue
        for c in p.get("caps", []):
            title = next((t for k, t, _ in res.workloads if k == c["key"]), c["key"])
            lines.append(f"- capped: {c['tool']} in \"{title}\" moved only the first "
                         f"{c['moved']:,} of the {c['of']:,} files ({c['why']}); its files/s "
                         "and CPU per file are of those.")
        if part == "many" and not p.get("caps"):
            lines.append(f"- many: nothing was capped (time cap {p['cap_s']:.0f} s a run for the "
                         "large cases, predicted from each peer's files/s on the small ones).")
    for key, _, _ in res.workloads:
        if not key.startswith(("many-", "far-")):
            continue
        for tool, rs in res.runs[key].items():
            for r in rs:
                if r.note.startswith("timed out"):
                    lines.append(f"- stopped: {tool} in {key}: {r.note}; not counted.")
    if params.get("many"):
        m = params["many"]
        if m["ftpd_no_fsync"]:
            lines.append("- `ours --no-fsync`: this ftpd has `--no-fsync`, so ours also ran with "
                         "it (uploads not fsync'd before `stored`), reported beside the default"
                         + ("; ftp-cli has one too, so the gets ran with it on both sides."
                            if m["cli_no_fsync"] else "; ftp-cli has none, so only the puts."))
        else:
            lines.append("- `ours --no-fsync` not run: this ftpd's `--help` lists no "
                         "`--no-fsync`.")
    return lines


def many_section(res, params, header, rows):
    if not rows:
        return []
    m = params.get("many") or {}
    cases = ", ".join(f"{c:,} x {fmt_bytes(sz)} ({r} run{'s' if r > 1 else ''})"
                      for c, sz, r in m.get("cases", []))
    return ["## Many small files (issue 16)", "",
            f"`put -r` and `get -r` of trees of {cases}, on loopback, every tool in turn in "
            "each round (each round starting with the next tool). Ours: ftpd started afresh "
            "for each run, TLS 1.3 pinning its key (the default), the same with "
            "`--insecure-plaintext` on both sides, and, when ftpd has it, with ftpd "
            "`--no-fsync`. CPU per file is user+sys seconds over the files moved: client = "
            "ftp-cli / the rsync client / sftp and its ssh (`/usr/bin/time`, children "
            "included); server = ftpd (`/proc/PID/stat`) / the rsync daemon's and sshd's "
            "per-connection processes, sftp-server included (how much the daemon's reaped "
            "children grew). A capped run moved a prefix of the tree (see Targets); "
            f"every run has a time cap of {m.get('timeout_s', 0):.0f} s.", "",
            md_table(header, rows), ""]


def clients_section(res):
    keys = [k for k, _, _ in res.workloads if k.startswith("clients-")]
    if not keys:
        return []
    header = ["clients", "ok runs", "total MB/s", "files/s", "failed or differing clients",
              "p50 s per client", "p99 s per client", "ftpd peak RSS MiB", "ftpd peak fds",
              "ftpd CPU s"]
    rows = []
    for k in keys:
        rs = res.runs[k].get(OURS, [])
        if not rs:
            continue
        ok = [r for r in rs if r.ok] or rs
        med = lambda a: statistics.median(getattr(r, a) for r in ok
                                          if getattr(r, a, None) is not None) \
            if any(getattr(r, a, None) is not None for r in ok) else None
        rows.append([rs[0].clients, f"{len([r for r in rs if r.ok])}/{len(rs)}", f2(med("mbps"), 1),
                     f2(med("fps"), 1), sum(r.failures for r in rs), f2(med("p50")),
                     f2(med("p99")), mib(max(r.srv_rss for r in rs)),
                     max(getattr(r, "peak_fds", 0) for r in rs), f2(med("srv_cpu"))])
    return ["## Concurrency sweep", "",
            "N ftp-cli processes started at once (as fast as the driver spawns them), each "
            "connecting over TLS, putting its own 1 MiB file and getting it back. Time per "
            "client is the process's elapsed time (`/usr/bin/time %e`) of the clients that "
            "succeeded. ftpd's connection caps are raised to 2N for each N "
            "(`--max-connections`, `--max-connections-per-ip`, `--max-unauthenticated`, "
            "`--max-unauthenticated-per-range`) and bench/run raises `ulimit -n` to 20000, as an "
            "admin would for that load; peak fds are sampled every 20 ms from `/proc/PID/fd`. "
            "Medians of the ok runs (of all runs if none was ok); failures, RSS and fds from "
            "every run.", "", md_table(header, rows), ""]


def charts_section(path, params):
    """Links to the charts bench/run draws from this run's JSON (bench/charts.py)."""
    charts = [("many", "many.svg", "many small files: files/s of put -r and get -r"),
              ("many", "many-cpu.svg", "many small files: CPU ms per file, client and server"),
              ("sizes", "sizes-mbps.svg", "MB/s against file size"),
              ("sizes", "sizes-files.svg", "files/s against file size"),
              ("sizes", "cpu.svg", "CPU seconds per GiB, client and server, per tool"),
              ("clients", "clients.svg", "the concurrency sweep"),
              ("far", "far.svg", "through the delay relay")]
    if not params.get("charts"):
        return []
    # This run's charts (drawn after this report), and those an earlier run of other parts
    # left in the charts directory, so that a run of the default parts still links them.
    here = [(f, t) for part, f, t in charts if part in params["parts"]]
    earlier = [(f, t) for part, f, t in charts if part not in params["parts"]
               and (Path(params["charts"]) / f).exists()]
    shown = here + earlier
    if not shown:
        return []
    rel = os.path.relpath(params["charts"], path.resolve().parent)
    whence = []
    if here:
        whence.append(f"from this run: {', '.join(f for f, _ in here)}")
    if earlier:
        whence.append(f"from an earlier run of other parts (its report and JSON are in `{rel}/`): "
                      f"{', '.join(f for f, _ in earlier)}")
    return ["## Charts", "", "Drawn by `bench/charts.py` (gnuplot) from the JSON of a run, "
            "which is kept beside them; " + "; ".join(whence) + ".", "",
            *[f"- [{t}]({rel}/{f})" for f, t in shown], "",
            *[f"![{t}]({rel}/{f})" for f, t in shown], ""]


NOTES = [
    "Data is random (incompressible), lives on the same disk as the repository (not tmpfs), "
    "and is read once before the timed runs so that every tool reads it from the page cache. "
    "`sync` runs (untimed) before each timed run so that no run pays for another's writeback.",
    "ftpd and ftp-cli fsync every file they complete (uploads before they become visible, "
    "downloads before the rename); sftp, scp, rsync and socat do not, so ours pays for the "
    "writeback of what it writes inside its timed run, and they do not.",
    "A get is of a file that was uploaded with ftp-cli (untimed, before the runs), as in real "
    "use: ftpd then sends the chunk digests recorded at upload instead of hashing the file again. "
    "That upload used MD5, so `ours --digest blake3` gets make ftpd hash the file with BLAKE3.",
    "Ours writes uploads (ftpd) and downloads (ftp-cli) with O_DIRECT, past the page cache; "
    "the peers write through it. On this VM every freshly allocated page-cache page costs a "
    "host fault (free memory is reported to the host), about 2.5 s of CPU per GiB written, "
    "which lands on whoever writes new data (measured with dd: 2.8 s for a first 1 GiB write, 0.3 s for one that reuses just-freed pages).",
    "`ours --digest blake3` is the same client and daemon with BLAKE3 as the transfer digest "
    "(negotiated in hello); the default, and the row the targets are judged on, is MD5.",
    "Ours runs over TLS 1.3 (the default; ftp-cli pins the daemon's key with `--fingerprint`, "
    "read from ftpd's start-up log). The one-file rows `ours --insecure-plaintext` and `ours "
    "plaintext blake3` are the same with `--insecure-plaintext` on both sides, run next to "
    "their TLS twins in the same rounds; the TLS targets compare those pairs. sftp and scp "
    "encrypt too (AES-128-GCM).",
    "ftpd is started afresh for each run of ours (an upload's root and ftpd's state for it are "
    "removed between runs), with default settings except the connection "
    "caps (`--max-connections-per-ip 512`, `--max-connections 1024`, "
    "`--max-unauthenticated 1024`, `--max-unauthenticated-per-range 512`).",
    f"sftp and scp use a private sshd on 127.0.0.1 with cipher {CIPHER}; this OpenSSH's scp "
    "speaks the SFTP protocol by default, so scp and sftp differ mostly by client. rsync "
    "talks to a private `rsync --daemon` (rsync://, no ssh); `rsync md5` adds "
    "`--checksum-choice=md5`, plain rsync uses its default (xxh128 on this build). socat is "
    "file -> TCP -> file with 128 KiB buffers: the plain copy that the bound uses.",
    "The `far` part runs every tool through `bench/delay_relay.py`, a user-space relay on "
    f"loopback that holds every byte {FAR_DELAY_MS} ms in each direction ({2 * FAR_DELAY_MS} ms "
    "round trip) without limiting throughput otherwise; ours goes through a fresh relay in front "
    "of each fresh ftpd, sftp and rsync through one relay each for the whole part. What it does "
    "not model: the relay acknowledges bytes as soon as it reads them, so TCP's window (and slow "
    "start, and any loss) never waits on the far side: it flatters streaming, for every tool "
    "alike. It is honest about round trips: a request that waits for its reply pays the full "
    "round trip. The relay's own CPU (Python) is counted for no one.",
    "The bound for a put is 1 / (2/md5sum + 1/copy): the time to hash the file twice (sender and "
    "receiver) plus copy it once, with nothing overlapped; a pipelined put can beat it.",
]


# Every part, in the order they run; the default set is what `bench/run` without --only
# runs: the targets of the one-file, concurrency and memory workloads, and issue 16's
# (`many`, `far`). `tree` (1000 x 64 KiB against scp and rsync md5 as well) is covered by
# `many` and runs only when asked for; `sizes` and `clients` take another 10-15 minutes.
ALL_PARTS = ("one", "tree", "conc", "huge", "many", "sizes", "clients", "far")
DEFAULT_PARTS = ("one", "conc", "huge", "many", "far")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--only", default=",".join(DEFAULT_PARTS))
    ap.add_argument("--cap", type=float,
                    help="time cap in seconds per run for the large `many` cases (default 60, "
                         "20 with --quick): a peer predicted to take longer moves a prefix")
    ap.add_argument("--command", default="bench/run")
    ap.add_argument("--charts", help="where bench/run draws the charts (for the report's links)")
    args = ap.parse_args()

    started = time.monotonic()
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    big = 256 * MiB if quick else 1 * GiB
    huge = 512 * MiB if quick else 4 * GiB
    nsmall = 200 if quick else 1000
    small = 64 * KiB
    nclients = 50 if quick else 200
    conc_size = 1 * MiB
    # The size sweep: (file size, how many files), a few seconds of work each for sftp.
    sizes = [(4 * KiB, 1000), (64 * KiB, 500), (1 * MiB, 100), (16 * MiB, 16), (256 * MiB, 2),
             (1 * GiB, 1)]
    if quick:
        sizes = [(4 * KiB, 200), (64 * KiB, 100), (1 * MiB, 20), (16 * MiB, 4), (256 * MiB, 1)]
    client_counts = [1, 10, 50] if quick else [1, 10, 100, 500, 1000]
    far_n = 100 if quick else 1000
    far_big = 64 * MiB if quick else 256 * MiB
    # sftp through the relay moves this many of the far tree's files (about 0.2 s each).
    far_sftp = 30 if quick else 100
    far_timeout = 300 if quick else 600
    # `many` (issue 16): (files, size, large). The small cases take `runs` rounds, the large
    # ones one round, with the peers capped at `many_cap` seconds a run (see bench_many).
    many_cases = [(1000, 64 * KiB, False), (1000, 4 * KiB, False),
                  (10000, 64 * KiB, True), (10000, 4 * KiB, True)]
    if quick:
        many_cases = [(c // 10, sz, large) for c, sz, large in many_cases]
    many_cap = args.cap if args.cap is not None else (20.0 if quick else 60.0)
    many_timeout = 120 if quick else 300
    only = set(args.only.split(","))
    unknown = only - set(ALL_PARTS)
    if unknown:
        raise SystemExit(f"bench.py: unknown part(s) {', '.join(sorted(unknown))}")

    env = Env(args)
    info = machine()
    git = subprocess.run(["git", "-C", args.repo, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    params = {"quick": quick, "runs": runs, "command": args.command, "repo": args.repo,
              "git": f"commit {git}", "big": big, "huge": huge, "nsmall": nsmall,
              "nclients": nclients, "parts": sorted(only), "charts": args.charts,
              "sizes": sizes if "sizes" in only else [],
              "client_counts": client_counts if "clients" in only else [],
              "far": {"nfiles": far_n, "fsize": small, "big": far_big,
                      "delay_ms_each_way": FAR_DELAY_MS, "sftp_files": far_sftp,
                      "timeout_s": far_timeout, "caps": []} if "far" in only else None,
              "many": {"cases": [[c, sz, 1 if large else runs] for c, sz, large in many_cases],
                       "tools": [t for t in MANY_TOOLS
                                 if t != OURS_NOFSYNC or env.ftpd_no_fsync],
                       "ftpd_no_fsync": env.ftpd_no_fsync, "cli_no_fsync": env.cli_no_fsync,
                       "cap_s": many_cap, "timeout_s": many_timeout,
                       "caps": []} if "many" in only else None,
              "part_seconds": {}}
    res = Results()
    src = env.work / "src"
    try:
        log(f"work dir {env.work}; making data")
        if "one" in only:
            make_random(src / "big.bin", big)
        if "tree" in only:
            for i in range(nsmall):
                make_random(src / "small" / f"f{i:04}.bin", small)
        if "conc" in only:
            for i in range(nclients):
                make_random(src / "conc" / f"c{i:03}.bin", conc_size)
        if "huge" in only:
            make_random(src / "huge.bin", huge)
        if "sizes" in only:
            for size, count in sizes:
                for i in range(count):
                    make_random(src / f"sz-{size}" / f"f{i:04}.bin", size)
        if "clients" in only:
            for i in range(max(client_counts)):
                make_random(src / "clients" / f"c{i:04}.bin", conc_size)
        if "far" in only:
            for i in range(far_n):
                make_random(src / "far-tree" / f"f{i:04}.bin", small)
            make_random(src / "far-big.bin", far_big)
        if "many" in only:
            for count, size, _ in many_cases:
                for i in range(count):
                    make_random(src / many_dir(count, size) / f"f{i:05}.bin", size)
        sh("sync")

        # What the gets read: uploaded with ftp-cli, as in real use (digests recorded).
        served = fresh_dir(env.work / "served")
        setup = []
        if "one" in only:
            setup.append(f"put {src / 'big.bin'} big.bin")
        if "tree" in only:
            setup.append(f"put -r {src / 'small'} small")
        if "sizes" in only:
            setup += [f"put -r {src / f'sz-{size}'} sz-{size}" for size, _ in sizes]
        if "far" in only:
            setup += [f"put -r {src / 'far-tree'} far-tree", f"put {src / 'far-big.bin'} far-big.bin"]
        if "many" in only:
            setup += [f"put -r {src / many_dir(c, sz)} {many_dir(c, sz)}" for c, sz, _ in many_cases]
        if setup:
            d = env.start_ftpd(served)
            try:
                t = run_timed(env, env.cli_argv(d, "; ".join(setup)), tag="setup")
            finally:
                d.stop()
            if t.rc != 0:
                raise RuntimeError(f"setup upload failed: {t.output()}")

        if only & {"one", "tree", "sizes", "far", "many"}:
            env.start_sshd()
            env.start_rsyncd()
            log(f"sshd on 127.0.0.1:{env.ssh_port}, rsync daemon on 127.0.0.1:{env.rsync_port}")

        def part(name, fn):
            if name in only:
                t0 = time.monotonic()
                out = fn()
                params["part_seconds"][name] = round(time.monotonic() - t0)
                log(f"part {name} took {(time.monotonic() - t0) / 60:.1f} minutes")
                return out

        part("one", lambda: bench_one_file(env, res, runs, big, src / "big.bin", "big.bin"))
        part("tree", lambda: bench_tree(env, res, runs, nsmall, small, src / "small"))
        part("conc", lambda: bench_concurrent(env, res, runs, nclients, conc_size, src / "conc"))
        part("huge", lambda: bench_huge(env, res, runs, huge, src / "huge.bin"))
        part("many", lambda: params["many"]["caps"].extend(
            bench_many(env, res, runs, many_cases, src, many_cap, many_timeout)))
        part("sizes", lambda: bench_sizes(env, res, runs, sizes, src))
        part("clients", lambda: bench_clients(env, res, runs, client_counts, conc_size,
                                              src / "clients"))
        part("far", lambda: params["far"]["caps"].extend(
            bench_far(env, res, runs, far_n, small, far_big, src, far_sftp, far_timeout)))
    finally:
        env.stop_all()
    report(env, res, info, params, started, Path(args.out))
    failed = [(k, t) for k, v in res.runs.items() for t, rs in v.items() if any(not r.ok for r in rs)]
    if failed:
        log(f"some runs failed: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
