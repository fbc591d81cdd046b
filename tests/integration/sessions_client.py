"""sessions_client.py: a small pure-Python client of the workload session protocol
(docs/session-protocol.md, include/luofleet/session_proto.h), for the integration suites'
hostile-input tests: it speaks the wire format itself (no libluofleet-session), so a test can
send what the library never would (wrong sizes, bad magic, a name with '/', two descriptors,
requests before HELLO) and read exactly what the broker answers.

One Client = one SOCK_SEQPACKET connection. Requests are numbered 1, 2, 3, ...; request()
sends one and returns its answer (a Msg), collecting entries (list/show) and events that
arrive meanwhile (Client.events). Python 3 standard library only.

Paths longer than a Unix socket address allows (108 bytes; CI clones into deep folders) are
reached through "/proc/self/fd/N/NAME", N an O_PATH descriptor of the socket's directory, as
the agent binds them (common/util.c unix_sockaddr)."""

import errno
import os
import socket
import struct

MAGIC = 0x53464C53
VERSION = 1
FMT = "<IHHIiQQQ64s256s"
SIZE = struct.calcsize(FMT)
assert SIZE == 360, SIZE

# enum lfs_type
HELLO, SESSION_CREATE, SESSION_RETRIEVE, SESSION_FINISH, SESSION_CLOSE, PRESERVE, \
    UNPRESERVE, RETRIEVE_FD, LIST, SHOW, CONFIRM, VETO, EVENT, INFO, FD_INFO = range(1, 16)
TYPE_NAMES = {HELLO: "hello", SESSION_CREATE: "session-create",
              SESSION_RETRIEVE: "session-retrieve", SESSION_FINISH: "session-finish",
              SESSION_CLOSE: "session-close", PRESERVE: "preserve", UNPRESERVE: "unpreserve",
              RETRIEVE_FD: "retrieve-fd", LIST: "list", SHOW: "show", CONFIRM: "confirm",
              VETO: "veto", EVENT: "event", INFO: "info", FD_INFO: "fd-info"}

HELLO_REGISTER = 1

# enum lfs_event_kind
EV_PREPARE, EV_CANCEL, EV_REBOOT, EV_UPDATED, EV_FINISH = range(1, 6)
EVENT_NAMES = {EV_PREPARE: "prepare", EV_CANCEL: "cancel", EV_REBOOT: "reboot",
               EV_UPDATED: "updated", EV_FINISH: "finish"}

# enum lfs_phase
PHASES = {1: "outgoing", 2: "incoming", 3: "retrieved", 4: "finished"}

# enum luo_state (the HELLO answer's arg)
STATES = {0: "undefined", 1: "normal", 2: "prepared", 3: "frozen", 4: "updated"}

SUN_PATH_MAX = 107  # sizeof(sun_path) - 1


class Msg:
    """One decoded message (fields as in struct lfs_msg; strings up to their first NUL)."""

    __slots__ = ("magic", "version", "type", "seq", "result", "token", "arg", "arg2",
                 "session", "text", "fd", "raw")

    def __init__(self, raw, fd=None):
        (self.magic, self.version, self.type, self.seq, self.result, self.token, self.arg,
         self.arg2, session, text) = struct.unpack(FMT, raw)
        self.session = session.split(b"\0", 1)[0].decode("ascii", "replace")
        self.text = text.split(b"\0", 1)[0].decode("ascii", "replace")
        self.fd = fd
        self.raw = raw

    @property
    def errno(self):
        """The answer's errno (0 for success)."""
        return -self.result

    @property
    def errno_name(self):
        return errno.errorcode.get(-self.result, str(-self.result)) if self.result else "OK"

    def __repr__(self):
        return ("<Msg %s seq=%d result=%s token=%d arg=%d arg2=%d session=%r text=%r fd=%r>"
                % (TYPE_NAMES.get(self.type, self.type), self.seq, self.errno_name, self.token,
                   self.arg, self.arg2, self.session, self.text, self.fd))


def pack(type_, seq, result=0, token=0, arg=0, arg2=0, session=b"", text=b"", magic=MAGIC,
         version=VERSION):
    """The 360 bytes of one message (strings as given, zero-padded; no checks)."""
    if isinstance(session, str):
        session = session.encode()
    if isinstance(text, str):
        text = text.encode()
    return struct.pack(FMT, magic, version, type_, seq, result, token, arg, arg2, session, text)


class ProtocolError(AssertionError):
    pass


class Closed(ConnectionError):
    """The broker closed the connection (EOF) while we waited for an answer."""


def connect_path(path):
    """A connected SOCK_SEQPACKET socket to path (long paths through /proc/self/fd/N)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        if len(path.encode()) <= SUN_PATH_MAX:
            s.connect(path)
        else:
            d, name = os.path.split(path)
            dfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                s.connect("/proc/self/fd/%d/%s" % (dfd, name))
            finally:
                os.close(dfd)
    except BaseException:
        s.close()
        raise
    return s


class Client:
    """One connection to the broker. Use as a context manager, or close()."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.sock = connect_path(path)
        self.sock.settimeout(timeout)
        self.seq = 0
        self.events = []   # LFS_EVENT messages received so far (Msg)
        self.entries = []  # the last list/show answer's entries
        self.hello_answer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- raw I/O

    def send_raw(self, data, fds=()):
        """One datagram as given (any size), with these descriptors."""
        if fds:
            return socket.send_fds(self.sock, [data], list(fds))
        return self.sock.send(data)

    def send(self, type_, token=0, arg=0, arg2=0, session="", text="", fd=None, seq=None,
             **kw):
        """One request (numbered unless seq is given); returns its seq."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        data = pack(type_, seq, token=token, arg=arg, arg2=arg2, session=session, text=text,
                    **kw)
        self.send_raw(data, [fd] if fd is not None else ())
        return seq

    def recv(self, timeout=None):
        """The next message (Msg), or None at EOF. Raises socket.timeout. A descriptor that
        comes with it is in msg.fd (ours to close)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        data, fds, flags, _ = socket.recv_fds(self.sock, SIZE + 64, 4)
        if not data and not fds:
            return None
        if len(data) != SIZE or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) > 1:
            for f in fds:
                os.close(f)
            raise ProtocolError("malformed datagram from the broker: %d bytes, flags %#x, "
                                "%d fds" % (len(data), flags, len(fds)))
        m = Msg(data, fds[0] if fds else None)
        if m.magic != MAGIC or m.version != VERSION:
            raise ProtocolError("bad magic/version from the broker: %r" % m)
        return m

    def wait_answer(self, seq, type_, timeout=10.0):
        """Read until the answer of request seq; entries go to self.entries, events to
        self.events. Raises Closed at EOF."""
        self.entries = []
        while True:
            m = self.recv(timeout)
            if m is None:
                raise Closed("the broker closed the connection (waiting for the answer to "
                             "%s seq %d)" % (TYPE_NAMES.get(type_, type_), seq))
            if m.type == EVENT and m.seq == 0:
                self.events.append(m)
                continue
            if m.seq != seq:
                raise ProtocolError("answer for seq %d while waiting for %d: %r"
                                    % (m.seq, seq, m))
            if m.type in (INFO, FD_INFO):
                self.entries.append(m)
                continue
            if m.type != type_:
                raise ProtocolError("answer of type %s to a %s: %r"
                                    % (TYPE_NAMES.get(m.type, m.type),
                                       TYPE_NAMES.get(type_, type_), m))
            return m

    def request(self, type_, timeout=10.0, **kw):
        """Send one request and return its answer (a Msg; .errno 0 on success)."""
        seq = self.send(type_, **kw)
        return self.wait_answer(seq, type_, timeout)

    def next_event(self, timeout=10.0):
        """The next LFS_EVENT (queued first). Raises socket.timeout."""
        if self.events:
            return self.events.pop(0)
        while True:
            m = self.recv(timeout)
            if m is None:
                raise Closed("the broker closed the connection (waiting for an event)")
            if m.type == EVENT:
                return m
            raise ProtocolError("unexpected message while waiting for an event: %r" % m)

    def closed_by_peer(self, timeout=5.0):
        """True when the broker closes the connection within timeout (any message that
        arrives first is kept in self.events if it is an event, else reported)."""
        deadline = timeout
        self.sock.settimeout(deadline)
        try:
            while True:
                data, fds, flags, _ = socket.recv_fds(self.sock, SIZE + 64, 4)
                for f in fds:
                    os.close(f)
                if not data:
                    return True
                m = Msg(data) if len(data) == SIZE else None
                if m is not None and m.type == EVENT:
                    self.events.append(m)
                    continue
                raise ProtocolError("the broker answered instead of closing: %r"
                                    % (m or data))
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    # -- the requests

    def hello(self, name="py-client", flags=0):
        m = self.request(HELLO, text=name, arg=flags)
        self.hello_answer = m
        return m

    def create(self, session):
        return self.request(SESSION_CREATE, session=session)

    def retrieve(self, session):
        return self.request(SESSION_RETRIEVE, session=session)

    def finish(self, session):
        return self.request(SESSION_FINISH, session=session)

    def close_session(self, session):
        return self.request(SESSION_CLOSE, session=session)

    def preserve(self, session, fd, token):
        return self.request(PRESERVE, session=session, token=token, fd=fd)

    def unpreserve(self, session, token):
        return self.request(UNPRESERVE, session=session, token=token)

    def retrieve_fd(self, session, token):
        return self.request(RETRIEVE_FD, session=session, token=token)

    def list(self):
        """(answer, [(name, phase string, bytes, fds)])."""
        m = self.request(LIST)
        return m, [(e.session, PHASES.get(e.arg, e.arg), e.token, e.arg2)
                   for e in self.entries]

    def show(self, session):
        """(answer, [(token, bytes, retrieved)])."""
        m = self.request(SHOW, session=session)
        return m, [(e.token, e.arg, bool(e.arg2)) for e in self.entries]

    def confirm(self, event_id):
        return self.request(CONFIRM, arg=event_id)

    def veto(self, event_id, reason=""):
        return self.request(VETO, arg=event_id, text=reason)


def memfd(size, name="py-memfd", fill=None):
    """A memfd of size bytes (filled with fill, a bytes pattern repeated, if given)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    if fill:
        block = (fill * (65536 // len(fill) + 1))[:65536]
        off = 0
        while off < size:
            n = os.pwrite(fd, block[:min(len(block), size - off)], off)
            off += n
    return fd
