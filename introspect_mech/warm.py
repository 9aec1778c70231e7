"""A resident process that keeps torch, transformers and nnsight imported, so a command starts in ~1 s.

Why: a fresh ``introspect-mech run`` spends ~4 s importing torch, transformers' model code (which
pulls in torch._dynamo, torch.distributed.tensor and scipy) and nnsight before it does anything —
measured in ``benchmarks/bench_startup.py``. ``introspect-mech warm start`` starts a server that does
those imports once and then waits on a Unix socket; each later command connects, hands over its
arguments, working directory, environment and its stdin/stdout/stderr (file descriptors passed over
the socket), and the server forks a child that runs the command exactly as the CLI would in a fresh
process, with the caller's terminal. The child exits with the command's status, which the caller
exits with; Ctrl-C in the caller reaches the child.

Safety: the socket lives in a folder only this user can open, and the server serves only
connections from its own user id (``SO_PEERCRED``). It never runs torch work itself (a process that
has started OpenMP threads must not fork), only imports. The server refuses — and the command then
runs in its own process as before, with a one-line note — when the package's code changed since it
started (a hash of its source files' sizes and mtimes), when the Python executable differs, or when
an environment variable that libraries read at import time (``HF_*``, ``TRANSFORMERS_*``, ``TORCH_*``,
``OMP_*``, ``MKL_*``, ``CUDA_*``, ``PYTHON*``) differs. ``INTROSPECT_MECH_WARM=0`` bypasses the server.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Sequence

WARM_ENV = "INTROSPECT_MECH_WARM"  # 0: never use the server
DIR_ENV = "INTROSPECT_MECH_WARM_DIR"  # where the socket lives (tests); default: a per-user runtime folder
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "KMP_", "CUDA_",
                        "PYTORCH_", "PYTHON", "NNSIGHT", "TOKENIZERS_", "LD_", "MALLOC_", "GLIBC_TUNABLES", "HOME",
                        "XDG_CACHE_HOME", "TMPDIR", "TEMP", "TMP")
MAX_HEADER = 1 << 20


def socket_dir() -> Path:
    """A folder only this user can use: ``$INTROSPECT_MECH_WARM_DIR``, ``$XDG_RUNTIME_DIR/introspect_mech``, or
    ``/tmp/introspect_mech-UID`` (a Unix socket path must stay under ~100 bytes, so not the cache folder)."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "introspect_mech" if runtime else Path(f"/tmp/introspect_mech-{os.getuid()}")


def socket_path() -> Path:
    return socket_dir() / "warm.sock"


def _private_dir() -> Path:
    """Create the socket folder (mode 0700) or check that an existing one is ours and private."""
    d = socket_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(d)
    if not _folder_is_private(d):
        from .errors import ConfigError

        raise ConfigError(f"{d} is not a private folder of this user (owner uid {st.st_uid}, mode "
                          f"{oct(st.st_mode & 0o777)}); remove it or set {DIR_ENV} to a folder of your own")
    return d


def code_token() -> str:
    """What the server's imports depend on: the package's source files (path, size, mtime) and the interpreter."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(sys.executable.encode())
    from importlib.metadata import PackageNotFoundError, version

    for lib in ("torch", "transformers", "nnsight", "peft", "tokenizers"):  # an upgraded library: a new token
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            pass
    for p in sorted(root.rglob("*.py")):
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def import_env(env: dict[str, str]) -> dict[str, str]:
    """The environment variables that libraries read when they are imported (the server's must match)."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


# --------------------------------------------------------------------------------------------------
# wire format: a 4-byte length and a JSON object; the caller's three fds ride on the first message
# --------------------------------------------------------------------------------------------------


def _send(sock: socket.socket, obj: dict, fds: Sequence[int] = ()) -> None:
    data = json.dumps(obj).encode()
    msg = struct.pack("!I", len(data)) + data
    if fds:
        sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(msg)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    """One message (and up to ``with_fds`` passed descriptors). On any error the received descriptors are
    closed before the error propagates (a kept pipe end would hang the caller's pipeline)."""
    fds: list[int] = []
    try:
        if with_fds:
            fd_size = array.array("i").itemsize
            data, anc, _flags, _addr = sock.recvmsg(4, socket.CMSG_LEN(with_fds * fd_size))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - (len(payload) % fd_size)])
                    fds += list(arr)
            head = data + (_recv_exact(sock, 4 - len(data)) if len(data) < 4 else b"")
        else:
            head = _recv_exact(sock, 4)
        (n,) = struct.unpack("!I", head)
        if n > MAX_HEADER:
            raise ConnectionError("message too large")
        msg = json.loads(_recv_exact(sock, n))
        if not isinstance(msg, dict):
            raise ValueError("not a message")
        return msg, fds
    except BaseException:
        _close_all(fds)
        raise


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def _folder_is_private(d: Path) -> bool:
    """Ours, not a symlink, no access for group or others (checked by the caller too: a socket planted by someone
    else in a predictable /tmp folder would otherwise receive the caller's environment and terminal)."""
    try:
        st = os.lstat(d)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


# --------------------------------------------------------------------------------------------------
# the caller's side
# --------------------------------------------------------------------------------------------------


served_t0: float | None = None  # in a served child: when the caller's process started (time.time() clock)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGCONT)
CALLER_ATTRS = "umask, CPU affinity, niceness and resource limits"


def caller_state() -> dict:
    """What a fresh process would inherit from the caller beyond argv/cwd/env, for the child to take on."""
    import resource

    mask = os.umask(0)
    os.umask(mask)
    limits = {}
    for name in ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_RSS", "RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE",
                 "RLIMIT_STACK", "RLIMIT_NPROC", "RLIMIT_MEMLOCK"):
        if hasattr(resource, name):
            limits[name] = list(resource.getrlimit(getattr(resource, name)))
    ignored = [int(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
               if signal.getsignal(s) == signal.SIG_IGN]
    return {"umask": mask, "nice": os.getpriority(os.PRIO_PROCESS, 0), "limits": limits, "ignored": ignored,
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def try_served(argv: Sequence[str], t0: float) -> int | None:
    """Run ``argv`` through a warm server if one is up and fits; the exit status, or None to run here.

    ``t0``: when the caller's process started. Cheap when no server runs (no socket file, or one failed
    ``connect``); imports nothing heavy."""
    if served_t0 is not None or os.environ.get(WARM_ENV, "").strip() == "0" or argv[:1] == ["warm"]:
        return None
    path = socket_path()
    if not path.exists() or not _folder_is_private(path.parent):
        return None
    try:
        for fd in (0, 1, 2):  # a closed std stream would be taken by the socket itself
            os.fstat(fd)
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10.0)  # a busy or wedged server: run here instead of waiting
        sock.connect(str(path))
        if _peer(sock)[1] != os.getuid():  # only a server of this user gets the environment and the terminal
            sock.close()
            return None
        _send(sock, {"argv": list(argv), "argv0": sys.argv[0], "cwd": os.getcwd(), "env": dict(os.environ),
                     "token": code_token(), "t0": t0, "state": caller_state()}, fds=[0, 1, 2])
        reply, _ = _recv(sock)
    except (OSError, ConnectionError, ValueError):
        sock.close()
        return None  # no server (a stale socket file), a busy one, or it went away: run here
    if "refused" in reply:
        sock.close()
        print(f"note: the warm server did not take this command ({reply['refused']}); running it here. "
              "Restart it with `introspect-mech warm start`", file=sys.stderr)
        return None
    child = int(reply["pid"])
    sent: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
            sent.append(signum)
        except OSError:
            pass

    def suspend(signum: int, _frame: object) -> None:  # Ctrl-Z: stop the command, then ourselves
        pass_on(signal.SIGTSTP, _frame)
        os.kill(os.getpid(), signal.SIGSTOP)

    old = {}
    for s in FORWARDED:
        if signal.getsignal(s) != signal.SIG_IGN:  # nohup, background jobs: an ignored signal stays ignored
            old[s] = signal.signal(s, pass_on)
    old[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, suspend)
    sock.settimeout(None)
    try:
        while True:
            try:
                done, _ = _recv(sock)
            except InterruptedError:
                continue
            except (OSError, ConnectionError, ValueError):
                fatal = [s for s in sent if s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)]
                if fatal:  # the command died of the signal we passed on, as a fresh process would have
                    return 128 + int(fatal[-1])
                print("error: the warm server's process for this command ended without a status (killed?); re-run "
                      f"the same command (or set {WARM_ENV}=0)", file=sys.stderr)
                return 1
            if "refused" in done:  # the child could not take on the caller's process attributes
                print(f"note: the warm server did not take this command ({done['refused']}); running it here",
                      file=sys.stderr)
                return None
            return int(done["status"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------


def preload() -> None:
    """Everything a command imports before it does any work (no torch computation: the server must stay fork-safe)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import nnsight  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401 - SmolLM2
    from transformers.models.gemma3 import modeling_gemma3  # noqa: F401 - the embedded Gemma 3
    from transformers import AutoTokenizer, AutoModelForCausalLM  # noqa: F401

    from . import cli, concepts, execution, models, report, runner  # noqa: F401
    from .experiments import registry

    registry.specs()
    import peft  # noqa: F401 - --adapter


def _take_on(state: dict) -> str | None:
    """Apply the caller's process attributes in the child; why not, if one cannot be applied."""
    import resource

    try:
        os.umask(int(state["umask"]))
        for name, (soft, hard) in state.get("limits", {}).items():
            if hasattr(resource, name):
                resource.setrlimit(getattr(resource, name), (soft, hard))
        nice_now = os.getpriority(os.PRIO_PROCESS, 0)
        if int(state["nice"]) != nice_now:
            os.setpriority(os.PRIO_PROCESS, 0, int(state["nice"]))
        if state.get("affinity") is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, state["affinity"])
        for s in state.get("ignored", []):
            signal.signal(s, signal.SIG_IGN)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the caller's {CALLER_ATTRS} cannot be applied here ({exc})"
    return None


def _child(conn: socket.socket, msg: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process and run its command (never returns)."""
    global served_t0
    import threading

    status, finished = 1, threading.Event()
    try:
        conn.settimeout(None)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        why = _take_on(msg.get("state") or {})
        if why is not None:
            _send(conn, {"refused": why})
            os._exit(0)
        served_t0 = float(msg["t0"])

        def watch() -> None:  # the caller went away (killed): stop the command as Ctrl-C would, stores intact
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            if not finished.is_set():
                os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=watch, daemon=True).start()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        _close_all(fds)
        # the streams a fresh interpreter would open (stderr line-buffered, undecodable text escaped)
        sys.stdin = os.fdopen(0, "r", closefd=False, errors="surrogateescape")
        sys.stdout = os.fdopen(1, "w", 1 if os.isatty(1) else -1, closefd=False, errors="surrogateescape")
        sys.stderr = os.fdopen(2, "w", 1, closefd=False, errors="backslashreplace")
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        sys.argv = [msg.get("argv0") or "introspect-mech", *msg["argv"]]
        from .verbosity import VERBOSE_ENV, set_verbose

        set_verbose(os.environ.get(VERBOSE_ENV, "") not in ("", "0"))
        from .cli import main

        try:
            status = int(main(msg["argv"]) or 0)
        except SystemExit as exc:  # argparse errors and --help
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - a bug: its traceback, as a fresh process would print it
            import traceback

            traceback.print_exc()
            status = 1
    except BaseException:  # noqa: BLE001 - setting up the caller's process failed: say where (its stderr or the log)
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        finished.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller closing after our status is not an interrupt
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        try:
            _send(conn, {"status": status})
        except OSError:
            pass
        os._exit(status)


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {ascii(text)[1:-1]}", flush=True)


def _handle(conn: socket.socket, token: str, env_now: dict[str, str], srv: socket.socket) -> None:
    """One caller: check it, fork its command's process, tell it the pid."""
    conn.settimeout(5.0)  # a caller that connects and sends nothing must not block the others
    pid, uid = _peer(conn)
    msg, fds = _recv(conn, with_fds=3)
    try:
        why = None
        if uid != os.getuid():
            why = "another user"
        elif msg.get("token") != token:
            why = "the package's code, its libraries or the Python interpreter differ from the server's"
        elif import_env(msg.get("env", {})) != env_now:
            diff = set(import_env(msg.get("env", {})).items()) ^ set(env_now.items())
            why = f"environment variables read at import time differ ({', '.join(sorted({k for k, _ in diff}))})"
        elif len(fds) != 3:
            why = "stdin/stdout/stderr were not passed"
        if why is not None:
            _log(f"refused (caller {pid}): {why}")
            _send(conn, {"refused": why})
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # reaped only once it is registered below
        try:
            child = os.fork()
            if child == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                srv.close()
                for other in _WATCHED.values():  # other callers' connections are not this command's
                    other.close()
                _child(conn, msg, fds)
            _WATCHED[child] = conn.dup()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        try:
            _send(conn, {"pid": child})
        except OSError:  # the caller is gone already: its command must not run on unseen
            os.kill(child, signal.SIGKILL)
            raise
        _log(f"pid {child} (caller {pid}): {' '.join(str(a) for a in msg.get('argv', []))}")
    finally:
        _close_all(fds)


def serve(ready: Path | None = None) -> int:
    """Import everything, then serve commands until ``warm stop`` or SIGTERM."""
    import gc

    d = _private_dir()
    path = socket_path()
    env_now = import_env(dict(os.environ))  # before the imports: torch sets some (TORCHINDUCTOR_CACHE_DIR) itself
    preload()
    # the imports' objects are shared with every child: collect once and freeze them, so a child's first
    # collection does not walk (and copy-on-write) ~400k inherited objects (it also swallowed an early Ctrl-C)
    gc.collect()
    gc.freeze()
    token = code_token()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = d / f"warm.{os.getpid()}.sock"
    tmp.unlink(missing_ok=True)
    srv.bind(str(tmp))
    os.chmod(tmp, 0o600)
    srv.listen(16)
    os.replace(tmp, path)  # atomically the live socket (a previous server's file is replaced)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    running = {"on": True}

    def stop(*_a: object) -> None:
        running["on"] = False
        srv.close()

    signal.signal(signal.SIGTERM, stop)
    (d / "warm.pid").write_text(str(os.getpid()))
    if ready is not None:
        ready.write_text(str(os.getpid()))
    try:
        while running["on"]:
            try:
                conn, _ = srv.accept()
            except InterruptedError:
                continue
            except OSError:
                break
            with conn:
                try:
                    _handle(conn, token, env_now, srv)
                except ConnectionError:
                    pass  # a caller that left (or `warm status` asking who serves): nothing to do
                except Exception as exc:  # noqa: BLE001 - one bad caller never takes the server down
                    _log(f"dropped a caller: {type(exc).__name__}: {exc}")
    finally:
        try:
            if (d / "warm.pid").read_text() == str(os.getpid()):
                path.unlink(missing_ok=True)
                (d / "warm.pid").unlink(missing_ok=True)
        except OSError:
            pass
    return 0


_WATCHED: dict[int, socket.socket] = {}


def _reap() -> None:
    """Collect ended children; tell the caller of one killed by a signal its status (its own report never came)."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        # kept from the fork until the child ends: if a signal kills it before it can report (the OOM killer,
        # kill -9), the caller still learns 128 + the signal from here, as a shell reports a fresh process's death
        sock = _WATCHED.pop(pid, None)
        if sock is None:
            continue
        try:
            if os.WIFSIGNALED(wait_status):
                _send(sock, {"status": 128 + os.WTERMSIG(wait_status), "signal": os.WTERMSIG(wait_status)})
        except OSError:
            pass
        finally:
            sock.close()


def server_pid() -> int | None:
    """The pid of the server behind the socket (asked through the socket itself, so a reused pid in a leftover
    pid file is never taken for a server), or None."""
    path = socket_path()
    if not path.exists() or not _folder_is_private(path.parent):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(str(path))
        pid, uid = _peer(sock)
        return pid if uid == os.getuid() else None
    except OSError:
        return None
    finally:
        sock.close()


def start(timeout: float = 120.0) -> int:
    """Start a server in the background (detached) and wait until it serves; its pid."""
    import fcntl
    import subprocess
    import tempfile

    d = _private_dir()
    with open(d / "warm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `warm start`s at once: one after the other, never an orphan
        stop()
        with tempfile.TemporaryDirectory() as tmp:
            ready = Path(tmp) / "ready"
            with open(d / "warm.log", "ab") as log:  # one line per served or refused command
                proc = subprocess.Popen([sys.executable, "-m", "introspect_mech.warm", "--serve", "--ready",
                                         str(ready)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, env={**os.environ, WARM_ENV: "0"})
            t_end = time.time() + timeout
            while not ready.exists():
                if proc.poll() is not None or time.time() > t_end:
                    from .errors import IntrospectError

                    raise IntrospectError(f"the warm server did not start (see {d / 'warm.log'})")
                time.sleep(0.05)
    return proc.pid


def stop() -> bool:
    """Stop the running server (True if there was one)."""
    pid = server_pid()
    if pid is None:
        if _folder_is_private(socket_dir()):
            socket_path().unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    socket_path().unlink(missing_ok=True)
    (socket_dir() / "warm.pid").unlink(missing_ok=True)
    return True


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m introspect_mech.warm")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--ready", default=None)
    a = ap.parse_args(argv)
    if not a.serve:
        ap.error("only --serve (use `introspect-mech warm start|stop|status`)")
    return serve(Path(a.ready) if a.ready else None)


if __name__ == "__main__":
    sys.exit(_main())
