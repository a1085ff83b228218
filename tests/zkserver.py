"""A real, single-node ZooKeeper for tests: Debian's `zookeeper` package run from a temporary folder.

The server runs as its own process group on a free loopback port, with ``tickTime=500`` so the
minimum session timeout is 1 s and expiry drills are quick.  ``restart()`` keeps ``dataDir``, so
persistent nodes *and live sessions* survive it (ZooKeeper restores sessions from its snapshot and
transaction log), which is what the "ZooKeeper went away for a while" drills rely on.

Classpath: Debian's ``zookeeper.jar`` names its dependencies in its manifest (``Class-Path``), so it
is enough on its own.  The wildcard ``/usr/share/java/*`` is *not* usable on a Debian machine with
many Java packages: it brings six SLF4J bindings (the one picked is arbitrary — ``slf4j-nop`` here,
so no log at all) and both ``log4j-over-slf4j`` and ``slf4j-log4j12`` (a hard error when the latter
wins).  We add exactly one binding (slf4j-log4j12 + log4j 1.2, both dependencies of the package) and
the example ``log4j.properties`` from ``conf_example``, and point its ROLLINGFILE appender at the
temporary folder, so nothing reaches the test's stdout.

The gate.  ZooKeeper opens its client port *before* it has loaded its database; a client that
connects in that window (tens of ms) is refused with "ZooKeeperServer not running", and closing
that connection hits a NullPointerException (``zkDb`` is still null: ZOOKEEPER-5051, open upstream,
present in Debian's 3.8.0) that leaves the socket open: the client then waits for its handshake
timeout (= its session timeout) before trying again.  kazoo clients reconnecting every few hundred
ms hit that window now and then, which made restart drills flaky.  So clients never see
ZooKeeper's own port: they connect to ``hosts``, a small forwarder (:class:`_Gate`) that listens
only while the server is up *and serving* (``srvr`` reports a mode), and that drops every
connection when the server is stopped.  For clients it looks exactly like the server's port.

In a network namespace (``netns=``, tests/test_pods.py) the server is started with ``ip netns exec``
and listens on that namespace's address, without the gate: clients in other namespaces connect to
it straight, as pods connect to a ZooKeeper service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from tests.ports import free_port

JAVA_DIR = Path("/usr/share/java")
ZK_JAR = JAVA_DIR / "zookeeper.jar"
ZK_CONF_EXAMPLE = Path("/etc/zookeeper/conf_example")
# One SLF4J binding and its backend; both come with Debian's libzookeeper-java dependencies.
LOG_JARS = (JAVA_DIR / "slf4j-log4j12.jar", JAVA_DIR / "log4j-1.2.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
INSTALL_HINT = "run scripts/test-deps.sh (as root) to install Debian's zookeeper package"


class ZooKeeperNotInstalled(RuntimeError):
    """The ZooKeeper jar, its config example or java is missing on this machine."""


def four_letter_word(port: int, word: str, timeout: float = 1.0, host: str = "127.0.0.1") -> str:
    """Send a 4lw command (``ruok``, ``srvr``, ``stat``) and return the reply ("" when nobody answers)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while chunk := s.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # ZooKeeper's listener sets SO_REUSEADDR too, so TIME_WAIT leftovers do not block it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class _Gate:
    """A loopback TCP forwarder from ``port`` to ``target_port``, listening only while open.

    Closed: the port refuses connections (like a stopped server) and every forwarded connection is
    shut down (like a server that died).  A thread per direction per connection: tests open tens.
    """

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    def open(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            deadline = time.monotonic() + 10
            while True:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    listener.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            listener.listen(64)
            listener.settimeout(0.1)  # lets the accept loop notice close()
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), name="zk-gate", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            _shut(conn)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                if self._listener is not listener:
                    return
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                _shut(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    _shut(client)
                    _shut(upstream)
                    return
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="zk-gate-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end both, as a server process exiting does.
        with self._lock:
            self._conns.discard(src)
            self._conns.discard(dst)
        _shut(src)
        _shut(dst)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class ZooKeeperServer:
    """One standalone ZooKeeper server; ``hosts`` is what a client connects to."""

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        port: int | None = None,
        *,
        netns: str | None = None,
        ip: str = "127.0.0.1",
    ) -> None:
        self.dir = Path(tmpdir)
        self.data_dir = self.dir / "data"
        self.netns = netns
        self.ip = ip
        self._gate: _Gate | None
        if netns is None:
            self.port = port or free_port()  # what clients use (the gate)
            self.server_port = free_port()  # ZooKeeper's own client port, behind the gate
            self._gate = _Gate(self.port, self.server_port)
        else:  # the namespace's own ports: no gate (it could only listen in the test's namespace)
            self.port = self.server_port = port or 2181
            self._gate = None
        self.log_file = self.dir / "zookeeper.log"  # log4j ROLLINGFILE (the server's own log)
        self.out_file = self.dir / "zookeeper.out"  # the JVM's stdout/stderr (SLF4J notices, crashes)
        self._proc: subprocess.Popen[bytes] | None = None
        # Set by ZooKeeperEnsemble: this member's id and the ``server.N=...`` lines of all members.
        self.myid: int | None = None
        self.quorum_config: list[str] = []

    @property
    def hosts(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @staticmethod
    def check_installed() -> None:
        missing = [str(p) for p in (ZK_JAR, ZK_CONF_EXAMPLE, *LOG_JARS) if not p.exists()]
        if shutil.which("java") is None:
            missing.append("java")
        if missing:
            raise ZooKeeperNotInstalled(
                f"ZooKeeper for tests is missing ({', '.join(missing)}): {INSTALL_HINT}"
            )

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "zoo.cfg"
        cfg.write_text(
            "\n".join(
                [
                    "tickTime=500",  # min session timeout 2 ticks = 1 s, max 20 ticks = 10 s
                    "initLimit=10",
                    "syncLimit=5",
                    f"dataDir={self.data_dir}",
                    f"clientPort={self.server_port}",
                    f"clientPortAddress={self.ip}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,cons",
                    "maxClientCnxns=0",
                    *self.quorum_config,
                    "",
                ]
            )
        )
        if self.myid is not None:
            (self.data_dir / "myid").write_text(f"{self.myid}\n")
        return cfg

    def start(self, timeout: float = 30.0) -> None:
        """Start the server, wait until it answers ``imok`` to ``ruok`` and serves, then open ``hosts``."""
        if self.running:
            return
        self.launch()
        self.wait_serving(timeout)

    def launch(self) -> None:
        """Start the JVM and return at once (an ensemble member serves only once a quorum is up)."""
        self.check_installed()
        if self.running:
            return
        cfg = self._write_config()
        classpath = ":".join(str(p) for p in (ZK_CONF_EXAMPLE, ZK_JAR, *LOG_JARS))
        netns = ["ip", "netns", "exec", self.netns] if self.netns else []  # execs java: same pid
        cmd = [
            *netns,
            "java",
            "-Xmx256m",
            "-XX:+UseSerialGC",  # one small heap, no GC threads per core: quicker start on 2 vCPUs
            "-Xshare:auto",
            f"-Dzookeeper.log.dir={self.dir}",
            "-Dzookeeper.root.logger=INFO,ROLLINGFILE",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            classpath,
            MAIN_CLASS,
            str(cfg),
        ]
        out = self.out_file.open("ab")
        try:
            # Own process group: stop() signals the JVM and anything it spawned, never the test runner.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until the launched server answers ``imok`` and reports a mode, then open ``hosts``."""
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited with {self._proc.returncode} during start:\n{self._tail_logs()}"
                )
            # "imok" only says the process is up; "srvr" reports a Mode once the database is loaded.
            if self.mode() is not None:
                if self._gate is not None:
                    self._gate.open()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"ZooKeeper did not answer ruok on {self.hosts} within {timeout} s:\n{self._tail_logs()}"
        )

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower`` once the server serves; None before (or when down)."""
        if four_letter_word(self.server_port, "ruok", timeout=0.5, host=self.ip) != "imok":
            return None
        for line in four_letter_word(self.server_port, "srvr", timeout=0.5, host=self.ip).splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def session_ids(self) -> set[int]:
        """The sessions that have a connection to this server now (``cons``)."""
        return {
            int(m, 16)
            for m in re.findall(
                r"sid=0x([0-9a-f]+)", four_letter_word(self.server_port, "cons", host=self.ip)
            )
        }

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``; ``kill=True`` goes straight to SIGKILL).

        Returns once the process is gone and the client port accepts no more connections.
        """
        if self._gate is not None:
            self._gate.close()  # first: no client reaches a server that is shutting down
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Children of the JVM (there are none today) would share the group: make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self.netns is None:  # a namespace's port is not visible from here
            self._wait_port_free()

    def restart(self, down_for: float = 0.0, timeout: float = 30.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again with the same dataDir and port."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start(timeout=timeout)

    @contextlib.contextmanager
    def cut_off(self) -> Iterator[KazooClient]:
        """Cut every client off the running server for the block, as a network partition would: the
        gate drops their connections and refuses new ones, while the server and its sessions live on
        (a session outlives a cut shorter than its timeout).  Yields a kazoo client connected to the
        server itself, behind the gate, to change what the cut-off clients find when they are back."""
        if self._gate is None:
            raise RuntimeError("a server in a network namespace has no gate to close")
        self._gate.close()
        inside = KazooClient(hosts=f"{self.ip}:{self.server_port}", timeout=10.0)
        try:
            inside.start(timeout=10)
            yield inside
        finally:
            inside.stop()
            inside.close()
            self._gate.open()

    def _wait_port_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_is_free(self.server_port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"port {self.server_port} still busy {timeout} s after ZooKeeper stopped")

    def expire_session(self, session_id: int, password: bytes | None = None, timeout: float = 10.0) -> None:
        """Force the expiry of a client's session, as ZooKeeper's own tests do.

        A second client attaches to the same session (the server moves the session to the new
        connection and drops the old one), then closes it: the session ends and its ephemeral nodes
        go.  The original client learns about it on its next reconnect (SessionExpired).  Without
        ``password`` (a session of another process, known by a node's ``ephemeralOwner``), the
        password is derived as the server does: see :func:`session_password`.
        """
        if password is None:
            password = session_password(session_id)
        thief = KazooClient(hosts=self.hosts, client_id=(session_id, password), timeout=10.0)
        try:
            thief.start(timeout=timeout)
            got = thief.client_id
            # A wrong password or a session already gone: the server hands out a new session instead.
            if got is None or got[0] != session_id:
                raise RuntimeError(f"could not attach to session 0x{session_id:x} (got {got!r})")
        finally:
            thief.stop()  # sends closeSession: the server ends the session now, not after its timeout
            thief.close()

    def _tail_logs(self, lines: int = 40) -> str:
        parts = []
        for f in (self.out_file, self.log_file):
            if f.exists():
                text = f.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {f} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log written)"


# ZooKeeper's server derives a session's password from its id (ZooKeeperServer.generatePasswd): 16
# bytes from java.util.Random seeded with ``id ^ 0xB3415C00``.  A test can thus take over the
# session of a sidecar *process* knowing only its id (a node's ephemeralOwner), with no hook in
# regproxy.  java.util.Random is the 48-bit linear congruential generator its Javadoc specifies.
_SUPER_SECRET = 0xB3415C00
_LCG_MULT, _LCG_ADD, _LCG_MASK = 0x5DEECE66D, 0xB, (1 << 48) - 1


# Where Dubbo's nodes live: interface-level (/dubbo) and application-level instances (/services).
DUBBO_ROOTS = ("/dubbo", "/services")


def delete_trees(client: Any, *paths: str) -> None:
    """Delete each of ``paths`` (DUBBO_ROOTS when none is given) with all below it, through a
    started kazoo ``client``; one that does not exist is no error."""
    from kazoo.exceptions import NoNodeError

    for path in paths or DUBBO_ROOTS:
        with contextlib.suppress(NoNodeError):
            client.delete(path, recursive=True)


async def emptied(server: ZooKeeperServer, *paths: str) -> KazooClient:
    """A module fixture's start on the session's ZooKeeper: the server running (a drill before may
    have stopped it and failed before starting it again), a started kazoo client, and ``paths``
    (DUBBO_ROOTS when none is given) deleted through it.  The caller stops the client."""
    if not server.running:
        server.start()
    client = KazooClient(hosts=server.hosts, timeout=10.0)
    await asyncio.to_thread(client.start, 15)
    await asyncio.to_thread(delete_trees, client, *paths)
    return client


def session_password(session_id: int) -> bytes:
    seed = ((session_id ^ _SUPER_SECRET) ^ _LCG_MULT) & _LCG_MASK
    out = bytearray()
    while len(out) < 16:
        seed = (seed * _LCG_MULT + _LCG_ADD) & _LCG_MASK
        word = seed >> 16  # next(32): the high 32 of the 48 bits
        for _ in range(min(4, 16 - len(out))):  # nextBytes: low byte first
            out.append(word & 0xFF)
            word >>= 8
    return bytes(out)


class ZooKeeperEnsemble:
    """Three (``size``) ZooKeeper servers forming one ensemble on loopback.

    Each member has its own folder, client port (behind its gate, as a standalone server), quorum
    port and leader-election port; ``hosts`` lists every member's client address, as a client
    configured with the whole ensemble is.  ``srvr`` tells each member's role (:meth:`leader`).
    """

    def __init__(self, tmpdir: str | os.PathLike[str], size: int = 3) -> None:
        base = Path(tmpdir)
        self.members = [ZooKeeperServer(base / f"zk{i}") for i in range(1, size + 1)]
        quorum = [
            f"server.{i}=127.0.0.1:{free_port()}:{free_port()}" for i in range(1, size + 1)
        ]  # fmt: skip
        for i, member in enumerate(self.members, start=1):
            member.dir.mkdir(parents=True, exist_ok=True)
            member.myid = i
            member.quorum_config = quorum

    @property
    def hosts(self) -> str:
        return ",".join(m.hosts for m in self.members)

    def start(self, timeout: float = 60.0) -> None:
        """Launch every member, then wait until each serves (as leader or follower)."""
        ZooKeeperServer.check_installed()
        for member in self.members:
            member.launch()
        deadline = time.monotonic() + timeout
        try:
            for member in self.members:
                member.wait_serving(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.stop(kill=True)

    def modes(self) -> dict[int, str | None]:
        return {m.myid or 0: m.mode() for m in self.members}

    def leader(self) -> ZooKeeperServer | None:
        """The member that is leader now (None during an election)."""
        for member in self.members:
            if member.running and member.mode() == "leader":
                return member
        return None

    def serving(self) -> list[ZooKeeperServer]:
        """Members running and part of a quorum (leader or follower) now."""
        return [m for m in self.members if m.running and m.mode() in ("leader", "follower")]
