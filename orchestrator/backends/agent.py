# ruff: noqa: UP004, UP024, UP031, B905
"""nero's agent: the small program nero runs on a cluster's login node (or SSH host) to
do one request per round trip. nero is not installed there: this file's source is sent
on stdin with every call (`wire.BOOTSTRAP` reads and runs it), so it uses only the
standard library of Python >= 3.6 and knows nothing of workbooks or schedulers.
The scheduler commands it runs and the parsing of their output are nero's (slurm.py,
sge.py); the agent only runs what it is given and reads and writes files. The local
cluster runs the same operations in nero's own process (`wire.serve_in_process`).

stdin:  <n>\\n<this source> <m>\\n<zlib(JSON request)> <payload bytes: code archives>
stdout: NERO-AGENT/1 <header length> <blob length>\\n<JSON header><blobs>

Operations (request["op"]):
  hello      home, user, host, CPUs, free disk in the workdir, which tools exist, and
             the output of a few configuration commands (limits)
  submit     under the workdir's submit lock: unpack code archives (once per content
             hash), write run directories (each with its owner: project id and attempt;
             never one of another project's, or of a live job), run the submission commands
             (in parallel) or start detached processes, record each job id in its run
             directory at once
  poll       the scheduler's word on the live jobs (a listing of those jobs by id, then
             details for the jobs the listing lacks), then each run's status files and the bytes
             appended to its outputs since the given offsets, bounded per file and in
             total; and the metric files (TensorBoard event files, CSVs) below its run
             folder that the request's globs match, each from its given offset (nero
             decodes them: orchestrator/metric_files.py)
  adopt      under the submit lock: each run directory's job id / submission record,
             whether its job was handed over at all (`handed`, written just before the
             submit command runs or the process starts) and the scheduler's listing of
             job names (finding jobs after a crash)
  cancel     scheduler commands, or signals to detached process groups
  resources  CPUs, load, RAM, GPUs (nvidia-smi), free disk, and queue commands' output
  read       one output file of a run directory (`nero logs`): its last bytes, or the
             bytes from an offset, with its size and whether the job has ended
"""

import errno
import fcntl
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

__all__ = ["OPS", "SPAWNED", "Reply", "disk_free_mb", "main", "serve"]

MAGIC = b"NERO-AGENT/1"
# nero's folder and lock below a workdir, and a run folder's submission record (job name,
# array record, owner: project id and attempt): orchestrator/paths.py names them on nero's
# side; this file is shipped alone, so it repeats them
NERO_DIR = ".nero"
SUBMIT_LOCK = "submit.lock"
SUBMIT = "submit.json"
HANDED = "handed"  # in a run folder: its job was handed to the scheduler or started (adopt reads it)
# in the batches folder: the batch folders, newest last (adopt reads its last BATCH_INDEX_TAIL
# bytes to find a run that has no folder yet: its task writes it when it starts)
BATCH_INDEX = "index"
BATCH_INDEX_TAIL = 1 << 20
HOME = os.path.expanduser("~")
TICK = ".tick"  # in a run folder: a FIFO the job script reads with a timeout to wait


def _user():
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container's uid without a passwd entry)
        return str(os.getuid())


USER = _user()
STATUS_FILES = ("started", "exit_code", "heartbeat", "stopped")  # what a poll sends of each run's status files
OUTPUTS = ("stdout.log", "stderr.log", "metrics.jsonl", "resources.jsonl")
TAIL = 4096


class Reply(object):
    def __init__(self):
        self.header = {}
        self.blobs = []
        self.size = 0

    def blob(self, data):
        ref = [self.size, len(data)]
        self.blobs.append(data)
        self.size += len(data)
        return ref

    def write(self, out):
        head = json.dumps(self.header).encode("utf-8")
        out.write(MAGIC + b" %d %d\n" % (len(head), self.size))
        out.write(head)
        for b in self.blobs:
            out.write(b)
        out.flush()


def path(p):
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(HOME, p)


def subst(argv, **values):
    values.setdefault("user", USER)
    out = []
    for a in argv:
        for k, v in values.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def run(argv, cwd=None, timeout=120, env=None):
    try:
        p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, close_fds=True)
    except OSError as e:
        code = 127 if e.errno == errno.ENOENT else 126
        return {"rc": code, "out": b"", "err": "%s: %s" % (argv[0], e.strerror)}
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return {"rc": 124, "out": out, "err": "%s: timed out after %d s" % (argv[0], timeout)}
    return {"rc": p.returncode, "out": out, "err": err.decode("utf-8", "replace")[-2000:]}


def disk_free_mb(p):
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        st = os.statvfs(p or "/")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 1048576.0


def read_small(p, limit=4096, strip=True):
    try:
        with open(p, "rb") as f:
            text = f.read(limit).decode("utf-8", "replace")
            return text.strip() if strip else text
    except (IOError, OSError):
        return None


def read_status(p):
    """A status file the job script wrote (one write, ending with a line end): its text,
    or None while it is absent or not yet whole."""
    text = read_small(p, strip=False)
    return None if text is None or not text.endswith("\n") else text.strip()


def read_from(p, offset, limit):
    if limit <= 0:
        return b""
    try:
        with open(p, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except (IOError, OSError):
        return b""


def tail(p, size=TAIL):
    try:
        with open(p, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read()
    except (IOError, OSError):
        return b""


def umask_mode(full=0o666):
    """`full` less the umask (read from /proc where it can be, so threads never race on
    os.umask): the mode every file nero writes gets, as on the user's side (files.umask_mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return full & ~int(line.split()[1], 8)
    except (IOError, OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return full & ~mask


def write_atomic(p, data, executable=False):
    """Replace `p` with `data` (a new file under a temporary name, renamed over it), with the
    umask's mode (an executable one for a program)."""
    tmp = os.path.join(os.path.dirname(p), ".%s.tmp%d" % (os.path.basename(p), os.getpid()))
    try:
        os.unlink(tmp)  # a killed writer's: a new file gets the umask's mode
    except OSError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if executable else 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if not isinstance(data, bytes) else data)
    os.rename(tmp, p)


def process_alive(pid, run_dir):
    """A live (non-zombie) process whose working directory is run_dir. Another user's job
    (a project shared by a group) hides its working directory: then it is the run's when its
    owner is the owner of the run's pid file (its job script wrote that)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
        if state in (b"Z", b"X"):
            return False
        cwd = "/proc/%d/cwd" % pid
        try:
            os.readlink(cwd)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise
            return os.stat("/proc/%d" % pid).st_uid == os.stat(os.path.join(run_dir, "pid")).st_uid
        return os.path.realpath(cwd) == os.path.realpath(run_dir)
    except (IOError, OSError, ValueError):
        pass
    try:  # no /proc (not Linux): the process exists
        os.kill(pid, 0)
        return not os.path.exists("/proc/self")
    except OSError:
        return False


class Lock(object):
    """The workdir's submit lock: a submission and an adoption never overlap."""

    def __init__(self, workdir, wait=300):
        d = os.path.join(workdir, NERO_DIR)
        if not os.path.isdir(d):
            os.makedirs(d)
        self.f = open(os.path.join(d, SUBMIT_LOCK), "a")
        end = time.time() + wait
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (IOError, OSError):
                if time.time() > end:
                    raise RuntimeError("another nero holds %s/%s" % (d, SUBMIT_LOCK)) from None
                time.sleep(0.1)

    def release(self):
        self.f.close()


class Limited(object):
    """Exactly `size` bytes of a stream, for one code archive."""

    def __init__(self, f, size):
        self.f, self.left = f, size

    def read(self, n=-1):
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def drain(self):
        while self.read(1 << 20):
            pass


def unpack(stream, target):
    """Extract a tar.gz of plain files into `target` (atomically: complete or absent)."""
    tmp = "%s.tmp%d" % (target, os.getpid())
    plain, program = umask_mode(0o666), umask_mode(0o777)
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for m in tar:
            name = os.path.normpath(m.name)
            if name.startswith("..") or os.path.isabs(name) or not (m.isfile() or m.isdir()):
                continue
            dest = os.path.join(tmp, name)
            if m.isdir():
                if not os.path.isdir(dest):
                    os.makedirs(dest)
                continue
            parent = os.path.dirname(dest)
            if not os.path.isdir(parent):
                os.makedirs(parent)
            src = tar.extractfile(m)
            with open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(dest, program if m.mode & 0o111 else plain)
    if not os.path.isdir(tmp):
        os.makedirs(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another submission put it there first


def run_all(commands, reply, cache=None, cache_s=0):
    """Run configuration or queue commands one after the other; their outputs as blobs.
    With `cache` (a folder) and `cache_s`: a command that succeeded less than `cache_s`
    seconds ago is answered from its output kept there (the site's limits: `sacctmgr` asks
    slurmdbd, 0.2 s, in every nero command's first request)."""
    outputs = []
    for argv in commands:
        argv = subst(argv)
        keep = os.path.join(cache, "%08x.out" % (zlib.crc32(json.dumps(argv).encode("utf-8")) & 0xffffffff)) \
            if cache and cache_s > 0 else None
        r = None
        try:
            if keep and time.time() - os.path.getmtime(keep) < cache_s:
                with open(keep, "rb") as f:
                    r = {"rc": 0, "out": f.read(), "err": "", "cached": True}
        except (IOError, OSError):
            r = None
        if r is None:
            r = run(argv, timeout=60)
            if keep and r["rc"] == 0:
                try:
                    if not os.path.isdir(cache):
                        os.makedirs(cache)
                    write_atomic(keep, r["out"])
                except (IOError, OSError):
                    pass
        r["out"] = reply.blob(r["out"])
        outputs.append(r)
    return outputs


# ------------------------------------------------------------------------- operations
def op_hello(req, inp, reply):
    workdir = path(req.get("workdir") or "nero")
    for d in (workdir, os.path.join(workdir, NERO_DIR)):
        if not os.path.isdir(d):
            os.makedirs(d)
    outputs = run_all(req.get("commands", []), reply, os.path.join(workdir, NERO_DIR, "hello"),
                      float(req.get("cache_s", 0)))
    reply.header.update({
        "home": HOME, "user": USER, "host": socket.gethostname(), "cpus": os.cpu_count(),
        "workdir": workdir, "disk_free_mb": disk_free_mb(workdir),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "tools": dict((t, shutil.which(t)) for t in req.get("tools", [])),
        "outputs": outputs,
    })


def _listing(sched):
    """The scheduler's listing: one command, or (`{id}` / `{ids}` in it) one per job or
    chunk of `jobs`, their outputs joined; a job the scheduler no longer knows (its error
    matches `gone`) is simply not listed."""
    template = sched["list"]
    jobs = sched.get("jobs") or []
    if any("{id}" in a for a in template):
        groups = [[j] for j in jobs]
    elif any("{ids}" in a for a in template):
        chunk = int(sched.get("chunk", 200))
        groups = [jobs[k:k + chunk] for k in range(0, len(jobs), chunk)]
    else:
        groups = [[""]]
    gone = re.compile(sched["gone"]) if sched.get("gone") else None
    outs, errs, rc = [], [], 0
    for g in groups:
        r = run(subst(template, ids=",".join(g), id=g[0]), timeout=120)
        if r["rc"] != 0 and not (gone and gone.search(r["err"])):
            rc = r["rc"]
            errs.append(r["err"])
        elif r["rc"] == 0:
            outs.append(r["out"])
    return {"rc": rc, "out": b"".join(outs), "err": "".join(errs)[-2000:], "commands": len(groups)}


def _scheduler(sched, ids, reply):
    """The listing, then details for the ids the listing lacks (first alternative that works)."""
    out = {}
    listing = sched.get("list")
    present = set()
    if listing:
        r = _listing(sched)
        pattern = re.compile(sched.get("present", r"^\s*(\S+)").encode("utf-8"), re.M)
        if r["rc"] == 0:
            # an id is the pattern's groups that matched, joined by `.` (SGE's `<job>.<task>`)
            present = set(".".join(g.decode("utf-8", "replace") for g in m.groups() if g)
                          for m in pattern.finditer(r["out"]))
        r["out"] = reply.blob(r["out"])
        out["list"] = r
    missing = [i for i in ids if i not in present] if listing else list(ids)
    out["details"] = []
    if not missing:
        return out
    chunk = int(sched.get("chunk", 200))
    for alt, template in enumerate(sched.get("detail", [])):
        results, failed = [], 0
        if any("{id}" in a for a in template):
            groups = [[i] for i in missing]
        else:
            groups = [missing[k:k + chunk] for k in range(0, len(missing), chunk)]
        for g in groups:
            r = run(subst(template, ids=",".join(g), id=g[0]), timeout=120)
            if r["rc"] != 0:
                failed += 1
            r["out"] = reply.blob(r["out"])
            r["ids"] = g
            r["alt"] = alt
            results.append(r)
        out["details"] = results
        # `{id}` commands fail for unknown ids one by one; a chunked one fails as a whole
        if failed < len(groups) or not groups:
            break
    return out


def op_poll(req, inp, reply):
    workdir = path(req.get("workdir") or "nero")
    sched = req.get("scheduler")
    if sched:
        reply.header["scheduler"] = _scheduler(sched, req.get("ids", []), reply)
    per_file = int(req.get("per_file", 8 << 20))
    budget = int(req.get("budget", 64 << 20))
    sources = req.get("sources") or {}
    globs = [(glob_regex(g), bool(head)) for g, head in sources.get("globs", [])]
    runs = []
    for r in req.get("runs", []):
        d = r["dir"]
        files = dict((n, read_status(os.path.join(d, n))) for n in STATUS_FILES)
        chunks, mids, complete = [], [], True
        for name, off in zip(OUTPUTS, r.get("off", [0, 0, 0, 0])):
            limit = min(per_file, budget)
            # the byte before the offset too: not a line end means the offset lies inside a
            # line too long to read, cut in an earlier poll (nero skips to its end)
            back = 1 if off > 0 else 0
            data = read_from(os.path.join(d, name), off - back, limit + 1 + back)
            mids.append(bool(back and data[:1] and data[:1] != b"\n"))
            data = data[back:]
            if len(data) > limit:
                data, complete = data[:limit], False
            budget -= len(data)
            chunks.append(reply.blob(data))
        item = {"files": files, "chunks": chunks, "mid": mids, "complete": complete, "dir": os.path.isdir(d)}
        if globs:
            found, budget = read_sources(d, globs, sources, r.get("src") or {}, per_file, budget, reply)
            item["sources"] = found
            item["complete"] = complete and all(f[5] for f in found)
        if files.get("exit_code") is not None:
            item["tail"] = reply.blob(tail(os.path.join(d, "stderr.log")))
        if r.get("check_pid") and files.get("exit_code") is None:  # an exit code ends the run, alive or not
            pid = (r.get("pid") or read_status(os.path.join(d, "pid")) or "").strip()
            item["alive"] = pid.isdigit() and process_alive(int(pid), d)
            if not item["alive"] and read_status(os.path.join(d, "exit_code")) is not None:
                # it ended after its files were read: it was alive then; the next poll reads its end
                # (not "ended without writing an exit code": a busy machine widens this window)
                item["alive"] = True
        runs.append(item)
    reply.header["runs"] = runs
    reply.header["disk_free_mb"] = disk_free_mb(workdir)
    reply.header["time"] = time.time()


def glob_regex(glob):
    """A glob of paths relative to a run folder as a regex: `*` and `?` within one name,
    `**/` any number of folders."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
            continue
        c = glob[i]
        out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def list_sources(d, globs, max_files=64, max_entries=5000, depth=8):
    """The files below run folder d (relative paths, sorted, at most max_files) that a glob
    matches, each with whether a read from inside it needs its first line. Hidden folders
    and links to folders are not entered; at most max_entries entries and depth folders deep
    are looked at, so a folder of a million checkpoints costs little."""
    found, seen, todo = {}, 0, [("", 0)]
    while todo and seen < max_entries:
        rel, level = todo.pop()
        try:
            it = os.scandir(os.path.join(d, rel) if rel else d)
        except OSError:
            continue
        with it:
            for e in it:
                seen += 1
                if seen > max_entries:
                    break
                name = rel + "/" + e.name if rel else e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        if level < depth and not e.name.startswith("."):
                            todo.append((name, level + 1))
                        continue
                except OSError:
                    continue
                for rx, head in globs:
                    if rx.match(name):
                        found[name] = head
                        break
    return [(n, found[n]) for n in sorted(found)[:max_files]]


def first_line(p, limit=65536):
    data = read_from(p, 0, limit)
    nl = data.find(b"\n")
    return data[:nl + 1] if nl >= 0 else b""


def read_sources(d, globs, opts, known, per_file, budget, reply):
    """[path, offset, data, size, head, whole] of each metric file below d with bytes past
    its known offset (or shorter than it: replaced), and the budget left."""
    out = []
    for name, head in list_sources(d, globs, int(opts.get("max_files", 64)), int(opts.get("max_entries", 5000)),
                                   int(opts.get("depth", 8))):
        p = os.path.join(d, name)
        off = int(known.get(name, 0))
        try:
            size = os.path.getsize(p)
        except OSError:
            continue
        if size == off:
            continue
        limit = min(per_file, budget)
        data = read_from(p, off, limit) if size > off else b""
        budget -= len(data)
        whole = off + len(data) >= size
        top = reply.blob(first_line(p)) if head and off > 0 and size > off else None
        out.append([name, off, reply.blob(data), size, top, whole])
    return out, budget


def write_new(p, data, mode=0o666):
    """Write a file nobody reads yet (a run directory before its job is submitted): one
    open/write/close, far fewer system calls than write_atomic. `mode` less the umask (0o777
    for a program)."""
    data = data.encode("utf-8") if not isinstance(data, bytes) else data
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _record(d):
    """The folder that keeps a run's `handed` and `job_id` records: its own, or the one its
    submission record (`submit.json`) names for all the runs of one submission (a job
    array), with the run's line in that folder's `job_id`."""
    try:
        sub = json.loads(read_small(os.path.join(d, SUBMIT), 65536) or "{}")
    except ValueError:
        sub = {}
    if isinstance(sub, dict) and sub.get("record"):
        return sub["record"], int(sub.get("index", 0))
    return d, None


def _handed_ids(d, cache, batch=None):
    """(handed, job id) of a run folder, from its own records or its submission's (`batch`:
    (batch folder, index) of a run whose folder its task has not written yet)."""
    folder, index = batch if batch else _record(d)
    if folder not in cache:
        ids = read_small(os.path.join(folder, "job_id"), 1 << 22)
        cache[folder] = (os.path.exists(os.path.join(folder, HANDED)), (ids or "").split("\n"))
    handed, ids = cache[folder]
    line = ids[index or 0] if (index or 0) < len(ids) else ""
    return handed, line.strip() or None


def _live(d, jid, check_pid, fresh_s):
    """Why the job of run folder d may still be alive (None: it is not): its process
    lives, its heartbeat is fresh, or a scheduler holds it queued."""
    if read_status(os.path.join(d, "exit_code")) is not None:
        return None
    pid = read_status(os.path.join(d, "pid")) or jid or ""
    if check_pid and pid.isdigit() and process_alive(int(pid), d):
        return "its process %s is alive" % pid
    for name in ("heartbeat", "started"):
        try:
            age = time.time() - os.path.getmtime(os.path.join(d, name))
        except OSError:
            continue
        if age < fresh_s:
            return "its %s file is %d s old" % (name, age)
    if not check_pid and jid and not os.path.exists(os.path.join(d, "started")):
        return "job %s was queued and has not started" % jid
    return None


def _write_job(job, check_pid=False, fresh_s=60):
    """Write a job's run folder; the reason why not (nothing written) when it holds
    another project's run or a job that may be alive."""
    d = job["dir"]
    mine = job.get("owner") or {}
    if os.path.isdir(d):
        try:
            theirs = json.loads(read_small(os.path.join(d, SUBMIT), 65536) or "{}").get("owner") or {}
        except (ValueError, AttributeError):
            theirs = {}
        if isinstance(theirs, dict) and theirs.get("project") and theirs["project"] != mine.get("project", theirs["project"]):
            return ("run folder %s belongs to another nero project (%s, id %s); nothing was written there: give each "
                    "project its own Clusters workdir (or restore this project's .nero/project_id if it was remade)"
                    % (d, theirs.get("path", "?"), theirs["project"]))
        jid = _handed_ids(d, {})[1]
        if os.path.exists(os.path.join(d, "started")) or jid:
            why = _live(d, jid, check_pid, fresh_s)
            if why:
                return ("run folder %s holds a job this project's state does not know that may be alive (%s); "
                        "nothing was written there: stop that job, or remove the folder" % (d, why))
            # a folder left by a job nero no longer knows (its state was deleted): kept aside,
            # never mixed with the new job's output or mistaken for it
            os.rename(d, "%s.replaced-%d" % (d, int(time.time() * 1000)))
    if job.get("lazy"):
        return None  # its job writes the folder when it starts (a task of a job array: slurm.py values_array_script)
    try:
        os.makedirs(d)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
    for name, text in sorted(job.get("files", {}).items()):
        write_new(os.path.join(d, name), text, 0o777 if name in job.get("exec", ()) else 0o666)
    try:  # the job script's way to wait without starting a process (templates/_job_body.sh.j2)
        os.mkfifo(os.path.join(d, TICK))
    except OSError:
        pass  # there already, or a file system without FIFOs: the job script sleeps instead
    for name, target in job.get("links", {}).items():
        p = os.path.join(d, name)
        if not os.path.lexists(p):
            os.symlink(target, p)


def _job_id(out):
    m = re.match(r"\s*([0-9][0-9.]*)", out.decode("utf-8", "replace"))
    return m.group(1).split(".")[0] if m else ""


# processes started by `spawn` units: a long-lived caller that runs these operations in
# its own process (the local cluster) reaps them as they end
SPAWNED = []


def _write_each(runs, name, texts):
    pairs = list(zip(runs, texts))
    if len(pairs) > 8:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda dt: write_new(os.path.join(dt[0], name), dt[1]), pairs))
    else:
        for d, text in pairs:
            write_new(os.path.join(d, name), text)


def _unit_files(unit):
    """Write a unit's own files (a job array's scripts and values): nothing is handed over yet."""
    for p, text in unit.get("files", {}).items():
        parent = os.path.dirname(p)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent)
        write_atomic(p, text, executable=p.endswith(".sh"))


def _submit_unit(unit, written=False):
    if not written:
        _unit_files(unit)
    # recorded before the job is handed over (process started, submit command run): a run
    # folder without it was never handed to anyone, so nero may submit it again at once.
    # A unit of many runs (a job array) keeps one record for all of them in its `record`
    # folder (each run's submit.json names it): two files, not two per run
    shared = unit.get("record")
    if shared:
        # the batches of the workdir, newest last: adopt finds the batch of a run whose task
        # has not started (no run folder yet) in the last ones (one line: one O_APPEND write)
        fd = os.open(os.path.join(os.path.dirname(shared), BATCH_INDEX), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     umask_mode(0o666))
        try:
            os.write(fd, (shared + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        write_atomic(os.path.join(shared, HANDED), "%f\n" % time.time())
    else:
        _write_each(unit["runs"], HANDED, ["%f\n" % time.time()] * len(unit["runs"]))
    if unit["kind"] == "spawn":
        env = None  # nero's own environment, passed on as it is (no copy to encode per job)
        if unit.get("env"):
            env = dict(os.environ)
            env.update(unit["env"])
        try:
            with open(os.devnull, "r+b") as null:
                p = subprocess.Popen(unit["argv"], cwd=unit["cwd"], stdin=null, stdout=null, stderr=null,
                                     close_fds=True, env=env, start_new_session=True)
        except OSError as e:
            return {"rc": 126, "out": "", "err": "cannot start %s: %s" % (unit["argv"][0], e), "ids": []}
        SPAWNED.append(p)
        ids = [str(p.pid)]
        result = {"rc": 0, "out": str(p.pid), "err": "", "ids": ids}
    else:
        r = run(unit["argv"], cwd=unit.get("cwd"), timeout=300)
        jid = _job_id(r["out"]) if r["rc"] == 0 else ""
        ids = []
        if jid:
            # a job array's tasks: `array` spells a task's id from the array's and its number
            first = int(unit.get("first", 0))
            ids = [unit["array"] % (jid, first + i) for i in range(len(unit["runs"]))] if unit.get("array") else [jid]
        result = {"rc": r["rc"], "out": r["out"].decode("utf-8", "replace")[-2000:], "err": r["err"], "ids": ids}
    # read by adopt only under the submit lock
    if shared:
        write_atomic(os.path.join(shared, "job_id"), "".join(jid + "\n" for jid in ids))
    else:
        _write_each(unit["runs"], "job_id", [jid + "\n" for jid in ids])
    return result


def op_submit(req, inp, reply):
    workdir = path(req["workdir"])
    t0 = time.time()
    lock = Lock(workdir)
    seconds = {"lock": time.time() - t0}
    try:
        shipped = []
        for code in req.get("code", []):
            stream = Limited(inp, int(code["size"]))
            target = code["dir"]
            if os.path.isdir(target):
                stream.drain()
                shipped.append(False)
                continue
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):
                os.makedirs(parent)
            unpack(stream, target)
            stream.drain()
            shipped.append(True)
        reply.header["code"] = shipped
        seconds["code"] = time.time() - t0 - sum(seconds.values())
        # many small files: written by a few threads (system calls overlap; 10x faster on
        # slow or network file systems). A task's folder its job writes (`lazy`) needs a
        # look only where it exists already: one stat here, no thread's hand-off
        jobs = [j for j in req.get("jobs", []) if not j.get("lazy") or os.path.isdir(j["dir"])]
        owner = req.get("owner") or {}
        for j in jobs:
            if owner and "owner" in j:  # the request names the project's part of each run's owner once
                j["owner"] = dict(owner, **j["owner"])
        with ThreadPoolExecutor(8) as pool:
            refused = list(pool.map(lambda j: _write_job(j, req.get("check_pid"), float(req.get("fresh_s", 60))),
                                    jobs))
        refused = dict((j["dir"], why) for j, why in zip(jobs, refused) if why)
        seconds["files"] = time.time() - t0 - sum(seconds.values())
        units = req.get("units", [])
        written, results_early = set(), {}
        if req.get("gate"):  # nero commits its attempts meanwhile, then says go (wire.GO): else nothing is handed over
            for i, u in enumerate(units):  # meanwhile too: the units' own files (a job array's values)
                if u["kind"] != "spawn" and not any(d in refused for d in u["runs"]):
                    try:
                        _unit_files(u)
                    except Exception as e:  # noqa: BLE001 - reported per unit
                        results_early[i] = {"rc": 125, "out": "", "err": "%s: %s" % (type(e).__name__, e), "ids": []}
                    written.add(i)
            word = inp.readline().strip()
            seconds["gate"] = time.time() - t0 - sum(seconds.values())
            if word != b"go":
                reply.header["units"] = [{"rc": 1, "out": "", "ids": [], "refused": True,
                                          "err": "nero did not confirm the submission (its attempts were not "
                                                 "recorded): no job was handed over"} for _ in units]
                reply.header["seconds"] = seconds
                return
        results = [results_early.get(i) for i in range(len(units))]
        for i, u in enumerate(units):  # a unit with a refused folder is not submitted at all
            why = [refused[d] for d in u["runs"] if d in refused]
            if why:
                results[i] = {"rc": 1, "out": "", "err": why[0], "ids": [], "refused": True}
        cmds = [i for i, u in enumerate(units) if u["kind"] != "spawn" and results[i] is None]
        todo = list(cmds)
        guard = threading.Lock()

        def worker():
            while True:
                with guard:
                    if not todo:
                        return
                    i = todo.pop(0)
                try:
                    results[i] = _submit_unit(units[i], i in written)
                except Exception as e:  # noqa: BLE001 - reported per unit
                    results[i] = {"rc": 125, "out": "", "err": "%s: %s" % (type(e).__name__, e), "ids": []}

        threads = [threading.Thread(target=worker) for _ in range(max(1, min(int(req.get("parallel", 4)), len(cmds))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        def spawn(i):
            try:
                results[i] = _submit_unit(units[i])
            except Exception as e:  # noqa: BLE001
                results[i] = {"rc": 125, "out": "", "err": "%s: %s" % (type(e).__name__, e), "ids": []}

        spawns = [i for i, u in enumerate(units) if u["kind"] == "spawn" and results[i] is None]
        # a few at once: starting a process waits for its exec, which other threads overlap;
        # 4, not 8: more threads only contend for the interpreter lock (1,000 local runs of
        # `true`: 0.69 s of nero's CPU with 8, 0.49 s with 4, the same 2.2 s)
        with ThreadPoolExecutor(min(4, max(1, len(spawns)))) as pool:
            list(pool.map(spawn, spawns))
        reply.header["units"] = results
        seconds["submit"] = time.time() - t0 - sum(seconds.values())
        reply.header["seconds"] = seconds
        reply.header["disk_free_mb"] = disk_free_mb(workdir)
    finally:
        lock.release()


def _batches_of(dirs):
    """Run folder -> (batch folder, index) for the given run folders, from the batches of
    the workdir(s) they are below, newest first (the batch index's last BATCH_INDEX_TAIL
    bytes: the recent batches; an older one's runs have long written their folders)."""
    want, found, seen = set(dirs), {}, set()
    indexes, looked = set(), {}
    for d in dirs:  # <workdir>/<experiment>/<key>/<attempt>: the workdir's .nero/batches/index
        head = d
        for _ in range(8):
            head = os.path.dirname(head)
            if head not in looked:
                p = os.path.join(head, NERO_DIR, "batches", BATCH_INDEX)
                looked[head] = p if os.path.exists(p) else None
            if looked[head]:
                indexes.add(looked[head])
                break
            if not head or head == "/":
                break
    for p in indexes:
        try:
            with open(p, "rb") as f:
                f.seek(0, 2)
                start = max(0, f.tell() - BATCH_INDEX_TAIL)
                f.seek(start)
                names = f.read().decode("utf-8", "replace").split("\n")[1 if start else 0:]  # a cut first line
        except (IOError, OSError):
            continue
        for bdir in reversed([n for n in names if n]):
            if bdir in seen or not want - set(found):
                continue
            seen.add(bdir)
            tasks = (read_small(os.path.join(bdir, "tasks"), 1 << 24, strip=False) or "").split("\n")
            for i, t in enumerate(tasks):
                if t in want and t not in found:
                    found[t] = (bdir, i)
    return found


def op_adopt(req, inp, reply):
    workdir = path(req["workdir"])
    lock = Lock(workdir)
    try:
        runs, names, records = [], [], {}
        subs = [read_small(os.path.join(r["dir"], SUBMIT), 65536) for r in req.get("runs", [])]
        # a task of a job array writes its run folder when it starts: a run without its
        # submission record may be one whose task has not started; its batch says
        pending = _batches_of([r["dir"] for r, sub in zip(req.get("runs", []), subs) if sub is None])
        for r, sub in zip(req.get("runs", []), subs):
            d = r["dir"]
            batch = pending.get(d)
            if batch:
                sub = json.dumps({"batch": os.path.basename(batch[0]), "index": batch[1], "record": batch[0]})
            handed, jid = _handed_ids(d, records, batch)
            item = {"job_id": jid, "submit": sub,
                    "pid": read_status(os.path.join(d, "pid")),
                    "has_job": bool(batch) or os.path.exists(os.path.join(d, "job.sh")),
                    "handed": handed}
            if r.get("check_pid") and item["job_id"]:
                item["alive"] = item["job_id"].isdigit() and process_alive(int(item["job_id"]), d)
            if not item["job_id"] and item["has_job"] and r.get("name"):
                name = os.path.basename(batch[0]) if batch else r["name"]
                if name not in names:
                    names.append(name)
            runs.append(item)
        reply.header["runs"] = runs
        out = {}
        if req.get("list"):
            rr = run(subst(req["list"]), timeout=120)
            rr["out"] = reply.blob(rr["out"])
            out["list"] = rr
        details = []
        if names and req.get("detail"):
            template = req["detail"]
            groups = [[n] for n in names] if any("{name}" in a for a in template) else \
                [names[k:k + 100] for k in range(0, len(names), 100)]
            for g in groups:
                rr = run(subst(template, names=",".join(g), name=g[0]), timeout=120)
                rr["out"] = reply.blob(rr["out"])
                rr["names"] = g
                details.append(rr)
        out["details"] = details
        reply.header["scheduler"] = out
    finally:
        lock.release()


def _kill_later(pgid, run_dir, grace):
    marker = os.path.join(run_dir, "exit_code")
    # `-s KILL -- -PGID`: dash (/bin/sh on Debian) refuses `kill -KILL -- -PGID`
    script = 'sleep %d; [ -e "$1" ] || kill -s KILL -- -%d 2>/dev/null' % (int(grace), pgid)
    with open(os.devnull, "r+b") as null:
        subprocess.Popen(["/bin/sh", "-c", script, "nero-kill", marker], stdin=null, stdout=null, stderr=null,
                         close_fds=True, start_new_session=True)


def op_cancel(req, inp, reply):
    units = []
    for argv in req.get("commands", []):
        r = run(argv, timeout=120)
        r["out"] = r["out"].decode("utf-8", "replace")[-2000:]
        units.append(r)
    kills = []
    for k in req.get("kill", []):
        # a job adopted before it recorded its id: the pid its script wrote
        text = (k.get("pid") or read_status(os.path.join(k["dir"], "pid")) or "").strip()
        pid = int(text) if text.isdigit() else 0
        if not pid or not process_alive(pid, k["dir"]):
            kills.append("")
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
            _kill_later(pid, k["dir"], k.get("grace", 15))
            kills.append("")
        except OSError as e:
            kills.append("" if e.errno == errno.ESRCH else "cannot signal process group %d: %s" % (pid, e.strerror))
    reply.header["commands"] = units
    reply.header["kill"] = kills


def op_resources(req, inp, reply):
    workdir = path(req.get("workdir") or "nero")
    mem = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("MemTotal", "MemAvailable"):
                    mem[k] = float(v.split()[0]) / 1024.0
    except (IOError, OSError):
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    gpus = None
    if shutil.which("nvidia-smi"):
        r = run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                 "--format=csv,noheader,nounits"], timeout=30)
        gpus = r["out"].decode("utf-8", "replace") if r["rc"] == 0 else None
    outputs = run_all(req.get("commands", []), reply)
    reply.header.update({
        "host": socket.gethostname(), "cpus": os.cpu_count(), "load": load,
        "mem_total_mb": mem.get("MemTotal"), "mem_available_mb": mem.get("MemAvailable"),
        "workdir": workdir, "disk_free_mb": disk_free_mb(workdir), "gpus": gpus, "outputs": outputs,
    })


def op_read(req, inp, reply):
    name = req["name"]
    if name not in OUTPUTS:
        raise ValueError("not a run output: %s" % name)
    d = path(req["dir"])
    p = os.path.join(d, name)
    try:
        size = os.path.getsize(p)
    except OSError:
        size = None
    limit = int(req.get("limit", 8 << 20))
    if req.get("tail") is not None:
        data = tail(p, min(int(req["tail"]), limit))
    else:
        data = read_from(p, int(req.get("offset", 0)), limit)
    reply.header["size"] = size
    reply.header["data"] = reply.blob(data)
    reply.header["ended"] = read_status(os.path.join(d, "exit_code")) is not None
    reply.header["dir_exists"] = os.path.isdir(d)


OPS = {"hello": op_hello, "poll": op_poll, "submit": op_submit, "adopt": op_adopt, "cancel": op_cancel,
       "resources": op_resources, "read": op_read}


def serve(req, inp):
    """One request (None: read it from `inp` first): its operation's reply, or the error
    it raised, which nero reports."""
    reply = Reply()
    try:
        if req is None:
            n = int(inp.readline())
            req = json.loads(zlib.decompress(inp.read(n)).decode("utf-8"))
        OPS[req["op"]](req, inp, reply)
        reply.header["ok"] = True
    except Exception as e:  # noqa: BLE001 - everything goes back to nero
        reply.header["ok"] = False
        reply.header["error"] = "%s: %s" % (type(e).__name__, e)
    return reply


def main():
    inp = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    serve(None, inp).write(out)


if __name__ in ("__main__", "nero_agent"):
    main()
