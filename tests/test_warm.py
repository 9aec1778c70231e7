"""The warm server (``warm.py``): a served command behaves as the same command in a fresh process.

Subprocesses only (a real server and real callers), on a tiny model saved to disk: same stdout,
stderr, exit status and stored results with and without the server; a refused command runs in its
own process with a one-line note; in-process ``cli.main(argv)`` calls are never served; the socket
folder must be private.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from introspect_mech import warm

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               INTROSPECT_MECH_WARM_DIR=str(tmp_path / "warm"), INTROSPECT_MECH_CACHE=str(tmp_path / "cache"),
               INTROSPECT_MECH_THREADS="1")
    env.pop("INTROSPECT_MECH_WARM", None)
    env.update(extra)
    return env


def _cli(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "introspect_mech", *argv], capture_output=True, text=True, env=env,
                          cwd=env.get("_CWD", str(ROOT)), timeout=timeout)


def _served_lines(tmp_path: Path) -> list[str]:
    log = tmp_path / "warm" / "warm.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def server(tmp_path):
    env = _env(tmp_path)
    started = _cli(env, "warm", "start")
    assert started.returncode == 0, started.stderr
    yield env
    _cli(env, "warm", "stop")


@pytest.fixture
def tiny_folder(tiny_model_of, tmp_path):
    import copy

    m = tiny_model_of("llama")
    folder = tmp_path / "tiny"
    hf = copy.deepcopy(m.hf)  # the session's model is shared: a copy whose context holds the Exp 1 prompt
    hf.config.max_position_embeddings = 4096
    hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


def test_a_served_command_equals_the_same_command_in_its_own_process(server, tiny_folder, tmp_path):
    env = server
    assert "warm server running" in _cli(env, "warm", "status").stdout
    run = ["run", "injected-thoughts", "--model", str(tiny_folder), "--concepts", "dust,trees", "--layers", "1",
           "--strengths", "4", "--control-trials", "2", "--max-new-tokens", "4", "--no-progress"]
    served = _cli(env, *run, "--out", str(tmp_path / "a"))
    fresh = _cli({**env, "INTROSPECT_MECH_WARM": "0"}, *run, "--out", str(tmp_path / "b"))
    assert served.returncode == fresh.returncode == 0, served.stderr + fresh.stderr
    norm = lambda text, out: re.sub(r"in [0-9.]+ s, [0-9.]+ trials/s", "in T", text.replace(str(out), "OUT"))  # noqa: E731
    assert norm(served.stdout, tmp_path / "a") == norm(fresh.stdout, tmp_path / "b")
    strip = lambda p: sorted(json.dumps({k: v for k, v in json.loads(line).items()}, sort_keys=True)  # noqa: E731
                             for line in (p / "results.jsonl").read_text().splitlines())
    assert strip(tmp_path / "a") == strip(tmp_path / "b")  # the same trials, seeds and replies
    # bad input and argparse errors: the same one line and exit status
    for argv in (["run", "injected-thoughts", "--strengths", "-1", "--out", str(tmp_path / "c")], ["bogus"]):
        s, f = _cli(env, *argv), _cli({**env, "INTROSPECT_MECH_WARM": "0"}, *argv)
        assert (s.returncode, s.stdout, s.stderr) == (f.returncode, f.stdout, f.stderr) and s.returncode == 2
    s, f = _cli(env, "--help"), _cli({**env, "INTROSPECT_MECH_WARM": "0"}, "--help")
    assert (s.returncode, s.stdout) == (f.returncode, f.stdout) == (0, f.stdout)
    served_cmds = [ln for ln in _served_lines(tmp_path) if " pid " in ln]
    assert len(served_cmds) == 4 and "injected-thoughts" in served_cmds[0]  # the server ran each of them (not `warm`)
    assert not any("refused" in ln for ln in _served_lines(tmp_path))


def test_a_refused_command_runs_in_its_own_process_with_a_note(server, tmp_path):
    """An import-time variable that differs (here HF_HUB_OFFLINE) would not reach the server's imports."""
    env = {**server, "HF_HUB_OFFLINE": "1"}
    out = _cli(env, "run", "injected-thoughts", "--strengths", "-1", "--out", str(tmp_path / "c"))
    assert out.returncode == 2
    note, err = out.stderr.strip().splitlines()
    assert note.startswith("note: the warm server did not take this command") and "HF_HUB_OFFLINE" in note
    assert err.startswith("error: strength -1 is negative")
    assert any("refused" in ln for ln in _served_lines(tmp_path))
    assert "warm server running" in _cli(server, "warm", "status").stdout  # still up for matching callers


def _start_served(env: dict[str, str], tmp_path: Path, argv: list[str], **popen) -> tuple[subprocess.Popen, int]:
    """Start a served command; return its caller and, once the server has forked it, the served process's pid
    (from the server's log), a second into its work."""
    n_served = sum(" pid " in ln for ln in _served_lines(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "introspect_mech", *argv], env=env, cwd=str(ROOT), **popen)
    for _ in range(600):
        if sum(" pid " in ln for ln in _served_lines(tmp_path)) > n_served:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    return proc, int(_served_lines(tmp_path)[-1].split(" pid ")[1].split()[0])


def test_interrupting_the_caller_interrupts_the_served_command(server, tiny_folder, tmp_path):
    run = ["run", "injected-thoughts", "--model", str(tiny_folder), "--concepts", "paper", "--layers", "1",
           "--strengths", "4", "--control-trials", "0", "--max-new-tokens", "500", "--no-progress", "--out"]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, _ = _start_served(server, tmp_path, run + [str(tmp_path / "a")], **pipes)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; re-run the same command to resume" in err
    assert "warm server running" in _cli(server, "warm", "status").stdout
    # SIGTERM: the command dies of it, and the caller's status says so (128 + 15), as a fresh process's would
    proc, _ = _start_served(server, tmp_path, run + [str(tmp_path / "b")], **pipes)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    # the caller killed outright (no signal to pass on): its command notices the closed connection and stops as on
    # Ctrl-C — no orphan keeps the run's lock; the same command then resumes the store
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, child = _start_served(server, tmp_path, run + [str(tmp_path / "c")], **quiet)
    proc.kill()
    proc.wait()
    for _ in range(600):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the served command kept running after its caller was killed")
    resumed = _cli(server, *run, str(tmp_path / "c"))
    assert resumed.returncode == 0, resumed.stderr
    # the served process killed outright (as the OOM killer would): the caller's status is 128 + 9, as for a
    # fresh process, reported by the server since the process itself could not
    proc, child = _start_served(server, tmp_path, run + [str(tmp_path / "d")], **quiet)
    os.kill(child, signal.SIGKILL)
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL


def test_in_process_calls_are_never_served_and_the_socket_folder_must_be_private(server, tmp_path, monkeypatch):
    from introspect_mech import cli

    monkeypatch.setenv("INTROSPECT_MECH_WARM_DIR", str(tmp_path / "warm"))
    before = len(_served_lines(tmp_path))
    assert cli.main(["run", "injected-thoughts", "--strengths", "-1", "--out", str(tmp_path / "c")]) == 2
    assert len(_served_lines(tmp_path)) == before
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    out = _cli({**server, "INTROSPECT_MECH_WARM_DIR": str(open_dir)}, "warm", "start")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ") and "not a private folder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_no_server_means_no_cost_and_stop_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("INTROSPECT_MECH_WARM_DIR", str(tmp_path / "warm"))
    monkeypatch.delenv("INTROSPECT_MECH_WARM", raising=False)
    assert warm.try_served(["report", "x"], time.time()) is None  # no socket file: nothing is tried
    (tmp_path / "warm").mkdir(mode=0o700)
    (tmp_path / "warm" / "warm.sock").write_text("")  # a leftover file, no server behind it
    assert warm.try_served(["report", "x"], time.time()) is None
    env = _env(tmp_path)
    assert _cli(env, "warm", "status").stdout.strip() == "no warm server is running"
    assert _cli(env, "warm", "stop").stdout.strip() == "no warm server was running"
    assert _cli(env, "warm", "stop").stdout.strip() == "no warm server was running"


def test_bad_callers_do_not_take_the_server_down_or_keep_descriptors(server, tmp_path, monkeypatch):
    """A caller that leaves right after its request, and one that sends garbage with its descriptors: the server
    keeps serving, holds no passed descriptor (a kept pipe end would hang the caller's pipeline), and a pid file
    that names another live process is not taken for the server."""
    import array
    import socket
    import struct

    monkeypatch.setenv("INTROSPECT_MECH_WARM_DIR", str(tmp_path / "warm"))
    pid = warm.server_pid()
    assert pid is not None
    time.sleep(0.5)  # let the server close the connection server_pid() made
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    request = json.dumps({"argv": ["run", "injected-thoughts", "--strengths", "-1", "--out", str(tmp_path / "x")],
                          "cwd": str(tmp_path), "env": dict(server), "token": warm.code_token(), "t0": 0.0,
                          "state": warm.caller_state()}).encode()
    r, w = os.pipe()
    try:
        for payload in (request, b"{not json"):
            for _ in range(3):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(warm.socket_path()))
                s.sendmsg([struct.pack("!I", len(payload)) + payload],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, w, w]))])
                s.close()
        time.sleep(1.0)
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        deadline = time.time() + 20
        while time.time() < deadline:  # EOF on the pipe: nobody (server or a stray child) still holds its write end
            try:
                if os.read(r, 65536) == b"":
                    break
            except BlockingIOError:
                time.sleep(0.1)
        else:
            pytest.fail("a passed descriptor is still open somewhere")
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert warm.server_pid() == pid
    for _ in range(100):  # the connection server_pid() just made may still be open for a moment
        if len(os.listdir(f"/proc/{pid}/fd")) <= fds_before:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the server holds {len(os.listdir(f'/proc/{pid}/fd'))} descriptors, {fds_before} before")
    assert _cli(server, "run", "injected-thoughts", "--strengths", "-1", "--out", str(tmp_path / "y")).returncode == 2
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "warm" / "warm.pid").write_text(str(sleeper.pid))
        assert warm.server_pid() == pid  # asked through the socket, not the pid file
    finally:
        sleeper.kill()
