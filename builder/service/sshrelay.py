"""`--ssh` through the server: the client's agent, reached over the build's own connection.

For each ssh id the server listens on a socket of its own (in the build's private directory,
gone with it); the RUN that mounts the id gets that socket. Every connection the RUN makes is
announced to the client (`ssh-open`, a connection number), which connects to its local agent;
bytes go both ways as SSH frames (4-byte connection number + data) and `ssh-close` ends one side.
Client-to-server frames travel in the request body, which stays open for the build's duration.
Nothing of the agent's traffic is kept.
"""

from __future__ import annotations

import os
import socket
import threading

from builder.service import protocol


class AgentRelay:
    def __init__(self, directory: str, ids: list[str], send_frame):
        os.makedirs(directory, mode=0o700)
        self.send_frame = send_frame   # to the client; called from the pump thread only
        self.paths: dict[str, str] = {}
        self.listeners: dict[socket.socket, str] = {}
        self.conns: dict[int, socket.socket] = {}
        self.by_socket: dict[socket.socket, int] = {}
        self.lock = threading.Lock()
        self.next_conn = 1
        # Bound through /proc/self/fd/N/: a socket's path may be only 107 bytes, a store's is longer.
        directory_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        try:
            for index, ssh_id in enumerate(ids):
                path = os.path.join(directory, f"{index}.sock")
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(f"/proc/self/fd/{directory_fd}/{index}.sock")
                os.chmod(path, 0o666)   # a RUN with a non-root USER connects too; the directory is 0700
                listener.listen(8)
                self.paths[ssh_id] = path
                self.listeners[listener] = ssh_id
        finally:
            os.close(directory_fd)

    def sockets(self) -> list[socket.socket]:
        with self.lock:
            return [*self.listeners, *self.by_socket]

    def ready(self, sock: socket.socket) -> None:
        """SOCK (from sockets()) is readable: a new connection from a RUN, or bytes from one."""
        if sock in self.listeners:
            conn, _ = sock.accept()
            with self.lock:
                number, self.next_conn = self.next_conn, self.next_conn + 1
                self.conns[number] = conn
                self.by_socket[conn] = number
            self.send_frame(protocol.message("ssh-open", conn=number, id=self.listeners[sock]))
            return
        number = self.by_socket.get(sock)
        if number is None:
            return
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if data:
            self.send_frame(protocol.frame(protocol.SSH, number.to_bytes(4, "big") + data))
        else:
            self._drop(number)
            self.send_frame(protocol.message("ssh-close", conn=number))

    # What the client sends (called from the thread that reads the request body).

    def from_client(self, channel: int, payload: bytes) -> None:
        import json

        if channel == protocol.SSH and len(payload) >= 4:
            with self.lock:
                conn = self.conns.get(int.from_bytes(payload[:4], "big"))
            if conn is not None:
                try:
                    conn.sendall(payload[4:])
                except OSError:
                    pass
        elif channel == protocol.MESSAGE:
            doc = json.loads(payload)
            if doc.get("type") == "ssh-close" and isinstance(doc.get("conn"), int):
                with self.lock:
                    conn = self.conns.get(doc["conn"])
                if conn is not None:
                    try:
                        conn.shutdown(socket.SHUT_WR)   # the agent is done; the RUN reads to the end
                    except OSError:
                        pass

    def _drop(self, number: int) -> None:
        with self.lock:
            conn = self.conns.pop(number, None)
            if conn is not None:
                self.by_socket.pop(conn, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for number in list(self.conns):
            self._drop(number)
        for listener in list(self.listeners):
            listener.close()
        self.listeners.clear()


class ClientAgents:
    """The client's side: one local agent connection per `ssh-open`, its bytes sent upstream."""

    def __init__(self, sources: dict[str, str], upstream):
        self.sources = sources          # ssh id -> the local agent socket
        self.upstream = upstream        # a ChunkedWriter; its lock serialises the threads
        self.lock = threading.Lock()
        self.conns: dict[int, socket.socket] = {}

    def send(self, data: bytes) -> None:
        with self.lock:
            self.upstream.write(data)
            self.upstream.flush()

    def handle(self, kind: str, doc: dict, payload: bytes) -> None:
        if kind == "ssh-open":
            number = doc["conn"]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.sources[doc["id"]])
            except (OSError, KeyError):
                sock.close()
                self.send(protocol.message("ssh-close", conn=number))
                return
            self.conns[number] = sock
            threading.Thread(target=self._pump, args=(number, sock), daemon=True).start()
        elif kind == "ssh-close":
            sock = self.conns.get(doc.get("conn"))
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        elif kind == "ssh-data" and len(payload) >= 4:
            sock = self.conns.get(int.from_bytes(payload[:4], "big"))
            if sock is not None:
                try:
                    sock.sendall(payload[4:])
                except OSError:
                    pass

    def _pump(self, number: int, sock: socket.socket) -> None:
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                self.send(protocol.frame(protocol.SSH, number.to_bytes(4, "big") + data))
        except OSError:
            pass
        finally:
            self.send(protocol.message("ssh-close", conn=number))
            sock.close()

    def close(self) -> None:
        for sock in list(self.conns.values()):
            try:
                sock.close()
            except OSError:
                pass
