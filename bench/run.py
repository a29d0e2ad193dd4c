#!/usr/bin/env python3
"""klingd's benchmark suite: klingd against the official SDK's policy (sdk-baseline)
on the same workloads, both against segmind-sim over TLS with scaled time.

    bench/run.py [--only a,aw,b,c,d,e,e2,f,g,b-fixed,b-sliding,b-bucket] [--rounds N] [--scale 0.1]
                 [--json results.json]

Every figure comes from the emulator's statistics (requests by endpoint and
answer, when each request completed and when a client first saw it) or from
/proc, never from klingd's own counters. Detection delays are given in API
seconds (real seconds divided by the time scale), as the SDK's published
figures are.

Workloads:
  a  ample budget: 24 kling-o1 + 8 video edits at once, no rate limit, fresh database
  aw the same, klingd starting from the database of an earlier batch (learned run times)
  b  scarce budget: the emulator allows 30 requests/min; 120 kling-o1 jobs
  c  scale: 100,000 jobs in flight (real time): memory; restart to READY and first poll
  d  intake: 10,000 job files dropped at once (klingd paused: intake only)
  e  raw client speed: about 2,000 status polls/s, no rate limit (real time): CPU per
     request, event-loop lag
  e2 the same against bench/second_server.py, a server with other writing habits
     (headers and body in separate writes, 64-byte TLS records, chunked bodies, a
     connection closed after every 100 answers), so the CPU figure is not one emulator's
  f  a large account, klingd's default settings: 1,000 requests/min, answers after 300 ms
     (API time), 3,400 kling-o1 jobs (10 ceiling-minutes)
  g  the same at 300 requests/min, answers after 1 s, 1,000 kling-o1 jobs
  b-fixed, b-sliding, b-bucket: workload b with klingd's default settings, against each
     way the emulator can count its budget (fixed minutes, a sliding minute, a token bucket)
Workloads f, g and b-*: throughput in steady state (between the 20th and the 80th
percentile of completions, as klingd saw them) and over the whole run, against the
ceiling of budget / 3 jobs per minute.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
KEY = "bench-key"


def build():
    subprocess.run([os.path.join(ROOT, "scripts/install-deps.sh")], check=True)
    subprocess.run(["cmake", "-S", ROOT, "-B", BUILD, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "--target", "klingd", "klingctl", "segmind-sim", "sdk-baseline"],
                   check=True, stdout=subprocess.DEVNULL)
    certs = os.path.join(BUILD, "test-certs")
    subprocess.run([os.path.join(ROOT, "scripts/make-test-certs.sh"), certs], check=True)
    return certs


def wait_for_port(port_file, tries):
    """The port a server wrote to port_file, waiting up to tries x 20 ms for it."""
    for _ in range(tries):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.02)
    return int(open(port_file).read())


class Sim:
    def __init__(self, work, certs, scale, args=()):
        self.port_file = os.path.join(work, "sim.port")
        self.certs = certs
        self.log = open(os.path.join(work, "sim.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "sim/segmind-sim"), "--tls-cert", f"{certs}/server.pem", "--tls-key",
             f"{certs}/server.key", "--port-file", self.port_file, "--time-scale", str(scale), "--api-key", KEY,
             *args], stdout=self.log, stderr=self.log)
        self.port = wait_for_port(self.port_file, 200)
        self.base = f"https://127.0.0.1:{self.port}"

    def stats(self, requests=True):
        ctx = ssl.create_default_context(cafile=f"{self.certs}/ca.pem")
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=60)
        c.request("GET", "/sim/stats" + ("" if requests else "?requests=0"))
        return json.loads(c.getresponse().read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class SecondServer(Sim):
    """bench/second_server.py: the same API with other writing habits (separate
    writes for headers and body, small TLS records, chunked bodies, a connection
    closed after every 100 answers)."""

    def __init__(self, work, certs):
        self.port_file = os.path.join(work, "second.port")
        self.certs = certs
        self.log = open(os.path.join(work, "second.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench/second_server.py"), "--tls-cert", f"{certs}/server.pem",
             "--tls-key", f"{certs}/server.key", "--port-file", self.port_file, "--api-key", KEY],
            stdout=self.log, stderr=self.log)
        self.port = wait_for_port(self.port_file, 500)  # Python starts slower
        self.base = f"https://127.0.0.1:{self.port}"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.unix_path)
        self.sock = s


class Klingd:
    """max_connections, max_in_flight: None leaves the key out (klingd's default)."""

    def __init__(self, work, sim, scale, rpm_api, max_in_flight=50, extra="", max_connections=8):
        self.work = work
        self.socket = os.path.join(work, "klingd.sock")
        os.makedirs(os.path.join(work, "spool/incoming"), exist_ok=True)
        s = scale
        self.config = os.path.join(work, "klingd.toml")
        with open(self.config, "w") as f:
            f.write(f"""log_level = "{os.environ.get('BENCH_LOG', 'notice')}"
[api]
base_url = "{sim.base}"
ca_file = "{sim.certs}/ca.pem"
requests_per_minute = {rpm_api / s}
{"" if max_connections is None else f"max_connections = {max_connections}"}
request_timeout_s = 30
[storage]
database = "{work}/klingd.db"
[spool]
directory = "{work}/spool"
[output]
directory = "{work}/output"
[control]
socket = "{self.socket}"
[jobs]
{"" if max_in_flight is None else f"max_in_flight = {max_in_flight}"}
result_retention_s = {3600 * s}
min_poll_interval_s = {1 * s}
max_poll_interval_s = {60 * s}
[models."kling-o1"]
expected_duration_s = {58 * s}
[models."kling-o1-video-to-video-edit"]
expected_duration_s = {223 * s}
{extra}
""")
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.work, "klingd.log"), "a")
        env = dict(os.environ, SEGMIND_API_KEY=KEY)
        self.proc = subprocess.Popen([os.path.join(BUILD, "daemon/klingd"), "--config", self.config], env=env,
                                     stdout=self.log, stderr=self.log)
        for _ in range(500):
            try:
                if self.api("GET", "/v1/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("klingd did not start; see " + self.work + "/klingd.log")

    def api(self, method, path):
        c = UnixHTTP(self.socket)
        c.request(method, path)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def stats(self):
        return self.api("GET", "/v1/stats")[1]

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def image_job(i, tag):
    return {"model": "kling-o1", "params": {"prompt": f"{tag}{i:06d} merge @Image1 into @Image2",
                                             "image_urls": ["https://in.example/a.png", "https://in.example/b.png"]}}


def video_job(i, tag):
    return {"model": "kling-o1-video-to-video-edit",
            "params": {"prompt": f"{tag}{i:06d} replace the background with @image1",
                       "video_url": "https://in.example/v.mp4", "image_urls": ["https://in.example/a.png"]}}


def api_requests(st):
    return sum(sum(st[e].values()) for e in ("submit", "status", "result"))


def answers(st, code):
    return sum(st[e].get(code, 0) for e in ("submit", "status", "result"))


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    f = int(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)


def delays_api_s(st, scale):
    out = []
    for r in st["requests"]:
        if r.get("completed_at_ms") and r.get("first_seen_at_ms") and r.get("outcome") == "COMPLETED":
            out.append((r["first_seen_at_ms"] - r["completed_at_ms"]) / 1000 / scale)
    return out


def run_baseline(work, sim, jobs, scale):
    path = os.path.join(work, "jobs.json")
    json.dump(jobs, open(path, "w"))
    env = dict(os.environ, SEGMIND_API_KEY=KEY)
    out = subprocess.run([os.path.join(BUILD, "bench/sdk-baseline"), "--base-url", sim.base, "--ca-file",
                          f"{sim.certs}/ca.pem", "--jobs", path, "--scale", str(scale)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run_klingd(work, sim, jobs, scale, rpm_api, timeout_s, database=None, prefix="job", klingd_args=None):
    """database: a klingd.db to start from (one that has learned from earlier jobs);
    klingd_args: Klingd's keyword arguments (max_connections, max_in_flight)."""
    k = Klingd(work, sim, scale, rpm_api, **(klingd_args or {}))
    if database:
        shutil.copy(database, os.path.join(work, "klingd.db"))
    k.start()
    before = k.stats()["jobs"]
    inc = os.path.join(work, "spool/incoming")
    for i, j in enumerate(jobs):
        name = f"{prefix}{i:06d}.json"
        with open(os.path.join(inc, "." + name), "w") as f:
            json.dump(j, f)
        os.rename(os.path.join(inc, "." + name), os.path.join(inc, name))
    deadline = time.time() + timeout_s
    ended = ("completed", "failed", "expired", "cancelled")
    done = {}
    while time.time() < deadline:
        jobs_by_state = k.stats()["jobs"]
        # a warm database holds the earlier batch: only this batch's jobs count
        done = {s: jobs_by_state[s] - before.get(s, 0) for s in ended}
        if sum(done.values()) >= len(jobs):
            break
        time.sleep(0.2)
    k.stop()
    return done


def workload_a(work, certs, scale, warm=False):
    """warm: klingd starts from the database of an earlier batch of the same workload
    (its duration model has learned), as a daemon that has been running would; else
    from a fresh database, planning the whole batch from the configured priors."""
    jobs = [image_job(i, "a") for i in range(24)] + [video_job(i, "v") for i in range(8)]
    database = None
    if warm:
        d = tempfile.mkdtemp(dir=work, prefix="a-warm-up-")
        sim = Sim(d, certs, scale)
        run_klingd(d, sim, jobs, scale, 6000, 600, prefix="warmup")
        sim.stop()
        database = os.path.join(d, "klingd.db")
    rows = {}
    # The same seed for both: each submission draws the same run time in both runs.
    seed = str(random.randrange(1, 2**63))
    for who in ("baseline", "klingd"):
        d = tempfile.mkdtemp(dir=work, prefix=f"a-{who}-")
        sim = Sim(d, certs, scale, ["--seed", seed])
        t0 = time.time()
        outcome = run_baseline(d, sim, jobs, scale) if who == "baseline" else run_klingd(d, sim, jobs, scale,
                                                                                          6000, 600, database)
        wall = time.time() - t0
        st = sim.stats()
        sim.stop()
        delays = delays_api_s(st, scale)
        if os.environ.get("BENCH_VERBOSE"):
            late = sorted((r for r in st["requests"] if r.get("first_seen_at_ms") and r.get("completed_at_ms")),
                          key=lambda r: r["completed_at_ms"] - r["first_seen_at_ms"])[:4]
            for r in late:
                run_s = (r["completed_at_ms"] - r["submitted_at_ms"]) / 1000 / scale
                late_s = (r["first_seen_at_ms"] - r["completed_at_ms"]) / 1000 / scale
                print(f"  {who} late: {r['model']} run {run_s:.1f} s, seen {late_s:.2f} s after, "
                      f"{r['status_polls']} polls", file=sys.stderr)
            runs = sorted(round((r["completed_at_ms"] - r["submitted_at_ms"]) / 1000 / scale, 1)
                          for r in st["requests"] if r.get("completed_at_ms"))
            print(f"  {who} run times (API s): {runs}", file=sys.stderr)
        completed = sum(1 for r in st["requests"] if r.get("outcome") == "COMPLETED")
        rows[who] = {"outcome": outcome, "completed": completed, "requests": api_requests(st),
                     "jobs": len(jobs), "requests_per_job": api_requests(st) / len(jobs),
                     "delay_p50": pct(delays, 50), "delay_p95": pct(delays, 95), "delays": delays,
                     "wall_s": wall}
    return rows


def workload_b(work, certs, scale, n=120):
    jobs = [image_job(i, "b") for i in range(n)]
    rows = {}
    seed = str(random.randrange(1, 2**63))
    for who in ("baseline", "klingd"):
        d = tempfile.mkdtemp(dir=work, prefix=f"b-{who}-")
        sim = Sim(d, certs, scale, ["--rpm", "30", "--seed", seed])
        outcome = run_baseline(d, sim, jobs, scale) if who == "baseline" else run_klingd(d, sim, jobs, scale, 30,
                                                                                          1800)
        st = sim.stats()
        sim.stop()
        reqs = st["requests"]
        if os.environ.get("BENCH_VERBOSE") and who == "klingd":
            by_order = sorted(reqs, key=lambda r: r["submitted_at_ms"])
            print("  klingd status polls per job, in submission order: "
                  + "".join(str(min(9, r["status_polls"])) for r in by_order), file=sys.stderr)
            print(f"  submits {sum(st['submit'].values())}, status {sum(st['status'].values())}, "
                  f"result {sum(st['result'].values())}", file=sys.stderr)
        seen = [r for r in reqs if r.get("outcome") == "COMPLETED" and r.get("first_seen_at_ms")]
        completed = len(seen)
        span_api_min = ((max(r["first_seen_at_ms"] for r in seen) - min(r["submitted_at_ms"] for r in reqs))
                        / 1000 / scale / 60) if seen else float("nan")
        rows[who] = {"outcome": outcome, "completed": completed, "completed_share": completed / n,
                     "requests": api_requests(st),
                     "requests_per_completed": api_requests(st) / completed if completed else float("inf"),
                     "throughput_per_api_min": completed / span_api_min if seen else 0.0,
                     "ceiling_per_api_min": 30 / 3, "share_429": answers(st, "429") / max(1, api_requests(st))}
    return rows


def workload_budget(work, certs, scale, rpm, latency_api_s, n, limiter="fixed", caps=None):
    """klingd with its default settings against an account of `rpm` requests per minute
    whose answers take latency_api_s (API seconds), counted by `limiter`. caps:
    (max_connections, max_in_flight) set in the configuration instead."""
    jobs = [image_job(i, "f") for i in range(n)]
    d = tempfile.mkdtemp(dir=work, prefix=f"budget-{rpm}-{limiter}-")
    args = ["--rpm", str(rpm), "--limiter", limiter, "--seed", str(random.randrange(1, 2**63))]
    if latency_api_s > 0:
        args += ["--slow-rate", "1", "--slow-s", str(latency_api_s * scale)]
    sim = Sim(d, certs, scale, args)
    ceiling = rpm / 3  # jobs per API minute
    t0 = time.time()
    if caps:
        k_args = {"max_connections": caps[0], "max_in_flight": caps[1]}
    else:
        k_args = {"max_connections": None, "max_in_flight": None}
    outcome = run_klingd(d, sim, jobs, scale, rpm, 60 + 3 * n / ceiling * 60 * scale, klingd_args=k_args)
    wall = time.time() - t0
    st = sim.stats()
    sim.stop()
    reqs = st["requests"]
    seen = sorted(r["first_seen_at_ms"] for r in reqs if r.get("outcome") == "COMPLETED" and r.get("first_seen_at_ms"))
    start = min(r["submitted_at_ms"] for r in reqs) if reqs else 0
    row = {"jobs": n, "completed": len(seen), "caps": caps, "rpm": rpm, "latency_api_s": latency_api_s, "limiter": limiter,
           "outcome": outcome, "ceiling_per_api_min": ceiling, "wall_s": wall,
           "requests": api_requests(st),
           "requests_per_completed": api_requests(st) / len(seen) if seen else float("inf"),
           "share_429": answers(st, "429") / max(1, api_requests(st)),
           "per_job": {e: sum(st[e].values()) / max(1, len(seen)) for e in ("submit", "status", "result")}}
    if len(seen) >= 10:
        whole_min = (seen[-1] - start) / 1000 / scale / 60
        i20, i80 = int(len(seen) * 0.2), int(len(seen) * 0.8)
        steady_min = (seen[i80] - seen[i20]) / 1000 / scale / 60
        row["whole_share"] = len(seen) / whole_min / ceiling
        row["steady_share"] = (i80 - i20) / steady_min / ceiling if steady_min > 0 else float("nan")
        lo, hi = seen[i20], seen[i80]
        mid = [r["status_polls"] for r in reqs if r.get("first_seen_at_ms") and lo <= r["first_seen_at_ms"] <= hi]
        last = [r["status_polls"] for r in reqs if r.get("first_seen_at_ms") and r["first_seen_at_ms"] > hi]
        row["status_per_job_steady"] = statistics.mean(mid) if mid else float("nan")
        row["status_per_job_last_20"] = statistics.mean(last) if last else float("nan")
    return {"klingd": row}


def never_ending(work, certs, prefix, n, change, second_server=False):
    """A sim whose jobs never finish (real time, no rate limit) and a klingd allowed n
    in flight, with one change (old, new) to its configuration text. second_server:
    bench/second_server.py instead of segmind-sim."""
    d = tempfile.mkdtemp(dir=work, prefix=prefix)
    sim = (SecondServer(d, certs) if second_server
           else Sim(d, certs, 1.0, ["--median", "kling-o1=10000000", "--queue-s", "0"]))
    k = Klingd(d, sim, 1.0, 1000000, max_in_flight=n)
    with open(k.config) as f:
        text = f.read().replace(*change)
    open(k.config, "w").write(text)
    return d, sim, k


def fill_in_flight(d, k, n, tag, timeout_s):
    """Starts klingd, drops n image jobs into its spool at once (staged, then renamed in)
    and waits until all are in flight; returns the seconds that took."""
    staging = os.path.join(d, "staging")
    os.makedirs(staging)
    for i in range(n):
        with open(os.path.join(staging, f"job{i:06d}.json"), "w") as f:
            json.dump(image_job(i, tag), f)
    k.start()
    inc = os.path.join(d, "spool/incoming")
    for name in os.listdir(staging):
        os.rename(os.path.join(staging, name), os.path.join(inc, name))
    t0 = time.time()
    while k.stats()["in_flight"] < n and time.time() - t0 < timeout_s:
        time.sleep(0.5)
    return time.time() - t0


def workload_c(work, certs, n=100000):
    """100,000 jobs in flight with long run times (real time, scale 1): klingd's
    resident memory, then a restart: time to READY and to the first poll."""
    # Polls far apart: with 100,000 requests in flight the budget goes to submits first.
    d, sim, k = never_ending(work, certs, "c-", n,
                             ("max_poll_interval_s = 60.0", "max_poll_interval_s = 1800"))
    fill_s = fill_in_flight(d, k, n, "c", 900)
    in_flight = k.stats()["in_flight"]
    time.sleep(5)
    rss = k.rss_kib()
    k.stop()
    polls_before = sum(sim.stats(False)["status"].values())
    t1 = time.time()
    k.start()  # returns once /v1/health answers (READY is sent at the same moment)
    ready_s = time.time() - t1
    while sum(sim.stats(False)["status"].values()) == polls_before and time.time() - t1 < 60:
        time.sleep(0.01)
    first_poll_s = time.time() - t1
    rss_after = k.rss_kib()
    k.stop()
    sim.stop()
    return {"klingd": {"jobs": n, "in_flight": in_flight, "fill_s": fill_s, "rss_mib": rss / 1024,
                       "restart_ready_s": ready_s, "restart_first_poll_s": first_poll_s,
                       "rss_after_restart_mib": rss_after / 1024}}


def workload_d(work, certs, scale, n=10000):
    d = tempfile.mkdtemp(dir=work, prefix="d-")
    sim = Sim(d, certs, scale)
    k = Klingd(d, sim, scale, 60)
    k.start()
    k.api("POST", "/v1/pause")
    staging = os.path.join(d, "staging")
    os.makedirs(staging)
    for i in range(n):
        with open(os.path.join(staging, f"job{i:06d}.json"), "w") as f:
            json.dump(image_job(i, "d"), f)
    inc = os.path.join(d, "spool/incoming")
    t0 = time.time()
    for name in os.listdir(staging):  # dropped "at once": renames into incoming/
        os.rename(os.path.join(staging, name), os.path.join(inc, name))
    dropped = time.time() - t0
    while True:
        pending = k.stats()["jobs"]["pending"]
        if pending >= n:
            break
        if time.time() - t0 > 300:
            break
        time.sleep(0.02)
    elapsed = time.time() - t0
    accepted = len(os.listdir(os.path.join(d, "spool/accepted")))
    k.stop()
    sim.stop()
    return {"klingd": {"files": n, "recorded": pending, "moved_to_accepted": accepted, "seconds": elapsed,
                       "drop_seconds": dropped, "files_per_s": pending / elapsed}}


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workload_e(work, certs, jobs=4000, window_s=20, second_server=False):
    """Raw client speed (real time): 4,000 requests in flight that never finish, a
    prior that says they should have, so each is polled every 1.98 x
    min_poll_interval_s (1 s): about 2,000 status polls per second over keep-alive
    TLS, no rate limit. CPU from /proc over a window, divided by the polls the sim
    answered in it; event-loop lag from the latency of /v1/health probes sent every
    10 ms meanwhile (answered by the same loop, so an upper bound of its lag)."""
    d, sim, k = never_ending(work, certs, "e2-" if second_server else "e-", jobs,
                             ("expected_duration_s = 58.0", "expected_duration_s = 1"), second_server)
    fill_in_flight(d, k, jobs, "e", 300)
    time.sleep(5)  # steady polling
    lat = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            a = time.perf_counter()
            k.api("GET", "/v1/health")
            lat.append((time.perf_counter() - a) * 1000)
            time.sleep(0.01)

    th = threading.Thread(target=probe)
    st0 = sim.stats(False)
    polls0 = sum(st0["status"].values())
    cpu0, w0 = cpu_seconds(k.proc.pid), time.time()
    th.start()
    if os.environ.get("BENCH_PERF"):  # a CPU profile of klingd over the window: perf report -i FILE
        subprocess.run(["perf", "record", "-g", "-p", str(k.proc.pid), "-o", os.environ["BENCH_PERF"], "--",
                        "sleep", str(window_s)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        time.sleep(window_s)
    st1 = sim.stats(False)
    polls1 = sum(st1["status"].values())
    cpu1, w1 = cpu_seconds(k.proc.pid), time.time()
    stop.set()
    th.join()
    rss = k.rss_kib()
    k.stop()
    sim.stop()
    polls = polls1 - polls0
    return {"klingd": {"jobs": jobs, "window_s": w1 - w0, "polls": polls, "polls_per_s": polls / (w1 - w0),
                       "cpu_s": cpu1 - cpu0, "cpu_us_per_request": (cpu1 - cpu0) / max(1, polls) * 1e6,
                       "cpu_share": (cpu1 - cpu0) / (w1 - w0), "probes": len(lat),
                       "lag_p50_ms": pct(lat, 50), "lag_p99_ms": pct(lat, 99), "lag_max_ms": max(lat),
                       "rss_mib": rss / 1024,
                       # less the connection of the second statistics request itself
                       "connections": st1["connections"] - st0["connections"] - 1 if "connections" in st1 else None}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="a,aw,b,c,d,e,e2,f,g,b-fixed,b-sliding,b-bucket")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=1, help="run each workload this many times")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--caps", help="CONNECTIONS,IN_FLIGHT: set these caps for f, g and b-* instead of "
                                   "klingd's defaults (4,50 were the defaults before they became automatic)")
    args = ap.parse_args()
    certs = build()
    work = tempfile.mkdtemp(prefix="klingd-bench-")
    results = {}
    caps = tuple(int(x) for x in args.caps.split(",")) if args.caps else None
    runs = {"a": lambda: workload_a(work, certs, args.scale),
            "aw": lambda: workload_a(work, certs, args.scale, warm=True),
            "b": lambda: workload_b(work, certs, args.scale),
            "c": lambda: workload_c(work, certs),
            "d": lambda: workload_d(work, certs, args.scale),
            "e": lambda: workload_e(work, certs),
            "e2": lambda: workload_e(work, certs, second_server=True),
            "f": lambda: workload_budget(work, certs, args.scale, 1000, 0.3, 3400, caps=caps),
            "g": lambda: workload_budget(work, certs, args.scale, 300, 1.0, 1000, caps=caps),
            "b-fixed": lambda: workload_budget(work, certs, args.scale, 30, 0, 120, "fixed", caps),
            "b-sliding": lambda: workload_budget(work, certs, args.scale, 30, 0, 120, "sliding", caps),
            "b-bucket": lambda: workload_budget(work, certs, args.scale, 30, 0, 120, "bucket", caps)}
    try:
        for w in args.only.split(","):
            results[w] = []
            for r in range(args.rounds):
                print(f"== workload {w}, round {r + 1} of {args.rounds} ...", file=sys.stderr, flush=True)
                results[w].append(runs[w]())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"scale {args.scale}; delays in API seconds; figures from segmind-sim's statistics")
    for w, title in (("a", "fresh database"), ("aw", "warm: the database of an earlier batch")):
        if w not in results:
            continue
        print(f"\n({w}) ample budget, 24 kling-o1 + 8 video edits; {title}")
        print(f"  {'round':8}{'baseline req/job':>18}{'klingd req/job':>16}{'ratio':>7}"
              f"{'baseline p50/p95 (s)':>22}{'klingd p50/p95 (s)':>20}")
        rounds = results[w]
        pooled = {who: {"requests": sum(r[who]["requests"] for r in rounds),
                        "jobs": sum(r[who]["jobs"] for r in rounds),
                        "delays": [d for r in rounds for d in r[who]["delays"]]} for who in ("baseline", "klingd")}
        for who in pooled:
            p = pooled[who]
            p.update(requests_per_job=p["requests"] / p["jobs"], delay_p50=pct(p["delays"], 50),
                     delay_p95=pct(p["delays"], 95))
        for i, r in enumerate(rounds + ([pooled] if len(rounds) > 1 else [])):
            b, k = r["baseline"], r["klingd"]
            label = str(i + 1) if i < len(rounds) else "all"
            print(f"  {label:8}{b['requests_per_job']:>18.2f}{k['requests_per_job']:>16.2f}"
                  f"{k['requests_per_job'] / b['requests_per_job']:>7.2f}"
                  f"{b['delay_p50']:>11.2f} /{b['delay_p95']:>5.2f}{k['delay_p50']:>13.2f} /{k['delay_p95']:>5.2f}")
        incomplete = [i + 1 for i, r in enumerate(rounds) if r["klingd"]["completed"] < r["klingd"]["jobs"]]
        if incomplete:
            print(f"  klingd did not complete every job in round(s) {incomplete}")
    for r in results.get("b", []):
        b, k = r["baseline"], r["klingd"]
        print("\n(b) scarce budget (30 requests/min), 120 kling-o1")
        print(f"  {'':28}{'baseline':>12}{'klingd':>12}")
        for key, label in (("completed_share", "jobs completed (share)"),
                           ("requests_per_completed", "API requests per completed"),
                           ("throughput_per_api_min", "completed per API minute"),
                           ("share_429", "share of 429 answers")):
            print(f"  {label:28}{b[key]:>12.3f}{k[key]:>12.3f}")
        print(f"  ceiling (budget / 3): {k['ceiling_per_api_min']:.1f} per API minute; klingd reaches "
              f"{k['throughput_per_api_min'] / k['ceiling_per_api_min']:.0%}")
        print(f"  baseline outcomes: {b['outcome']}")
    for c in (r["klingd"] for r in results.get("c", [])):
        print(f"\n(c) scale: {c['in_flight']} of {c['jobs']} jobs in flight after {c['fill_s']:.0f} s; resident memory "
              f"{c['rss_mib']:.0f} MiB; restart: READY after {c['restart_ready_s']:.2f} s, first poll after "
              f"{c['restart_first_poll_s']:.2f} s (memory then {c['rss_after_restart_mib']:.0f} MiB)")
    for d in (r["klingd"] for r in results.get("d", [])):
        print(f"\n(d) intake: {d['recorded']} of {d['files']} files recorded in {d['seconds']:.2f} s "
              f"= {d['files_per_s']:.0f} files/s ({d['moved_to_accepted']} moved to accepted/)")
    for w, e in ((w, r["klingd"]) for w in ("e", "e2") for r in results.get(w, [])):
        against = "segmind-sim" if w == "e" else "the second server (bench/second_server.py)"
        print(f"\n({w}) raw client speed against {against}: {e['polls_per_s']:.0f} status polls/s over TLS for "
              f"{e['window_s']:.0f} s; klingd CPU {e['cpu_us_per_request']:.1f} us per request "
              f"({e['cpu_share']:.0%} of a core); /v1/health latency p50 {e['lag_p50_ms']:.2f} ms, "
              f"p99 {e['lag_p99_ms']:.2f} ms, max {e['lag_max_ms']:.1f} ms ({e['probes']} probes)"
              + (f"; {e['connections']} new connections ({e['polls'] / max(1, e['connections']):.0f} polls each)"
                 if e.get("connections") is not None else ""))
    for w in ("f", "g", "b-fixed", "b-sliding", "b-bucket"):
        for r in (x["klingd"] for x in results.get(w, [])):
            settings = (f"max_connections = {r['caps'][0]}, max_in_flight = {r['caps'][1]}" if r.get("caps")
                        else "klingd's default settings")
            print(f"\n({w}) {r['rpm']} requests/min ({r['limiter']} limiter), answers after {r['latency_api_s']} s, "
                  f"{r['jobs']} kling-o1, {settings}")
            print(f"  completed {r['completed']} of {r['jobs']}; of the ceiling ({r['ceiling_per_api_min']:.0f}/API min): "
                  f"steady state {r.get('steady_share', float('nan')):.0%}, whole run {r.get('whole_share', float('nan')):.0%}; "
                  f"{r['requests_per_completed']:.2f} requests per job; 429: {r['share_429']:.2%}; {r['wall_s']:.0f} s")
            print("  per job: " + ", ".join(f"{v:.2f} {e}" for e, v in r["per_job"].items())
                  + f"; status polls per job in steady state {r.get('status_per_job_steady', float('nan')):.2f}, "
                  f"in the last 20% {r.get('status_per_job_last_20', float('nan')):.2f}")
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
