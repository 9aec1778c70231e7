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
                        "PYTORCH_", "PYTHON", "NNSIGHT", "TOKENIZERS_", "LD_")
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
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        from .errors import ConfigError

        raise ConfigError(f"{d} is not a private folder of this user (owner uid {st.st_uid}, mode "
                          f"{oct(st.st_mode & 0o777)}); remove it or set {DIR_ENV} to a folder of your own")
    return d


def code_token() -> str:
    """What the server's imports depend on: the package's source files (path, size, mtime) and the interpreter."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(sys.executable.encode())
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
    fds: list[int] = []
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
    return json.loads(_recv_exact(sock, n)), fds


# --------------------------------------------------------------------------------------------------
# the caller's side
# --------------------------------------------------------------------------------------------------


served_t0: float | None = None  # in a served child: when the caller's process started (time.time() clock)


def try_served(argv: Sequence[str], t0: float) -> int | None:
    """Run ``argv`` through a warm server if one is up and fits; the exit status, or None to run here.

    ``t0``: when the caller's process started. Cheap when no server runs (no socket file, or one failed
    ``connect``); imports nothing heavy."""
    if served_t0 is not None or os.environ.get(WARM_ENV, "").strip() == "0" or argv[:1] == ["warm"]:
        return None
    path = socket_path()
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        _send(sock, {"argv": list(argv), "argv0": sys.argv[0], "cwd": os.getcwd(), "env": dict(os.environ),
                     "token": code_token(), "t0": t0}, fds=[0, 1, 2])
        reply, _ = _recv(sock)
    except (OSError, ConnectionError, ValueError):
        sock.close()
        return None  # no server (a stale socket file) or it went away: run here
    if "refused" in reply:
        sock.close()
        print(f"note: the warm server did not take this command ({reply['refused']}); running it here. "
              "Restart it with `introspect-mech warm start`", file=sys.stderr)
        return None
    child = int(reply["pid"])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                done, _ = _recv(sock)
                return int(done["status"])
            except InterruptedError:
                continue
            except (OSError, ConnectionError, ValueError):
                print("error: the warm server's process for this command ended without a status; re-run it "
                      f"(or set {WARM_ENV}=0)", file=sys.stderr)
                return 1
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

    for spec in registry.specs():  # every experiment's modules
        spec.config  # noqa: B018 - touching the spec imports its config module
    import peft  # noqa: F401 - --adapter


def _child(conn: socket.socket, msg: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process and run its command (never returns)."""
    global served_t0
    status = 1
    try:
        served_t0 = float(msg["t0"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        sys.stdin = os.fdopen(0, "r", closefd=False)
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stderr = os.fdopen(2, "w", closefd=False)
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
    finally:
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


def serve(ready: Path | None = None) -> int:
    """Import everything, then serve commands until ``warm stop``, a newer code token or SIGTERM."""
    d = _private_dir()
    path = socket_path()
    env_now = import_env(dict(os.environ))  # before the imports: torch sets some (TORCHINDUCTOR_CACHE_DIR) itself
    preload()
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
                    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                         struct.calcsize("3i")))
                    msg, fds = _recv(conn, with_fds=3)
                except (OSError, ConnectionError, ValueError):
                    continue
                try:
                    why = None
                    if uid != os.getuid():
                        why = "another user"
                    elif msg.get("token") != token:
                        why = "the package's code or the Python interpreter differs from the server's"
                    elif import_env(msg.get("env", {})) != env_now:
                        diff = set(import_env(msg.get("env", {})).items()) ^ set(env_now.items())
                        why = f"environment variables read at import time differ ({', '.join(sorted({k for k, _ in diff}))})"
                    elif len(fds) != 3:
                        why = "stdin/stdout/stderr were not passed"
                    if why is not None:
                        _send(conn, {"refused": why})
                        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} refused (caller {pid}): {why}", flush=True)
                        continue
                    child = os.fork()
                    if child == 0:
                        srv.close()
                        _child(conn, msg, fds)
                    _send(conn, {"pid": child})
                    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {child} (caller {pid}): {' '.join(msg['argv'])}",
                          flush=True)
                finally:
                    for fd in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
    finally:
        try:
            if path.exists() and os.path.samefile(path, path) and (d / "warm.pid").read_text() == str(os.getpid()):
                path.unlink(missing_ok=True)
                (d / "warm.pid").unlink(missing_ok=True)
        except OSError:
            pass
    return 0


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def server_pid() -> int | None:
    """The running server's pid, or None (a leftover pid file of a dead server counts as none)."""
    try:
        pid = int((socket_dir() / "warm.pid").read_text())
        os.kill(pid, 0)
        return pid if socket_path().exists() else None
    except (OSError, ValueError):
        return None


def start(timeout: float = 120.0) -> int:
    """Start a server in the background (detached) and wait until it serves; its pid."""
    import subprocess
    import tempfile

    _private_dir()
    old = server_pid()
    if old is not None:
        stop()
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        with open(socket_dir() / "warm.log", "ab") as log:  # one line per served or refused command
            proc = subprocess.Popen([sys.executable, "-m", "introspect_mech.warm", "--serve", "--ready", str(ready)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    env={**os.environ, WARM_ENV: "0"})
        t_end = time.time() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.time() > t_end:
                from .errors import IntrospectError

                raise IntrospectError(f"the warm server did not start (see {socket_dir() / 'warm.log'})")
            time.sleep(0.05)
    return proc.pid


def stop() -> bool:
    """Stop the running server (True if there was one)."""
    pid = server_pid()
    if pid is None:
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
