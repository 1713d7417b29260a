#!/usr/bin/env bash
# pg-baseline.sh: the PostgreSQL baseline of issue 10, "traditional RDS" on
# this machine, for comparison with `borealis bench sql`.
#
# It sets up PostgreSQL 15 (the Debian `postgresql` package) in a fresh
# directory: a primary and two streaming standbys (made with
# pg_basebackup -R, application_name s1 and s2) on 127.0.0.1, three ports
# from --port (default 5440), with synchronous_standby_names = 'ANY 1 (s1, s2)',
# synchronous_commit = on and fsync on: every commit is on the primary's disk
# and on the disk of at least one standby before it is acknowledged. It then
# runs pgbench -M prepared with the one-row INSERT of `borealis bench sql`
# (table bench(k bigint primary key, v text), a unique key and a 100-character
# text per transaction) at each --clients level for --duration seconds, and
# prints per level: tx/s, p50/p99 latency (from pgbench's per-transaction log),
# CPU microseconds per transaction of the primary, the standbys, pgbench and in
# total (from /proc, children included), and bytes written per transaction
# by each server (and to the disk's device, machine-wide). --json prints one JSON object instead of the
# table. Progress goes to stderr. All three servers are stopped at the end,
# also on failure or Ctrl-C, and the directory is removed unless --keep.
#
# It is kept out of CI: it needs PostgreSQL installed, takes minutes, and its
# figures depend on the machine. Nothing (go test, any workflow) runs it; run
# it by hand: scripts/pg-baseline.sh --json
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
port=5440
dir=
keep=0
clients=1,8,32,64
duration=15
json=0

usage() {
	cat <<EOF
usage: $0 [--port P] [--dir D] [--keep] [--clients 1,8,32,64] [--duration S] [--json]

  --port P        the primary listens on 127.0.0.1:P, the standbys s1 and s2 on
                  P+1 and P+2 (default 5440)
  --dir D         work in D, which must be new or empty (default: a fresh
                  mktemp directory); removed at the end unless --keep
  --keep          keep the directory (data directories, server logs, pgbench
                  logs); the servers are stopped all the same
  --clients LIST  the concurrency levels, comma-separated (default 1,8,32,64)
  --duration S    seconds per level (default 15)
  --json          print one JSON object instead of the table
EOF
}

log() { echo "pg-baseline: $*" >&2; }
die() {
	echo "pg-baseline: $*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--port) port=${2:?--port needs a value}; shift 2 ;;
	--port=*) port=${1#*=}; shift ;;
	--dir) dir=${2:?--dir needs a value}; shift 2 ;;
	--dir=*) dir=${1#*=}; shift ;;
	--keep) keep=1; shift ;;
	--clients) clients=${2:?--clients needs a value}; shift 2 ;;
	--clients=*) clients=${1#*=}; shift ;;
	--duration) duration=${2:?--duration needs a value}; shift 2 ;;
	--duration=*) duration=${1#*=}; shift ;;
	--json) json=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1024 || port > 65533)); then
	die "--port $port: want a port number from 1024 to 65533"
fi
[[ $clients =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--clients $clients: want positive integers separated by commas, e.g. 1,8,32,64"
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "--duration $duration: want a positive number of seconds"

for b in postgres initdb pg_ctl pg_basebackup pgbench psql; do
	[[ -x $PGBIN/$b ]] || die "PostgreSQL 15 is not installed ($PGBIN/$b is missing): apt-get install postgresql"
done
command -v python3 >/dev/null || die "python3 is needed for the arithmetic: apt-get install python3"

# PostgreSQL refuses to run as root: as root, run the server binaries, psql
# and pgbench as the postgres user (the Debian package creates it).
run=()
if ((EUID == 0)); then
	id postgres >/dev/null 2>&1 || die "running as root, and there is no postgres user to run PostgreSQL as"
	run=(runuser -u postgres --)
fi
pg() { "${run[@]}" "$PGBIN/$1" "${@:2}"; }

p0=$port
p1=$((port + 1))
p2=$((port + 2))
for p in "$p0" "$p1" "$p2"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port $p on 127.0.0.1 is taken; choose other ports with --port"
	fi
done

if [[ -n $dir ]]; then
	if [[ -e $dir ]]; then
		[[ -d $dir && -z $(ls -A "$dir") ]] || die "--dir $dir: want a new or empty directory"
	else
		mkdir -p "$dir"
	fi
	dir=$(cd "$dir" && pwd)
else
	dir=$(mktemp -d "${TMPDIR:-/tmp}/pg-baseline.XXXXXX")
fi

# From here on, whatever happens, stop every server started and remove the
# directory (unless --keep).
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	for n in primary s1 s2; do
		if [[ -f $dir/$n/postmaster.pid ]]; then
			log "stopping $n"
			pg pg_ctl -D "$dir/$n" -m fast -w -t 60 stop >/dev/null 2>&1 ||
				pg pg_ctl -D "$dir/$n" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
				log "could not stop $n (postmaster pid $(head -n1 "$dir/$n/postmaster.pid"))"
		fi
	done
	if ((keep)); then
		log "kept $dir"
	else
		cd / && rm -rf "$dir"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((EUID == 0)); then
	chown postgres: "$dir"
	"${run[@]}" test -w "$dir" -a -x "$dir" ||
		die "the postgres user cannot write $dir (a parent directory is closed to it); choose --dir elsewhere, e.g. under /tmp"
fi
if [[ $(stat -f -c %T "$dir") == tmpfs ]]; then
	log "warning: $dir is on tmpfs, where fsync costs nothing: the figures are no baseline; choose --dir on a disk"
fi
# The postgres user's working directory must be one it can enter.
cd "$dir"
log "working in $dir"

maxc=$(tr , '\n' <<<"$clients" | sort -n | tail -n1)
psql0() { pg psql -X -h 127.0.0.1 -p "$p0" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

log "initdb (PostgreSQL: $("$PGBIN/postgres" --version))"
pg initdb -D "$dir/primary" -U postgres --auth=trust --locale=C -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 ||
	die "initdb failed: $(tail -n5 "$dir/initdb.log")"
cat >>"$dir/primary/postgresql.conf" <<EOF

# pg-baseline.sh
listen_addresses = '127.0.0.1'
port = $p0
unix_socket_directories = ''    # TCP on loopback only, as a client of RDS would
max_connections = $((maxc > 80 ? maxc + 20 : 100))
wal_level = replica             # the defaults, stated: WAL to the standbys,
fsync = on                      # fsync'd,
full_page_writes = on
synchronous_commit = on         # and a commit waits for the quorum below
synchronous_standby_names = 'ANY 1 (s1, s2)'
EOF

start() { # name
	pg pg_ctl -D "$dir/$1" -l "$dir/$1.log" -w -t 60 start >/dev/null ||
		die "$1 did not start: $(tail -n5 "$dir/$1.log")"
}
log "starting the primary on 127.0.0.1:$p0"
start primary

for s in s1 s2; do
	sp=$p1
	[[ $s == s2 ]] && sp=$p2
	log "pg_basebackup -R: standby $s on 127.0.0.1:$sp"
	pg pg_basebackup -D "$dir/$s" -R -X stream -c fast \
		-d "host=127.0.0.1 port=$p0 user=postgres application_name=$s" >"$dir/$s.basebackup.log" 2>&1 ||
		die "pg_basebackup for $s failed: $(tail -n5 "$dir/$s.basebackup.log")"
	grep -q "^primary_conninfo = .*application_name=$s" "$dir/$s/postgresql.auto.conf" ||
		die "pg_basebackup -R wrote no application_name=$s into $dir/$s/postgresql.auto.conf"
	printf '\n# pg-baseline.sh: standby %s\nport = %s\n' "$s" "$sp" >>"$dir/$s/postgresql.conf"
	start "$s"
done

# pg_stat_replication must show both standbys streaming, in the quorum.
log "waiting for s1 and s2 to stream, in the quorum"
want=$'s1|streaming|quorum\ns2|streaming|quorum'
got=
for _ in $(seq 300); do
	got=$(psql0 -c "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1")
	[[ $got == "$want" ]] && break
	sleep 0.1
done
[[ $got == "$want" ]] ||
	die "after 30 s pg_stat_replication shows (application_name|state|sync_state) [${got//$'\n'/, }], want [${want//$'\n'/, }]; see $dir/*.log (--keep keeps them)"
for s in s1 s2; do
	sp=$p1
	[[ $s == s2 ]] && sp=$p2
	st=$(pg psql -X -h 127.0.0.1 -p "$sp" -U postgres -d postgres -qAt -c "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)")
	[[ $st == "t|streaming" ]] || die "standby $s: in recovery|walreceiver is [$st], want [t|streaming]"
done
# With both in the quorum, this commit already waits for one of them.
psql0 -c "CREATE TABLE bench(k bigint PRIMARY KEY, v text)"

# The custom script: one single-row INSERT per transaction, with the key and
# the value as parameters (-M prepared), like `borealis bench sql`'s
# "INSERT INTO bench(k, v) VALUES (?, ?)". Variables persist per client across
# transactions, so :n counts the client's transactions and the key, base + n *
# 100000 + client_id, is unique (base is distinct per level) and rising, like
# the benchmark's counter. v is one random 100-character alphanumeric string,
# the same for every row (at 100 bytes PostgreSQL compresses nothing, so its
# content does not matter).
cat >"$dir/insert.sql" <<'EOF'
\set n :n + 1
\set k :base + :n * 100000 + :client_id
INSERT INTO bench(k, v) VALUES (:k, :v);
EOF
mkdir "$dir/pgbench-logs"
((EUID == 0)) && chown postgres: "$dir/pgbench-logs"

# The levels, the sampling and the arithmetic, in Python.
python3 - "$dir" "$PGBIN" "$p0" "$clients" "$duration" "$json" "${run[@]}" <<'PYEOF'
import glob, json, os, re, resource, secrets, signal, string, subprocess, sys, time

# Ctrl-C: no traceback; the shell's trap stops the servers.
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

d, pgbin, p0, clients, duration, as_json = sys.argv[1:7]
run = sys.argv[7:]  # runuser -u postgres -- as root, else nothing
clients = [int(c) for c in clients.split(",")]
duration = int(duration)
as_json = as_json == "1"
tick = os.sysconf("SC_CLK_TCK")  # getconf CLK_TCK
cores = os.cpu_count() or 1
servers = ["primary", "s1", "s2"]

def log(msg):
    print("pg-baseline: " + msg, file=sys.stderr, flush=True)

def psql(sql):
    return subprocess.run(run + [pgbin + "/psql", "-X", "-h", "127.0.0.1", "-p", p0, "-U", "postgres",
                                 "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()

def postmaster(name):
    with open(f"{d}/{name}/postmaster.pid") as f:
        return int(f.readline())

def procs(pm):
    """The postmaster and every process under it."""
    kids = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                s = f.read()
        except OSError:
            continue  # gone
        pid, ppid = int(st.split("/")[2]), int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [pm]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out

def sample(name):
    """(CPU seconds, wchar, write_bytes) of one server: utime+stime+cutime+
    cstime, and wchar and write_bytes of /proc/PID/io, summed over the
    postmaster and every process under it. The postmaster's cutime/cstime
    hold the CPU time of its children that exited (it reaps them at once);
    Linux also adds a reaped child's I/O counters to its parent's
    /proc/PID/io, so exited backends are counted in both.

    wchar is the bytes the server handed to write()/pwrite(): PostgreSQL
    sends to its sockets with send(), which wchar does not count, so here it
    is the bytes written to files: WAL, data pages, its log. That is what
    disk_bytes_per_txn reports. write_bytes, the bytes the kernel accounts as
    caused to be written to storage, is reported alongside
    (proc_write_bytes_per_txn) but is no measure on kernels whose page cache
    uses large folios (ext4 on Linux 6.16 and later): there dirtying one 4 KiB
    block accounts the whole folio, up to 2 MiB, so an 8 KiB WAL write and
    fdatasync per commit shows as hundreds of KiB of write_bytes while the
    device gets 8 KiB (measured on Linux 6.18)."""
    ticks = wchar = wbytes = 0
    for p in procs(postmaster(name)):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            with open(f"/proc/{p}/io") as f:
                io = f.read()
        except OSError:
            continue  # exited between the listing and now: in the postmaster's counters
        ticks += sum(int(x) for x in s[s.rindex(")") + 2:].split()[11:15])  # fields 14-17
        wchar += int(re.search(r"^wchar: (\d+)", io, re.M).group(1))
        wbytes += int(re.search(r"^write_bytes: (\d+)", io, re.M).group(1))
    return ticks / tick, wchar, wbytes

# The block device under the directory, for its sectors written: every
# write that reached it, the three servers', the file system's journal and
# anything else on the machine writing to the same device.
dev = os.stat(d).st_dev
devstat = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat"
if not os.path.exists(devstat):
    devstat = None
    log(f"no block device under {d}: device_bytes_per_txn will be null")

def device_bytes():
    if devstat is None:
        return 0
    with open(devstat) as f:
        return int(f.read().split()[6]) * 512  # sectors written, always of 512 bytes

def context_switches():
    """The machine's context switches since boot, as `borealis bench` counts them."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("ctxt "):
                return int(line.split()[1])
    return 0

def settle(name, n, timeout=5.0):
    """Wait until the server is down to n processes again: after a level,
    until pgbench's backends have exited and been reaped."""
    end = time.monotonic() + timeout
    while len(procs(postmaster(name))) > n and time.monotonic() < end:
        time.sleep(0.02)

def pct(v, p):  # as `borealis bench sql` takes them
    return v[min(len(v) - 1, len(v) * p // 100)]

value = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(100))

def pgbench(n, level, extra, prefix=None):
    # -j: one thread per core, at most one per client. pgbench's threads only
    # wait on sockets, but one thread for all clients would queue the
    # replies behind each other whenever it is descheduled (the servers use
    # the same cores); more threads than cores would only add switching.
    args = [pgbin + "/pgbench", "-h", "127.0.0.1", "-p", p0, "-U", "postgres", "-n", "-M", "prepared",
            "-c", str(n), "-j", str(min(n, cores)), "-f", f"{d}/insert.sql",
            "-D", "n=0", "-D", f"base={level * 10**13}", "-D", f"v={value}"] + extra
    if prefix:
        args += ["-l", "--log-prefix", prefix]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(run + args + ["postgres"], capture_output=True, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"pg-baseline: pgbench with {n} client(s) failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    # pgbench's rusage (all its threads, and runuser's few syscalls as root):
    # RUSAGE_CHILDREN covers every waited-for descendant, and runuser waits
    # for pgbench.
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return r.stdout, cpu

ver = psql("SHOW server_version")
sync_names = psql("SHOW synchronous_standby_names")
log("warm-up: 20 transactions")
pgbench(1, 0, ["-t", "20"])

levels = []
for i, n in enumerate(clients, 1):
    # Every level starts after a checkpoint: none falls inside a level
    # (checkpoint_timeout is 5 min, max_wal_size 1 GB), and each starts with
    # the same full-page-write state.
    psql("CHECKPOINT")
    base_procs = len(procs(postmaster("primary")))
    log(f"{n} client{'s' * (n != 1)} for {duration} s")
    before = {s: sample(s) for s in servers}
    dev0 = device_bytes()
    ctxt0 = context_switches()
    prefix = f"{d}/pgbench-logs/c{n}"
    out, pgbench_cpu = pgbench(n, i, ["-T", str(duration)], prefix)
    settle("primary", base_procs)
    after = {s: sample(s) for s in servers}
    dev1 = device_bytes()
    ctxt1 = context_switches()

    m = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not (m and tps):
        sys.exit(f"pg-baseline: cannot read pgbench's summary:\n{out}")
    if failed and int(failed.group(1)):
        sys.exit(f"pg-baseline: {failed.group(1)} transactions failed with {n} clients:\n{out}")
    txns = int(m.group(1))
    # The per-transaction log: client_id transaction_no time_us script_no
    # time_epoch time_us_in_second; one file per thread.
    lat = []
    for fn in glob.glob(prefix + ".*"):
        with open(fn) as f:
            lat += [int(line.split()[2]) for line in f]
    lat.sort()
    if len(lat) != txns or txns == 0:
        sys.exit(f"pg-baseline: {len(lat)} transactions in pgbench's logs, {txns} in its summary")

    cpu = {s: after[s][0] - before[s][0] for s in servers}
    disk = {s: after[s][1] - before[s][1] for s in servers}
    wbytes = {s: after[s][2] - before[s][2] for s in servers}
    us = lambda sec: round(sec * 1e6 / txns, 1)
    srv = cpu["primary"] + cpu["s1"] + cpu["s2"]
    levels.append({
        "clients": n,
        "txns": txns,
        "tps": round(float(tps.group(1)), 1),
        "p50_ms": round(pct(lat, 50) / 1000, 3),
        "p99_ms": round(pct(lat, 99) / 1000, 3),
        "cpu_us_per_txn": {
            "primary": us(cpu["primary"]),
            "standbys": us(cpu["s1"] + cpu["s2"]),
            "servers": us(srv),
            "pgbench": us(pgbench_cpu),
            "total": us(srv + pgbench_cpu),
        },
        "disk_bytes_per_txn": {
            "primary": round(disk["primary"] / txns),
            "standby_mean": round((disk["s1"] + disk["s2"]) / 2 / txns),
        },
        "proc_write_bytes_per_txn": {
            "primary": round(wbytes["primary"] / txns),
            "standby_mean": round((wbytes["s1"] + wbytes["s2"]) / 2 / txns),
        },
        "device_bytes_per_txn": round((dev1 - dev0) / txns) if devstat else None,
        "context_switches_per_txn": round((ctxt1 - ctxt0) / txns, 1),
    })

# Still both in the quorum, and every row everywhere.
rows = int(psql("SELECT count(*) FROM bench"))
want = 20 + sum(l["txns"] for l in levels)
if rows != want:
    log(f"warning: bench has {rows} rows, the runs committed {want}")
repl = psql("SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1")
if repl.split("\n") != ["s1|streaming|quorum", "s2|streaming|quorum"]:
    log(f"warning: after the levels pg_stat_replication shows {repl!r}")

rep = {
    "postgres_version": ver,
    "synchronous_standby_names": sync_names,
    "cores": cores,
    "duration_s_per_level": duration,
    "levels": levels,
}
if as_json:
    print(json.dumps(rep, indent=2))
    sys.exit(0)

print(f"PostgreSQL {ver}: a primary and 2 streaming standbys on loopback, "
      f"synchronous_standby_names = '{sync_names}', synchronous_commit = on, fsync = on; {cores} cores")
print(f"INSERT: one-row transactions (bigint key, 100-character text), pgbench -M prepared, {duration} s per level")
print("Per transaction: CPU µs (servers = primary + standbys, total = servers + pgbench); bytes written to files")
print("by the primary and by a standby (wchar); bytes written to the disk's device by everything (machine-wide);")
print("the machine's context switches (ctx sw)\n")
head = ["clients", "txn/s", "p50 ms", "p99 ms", "CPU µs primary", "standbys", "servers", "pgbench", "total",
        "written B primary", "standby", "device B", "ctx sw"]
rows = [[str(l["clients"]), f"{l['tps']:.0f}", f"{l['p50_ms']:.3f}", f"{l['p99_ms']:.3f}"] +
        [f"{l['cpu_us_per_txn'][k]:.1f}" for k in ("primary", "standbys", "servers", "pgbench", "total")] +
        [str(l["disk_bytes_per_txn"]["primary"]), str(l["disk_bytes_per_txn"]["standby_mean"]),
         "-" if l["device_bytes_per_txn"] is None else str(l["device_bytes_per_txn"]),
         f"{l['context_switches_per_txn']:.1f}"]
        for l in levels]
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))
PYEOF
