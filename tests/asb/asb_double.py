#!/usr/bin/python3
"""A test double of Azure Service Bus (ASB) over AMQP 1.0, for the e2e suites.

One process: a proton reactor speaking AMQP 1.0 on 127.0.0.1:PORT (plain TCP,
no TLS; SASL ANONYMOUS/PLAIN, then CBS put-token with SAS tokens) and a
control HTTP server on 127.0.0.1:CONTROL_PORT (GET /state, GET /messages,
POST /send, POST /reject-sends, POST /disconnect). It prints one line `ready`
on stdout once both listen. See README.md beside this file for the behaviour
modelled, the control API's JSON shapes, and what real ASB does that this
double does not.

All broker state lives on the reactor thread; the HTTP threads hand their
work to it through an EventInjector (Double.call).

    asb_double.py --port P --control-port C --namespace NS
                  [--key-name NAME --key SECRET] [--lock-ms 5000]
                  [--max-delivery-count 10] [--topic TOPIC:sub1,sub2 ...]

Needs Debian's python3-qpid-proton (`apt-get install python3-qpid-proton`),
which installs for /usr/bin/python3 only.
"""

import argparse
import base64
import hashlib
import heapq
import hmac
import itertools
import json
import queue
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from proton import (UNDESCRIBED, Array, Condition, Data, Delivery, Described,
                        Endpoint, Handler, Link, Message, Terminus, Transport,
                        int32, symbol, timestamp)
    from proton._handlers import IOHandler
    from proton.reactor import ApplicationEvent, Container, EventInjector
except ImportError:  # pragma: no cover - the message is the point
    sys.stderr.write("asb_double.py needs the proton module: apt-get install -y python3-qpid-proton "
                     "(and run it with /usr/bin/python3)\n")
    sys.exit(2)

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
SASL_MECHS = ("ANONYMOUS", "PLAIN", "MSSBCBS")

SAS_TYPE = "servicebus.windows.net:sastoken"
ANN_SEQ = symbol("x-opt-sequence-number")
ANN_ENQUEUED = symbol("x-opt-enqueued-time")
ANN_LOCKED_UNTIL = symbol("x-opt-locked-until")
ANN_LOCK_TOKEN = symbol("x-opt-lock-token")
ANN_SCHEDULED = symbol("x-opt-scheduled-enqueue-time")
ANN_DL_SOURCE = symbol("x-opt-deadletter-source")
TIME_ANNOTATIONS = {"x-opt-scheduled-enqueue-time", "x-opt-enqueued-time", "x-opt-locked-until"}

COND_UNAUTHORIZED = "amqp:unauthorized-access"
COND_NOT_FOUND = "amqp:not-found"
COND_NOT_ALLOWED = "amqp:not-allowed"
COND_LOCK_LOST = "com.microsoft:message-lock-lost"
COND_DEAD_LETTER = "com.microsoft:dead-letter"

TICK_S = 0.02          # timer resolution: scheduled messages, lock and token expiry
LINK_CREDIT = 1000     # credit given to a client's sending link
MAX_EVENTS = 200_000


def now_ms():
    return int(time.time() * 1000)


def log(text):
    sys.stderr.write("asb_double: %s\n" % text)
    sys.stderr.flush()


# --------------------------------------------------------------------------
# JSON <-> AMQP values

def jsonable(v):
    """An AMQP value (as proton decodes it) as plain JSON data."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, dict):
        return {str(jsonable(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, Array):
        return [jsonable(x) for x in v.elements]
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Described):
        return {"descriptor": jsonable(v.descriptor), "value": jsonable(v.value)}
    return repr(v)


def body_text(msg):
    """The body as text, and which kind of section carried it."""
    b = msg.body
    if isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(b).decode("utf-8", "replace"), ("data" if msg.inferred else "value")
    if b is None:
        return "", "none"
    if isinstance(b, str):
        return str(b), "value"
    return json.dumps(jsonable(b)), ("sequence" if msg.inferred else "value")


PROPERTY_FIELDS = [
    # (json name, proton Message attribute)
    ("message_id", "id"), ("user_id", "user_id"), ("to", "address"), ("subject", "subject"),
    ("reply_to", "reply_to"), ("correlation_id", "correlation_id"),
    ("content_type", "content_type"), ("content_encoding", "content_encoding"),
    ("absolute_expiry_time", "expiry_time"), ("creation_time", "creation_time"),
    ("group_id", "group_id"), ("group_sequence", "group_sequence"),
    ("reply_to_group_id", "reply_to_group_id"),
]


def message_properties(msg):
    out = {}
    for name, attr in PROPERTY_FIELDS:
        v = getattr(msg, attr, None)
        if v is None or v == "" or (attr in ("expiry_time", "creation_time", "group_sequence") and not v):
            continue
        if attr == "user_id" and not v:
            continue
        if attr == "content_encoding" and str(v) == "None":
            continue  # proton-python reads an absent content-encoding as symbol('None')
        if attr in ("expiry_time", "creation_time"):
            v = int(v * 1000)  # proton gives seconds as float
        out[name] = jsonable(v)
    return out


def message_from_json(j):
    """A proton Message from the control API's JSON shape."""
    m = Message()
    body = j.get("body", "")
    if not isinstance(body, str):
        body = json.dumps(body)
    if j.get("body_type", "data") == "value":
        m.body = body
        m.inferred = False
    else:
        m.body = body.encode("utf-8")
        m.inferred = True
    props = j.get("properties") or {}
    for name, attr in PROPERTY_FIELDS:
        if name in props and props[name] is not None and attr not in ("expiry_time", "creation_time"):
            setattr(m, attr, props[name])
    app = j.get("application_properties") or {}
    if app:
        m.properties = dict(app)
    ann = j.get("message_annotations") or {}
    if ann:
        conv = {}
        for k, v in ann.items():
            if k in TIME_ANNOTATIONS and isinstance(v, int):
                v = timestamp(v)
            conv[symbol(k)] = v
        m.annotations = conv
    return m


def new_lock_token():
    """A random lock token whose .NET-layout bytes (the delivery tag) are all
    below 0x80: proton-python passes a tag as a C string from a Python str, so
    only ASCII bytes survive unchanged. 112 random bits, unique enough."""
    return uuid.UUID(bytes_le=bytes(b & 0x7F for b in uuid.uuid4().bytes))


def ascii_tag(b):
    return b.decode("ascii")


def tag_bytes(tag):
    """A delivery tag as bytes (proton hands it over as a str with surrogate escapes)."""
    if isinstance(tag, str):
        return tag.encode("utf-8", "surrogateescape")
    return bytes(tag)


# --------------------------------------------------------------------------
# SASL, done by hand: proton-c's built-in SASL (no cyrus here) offers only
# ANONYMOUS and EXTERNAL as a server. A thread answers the SASL layer
# (ANONYMOUS, PLAIN, MSSBCBS; credentials ignored: authorization is by CBS),
# then hands the socket, positioned at the client's AMQP header, to the reactor.

def _sasl_frame(descriptor, fill):
    d = Data()
    d.put_described()
    d.enter()
    d.put_ulong(descriptor)
    d.put_list()
    d.enter()
    fill(d)
    d.exit()
    d.exit()
    body = d.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


def _mechanisms_frame():
    def fill(d):
        d.put_array(False, Data.SYMBOL)
        d.enter()
        for m in SASL_MECHS:
            d.put_symbol(m)
        d.exit()
    return _sasl_frame(0x40, fill)


def _outcome_frame(code):
    return _sasl_frame(0x44, lambda d: d.put_ubyte(code))


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed during SASL")
        buf += chunk
    return buf


def _peek_header(sock, deadline):
    while True:
        head = sock.recv(8, socket.MSG_PEEK)
        if len(head) >= 8 or not head:
            return head
        if time.time() > deadline:
            return head
        time.sleep(0.005)


def sasl_handshake(sock):
    """Runs the server side of SASL; returns the mechanism, or raises."""
    sock.settimeout(10)
    head = _peek_header(sock, time.time() + 10)
    if head != SASL_HEADER:
        # Azure Service Bus needs the SASL layer: answer with the header we
        # speak and close, as AMQP says for a header we do not accept (read
        # what was sent first, so the close is a FIN, not a reset).
        try:
            if head:
                _recv_exact(sock, len(head))
            sock.sendall(SASL_HEADER)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raise ConnectionError("no SASL header (got %r): this double, like ASB, requires SASL" % head)
    _recv_exact(sock, 8)
    sock.sendall(SASL_HEADER + _mechanisms_frame())
    size = struct.unpack(">I", _recv_exact(sock, 4))[0]
    rest = _recv_exact(sock, size - 4)
    doff, ftype = rest[0], rest[1]
    if ftype != 1:
        raise ConnectionError("expected a SASL frame, got type %d" % ftype)
    d = Data()
    d.decode(rest[doff * 4 - 4:])
    init = d.get_object()
    if not isinstance(init, Described) or int(init.descriptor) != 0x41:
        raise ConnectionError("expected sasl-init, got %r" % (init,))
    mech = str(init.value[0]) if init.value else ""
    if mech not in SASL_MECHS:
        sock.sendall(_outcome_frame(1))
        raise ConnectionError("SASL mechanism %r not offered" % mech)
    sock.sendall(_outcome_frame(0))
    sock.settimeout(None)
    return mech


# --------------------------------------------------------------------------
# The broker's state

class Stored:
    """One message held by an entity."""
    __slots__ = ("seq", "raw", "state", "delivery_count", "enqueued_ms", "lock", "locked_until",
                 "message_id")

    def __init__(self, seq, raw, enqueued_ms, delivery_count, message_id):
        self.seq = seq
        self.raw = raw
        self.state = "active"          # active | scheduled | locked
        self.delivery_count = delivery_count
        self.enqueued_ms = enqueued_ms
        self.lock = None                # uuid.UUID of the current lock
        self.locked_until = 0
        self.message_id = message_id


class Entity:
    """A queue, topic, subscription, or the dead-letter sub-queue of one."""

    def __init__(self, name, kind, parent=None):
        self.name = name
        self.kind = kind                # queue | topic | subscription | dlq
        self.parent = parent
        self.subs = []                  # of a topic
        self.msgs = {}                  # seq -> Stored
        self.available = []             # heap of seq of active messages
        self.receivers = []             # LinkState reading this entity
        self.next_seq = 1
        self.sent = 0
        self.delivered = 0
        self.completed = 0
        self.rr = 0
        self._dlq = None

    @property
    def dlq(self):
        if self._dlq is None:
            self._dlq = Entity(self.name + "/$DeadLetterQueue", "dlq", parent=self)
        return self._dlq


class ConnState:
    def __init__(self, cid, mech, peer):
        self.id = cid
        self.mech = mech
        self.peer = peer
        self.conn = None
        self.tokens = {}                # audience path (lower case) -> expiry ms
        self.links = []


class LinkState:
    def __init__(self, cs, link, role, address, node=None, entity=None, auth_path=None):
        self.cs = cs
        self.link = link
        self.role = role                # "in" (client sends) | "out" (client receives)
        self.address = address
        self.node = node                # "$cbs" | "<entity>/$management" (lower) for nodes
        self.entity = entity
        self.auth_path = auth_path      # None for $cbs
        self.pending = []               # responses waiting for credit
        self.closed = False
        self.target = None


class Double(Handler):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.namespace = args.namespace.lower().split(":")[0]
        self.lock_ms = args.lock_ms
        self.max_delivery_count = args.max_delivery_count
        self.entities = {}
        self.events = []
        self.conns = {}
        self.cid = itertools.count(1)
        self.heap_seq = itertools.count()
        self.locks = {}                 # lock token -> (Entity, Stored)
        self.lock_heap = []             # (locked_until, n, token)
        self.sched_heap = []            # (due ms, n, Entity, seq)
        self.token_heap = []            # (expiry ms, n, conn id)
        self.reject_plan = {}           # entity (lower) -> {count, condition, description}
        self.handover = queue.Queue()
        self.control = queue.Queue()
        self.injector = EventInjector()
        self.container = None
        for spec in args.topic or []:
            tname, _, subs = spec.partition(":")
            topic = self.entity(tname, create="topic")
            for s in [x for x in subs.split(",") if x]:
                sub = Entity("%s/Subscriptions/%s" % (tname, s), "subscription", parent=topic)
                self.entities[sub.name.lower()] = sub
                topic.subs.append(sub)

    # ---- bookkeeping ------------------------------------------------------

    def event(self, kind, entity=None, status=None, **extra):
        e = {"kind": kind, "entity": entity, "status": status, "at_ms": now_ms()}
        e.update(extra)
        self.events.append(e)
        if len(self.events) > MAX_EVENTS:
            del self.events[: len(self.events) - MAX_EVENTS]

    def entity(self, name, create="queue"):
        key = name.lower()
        e = self.entities.get(key)
        if e is None and create:
            e = Entity(name, create)
            self.entities[key] = e
        return e

    def resolve(self, path, create=True):
        """The Entity a normalized path names (DLQs included), or None."""
        low = path.lower()
        if low.endswith("/$deadletterqueue"):
            base = self.resolve(path[: -len("/$deadletterqueue")], create)
            if base is None or base.kind == "topic":
                return None
            return base.dlq
        parts = path.split("/")
        if len(parts) == 3 and parts[1].lower() == "subscriptions":
            return self.entities.get(low)
        return self.entity(path, create="queue" if create else None)

    # ---- reactor plumbing -------------------------------------------------

    def on_reactor_init(self, event):
        self.container = event.container
        self.container.selectable(self.injector)
        self.container.schedule(TICK_S, self)
        # Both ports listen (bound in main) and the reactor runs.
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    def guarded(fn):  # noqa: N805 - a decorator inside the class
        def wrap(self, *a, **kw):
            try:
                return fn(self, *a, **kw)
            except Exception as e:  # keep serving; make the bug visible
                log("internal error in %s: %s\n%s" % (fn.__name__, e, traceback.format_exc()))
                self.event("internal-error", None, str(e), where=fn.__name__)
        wrap.__name__ = fn.__name__
        return wrap

    @guarded
    def on_handover(self, event):
        while True:
            try:
                sock, peer, mech = self.handover.get_nowait()
            except queue.Empty:
                return
            sock.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, True)
            sock.setblocking(False)
            c = self.container.connection(self)
            c._acceptor = self   # tells proton's IO handler the socket is ours already
            t = Transport(Transport.SERVER)
            t.bind(c)
            s = self.container.selectable(delegate=sock)
            s._transport = t
            t._selectable = s
            IOHandler.update(t, s, self.container.now)
            cs = ConnState(next(self.cid), mech, "%s:%s" % peer[:2])
            cs.conn = c
            c.asb_id = cs.id
            self.conns[cs.id] = cs

    @guarded
    def on_control(self, event):
        while True:
            try:
                fn, args, box = self.control.get_nowait()
            except queue.Empty:
                return
            try:
                box["result"] = fn(*args)
            except Exception as e:
                box["error"] = "%s: %s" % (type(e).__name__, e)
                log(traceback.format_exc())
            box["done"].set()

    def call(self, fn, *args):
        """Run fn(*args) on the reactor thread (from an HTTP thread)."""
        box = {"done": threading.Event()}
        self.control.put((fn, args, box))
        self.injector.trigger(ApplicationEvent("control"))
        if not box["done"].wait(20):
            raise RuntimeError("the reactor did not answer within 20 s")
        if "error" in box:
            raise RuntimeError(box["error"])
        return box.get("result")

    def cs_of(self, conn):
        try:
            return self.conns.get(conn.asb_id)
        except AttributeError:
            return None

    @guarded
    def on_timer_task(self, event):
        now = now_ms()
        while self.sched_heap and self.sched_heap[0][0] <= now:
            _, _, ent, seq = heapq.heappop(self.sched_heap)
            m = ent.msgs.get(seq)
            if m is not None and m.state == "scheduled":
                m.state = "active"
                heapq.heappush(ent.available, seq)
                self.pump(ent)
        while self.lock_heap and self.lock_heap[0][0] <= now:
            _, _, token = heapq.heappop(self.lock_heap)
            entry = self.locks.get(token)
            if entry is not None and entry[1].locked_until <= now:
                self.expire_lock(token)
        while self.token_heap and self.token_heap[0][0] <= now:
            _, _, cid = heapq.heappop(self.token_heap)
            cs = self.conns.get(cid)
            if cs is not None:
                self.check_links(cs, now)
        self.container.schedule(TICK_S, self)

    # ---- connections and sessions ----------------------------------------

    @guarded
    def on_connection_remote_open(self, event):
        c = event.connection
        if c.state & Endpoint.LOCAL_UNINIT:
            c.container = "asb-double"
            c.open()

    @guarded
    def on_session_remote_open(self, event):
        s = event.session
        if s.state & Endpoint.LOCAL_UNINIT:
            s.open()

    @guarded
    def on_session_remote_close(self, event):
        s = event.session
        if s.state & Endpoint.LOCAL_ACTIVE:
            s.close()

    @guarded
    def on_connection_remote_close(self, event):
        c = event.connection
        self.drop_connection(c)
        if c.state & Endpoint.LOCAL_ACTIVE:
            c.close()

    @guarded
    def on_transport_closed(self, event):
        c = event.connection
        if c is not None:
            self.drop_connection(c)

    def drop_connection(self, c):
        cs = self.cs_of(c)
        if cs is None:
            return
        for ls in list(cs.links):
            self.drop_link(ls)
        self.conns.pop(cs.id, None)

    def drop_link(self, ls):
        # Locks taken through this link stay until they expire (as on ASB:
        # closing a receiver does not release its locked messages).
        ls.closed = True
        if ls in ls.cs.links:
            ls.cs.links.remove(ls)
        if ls.entity is not None and ls in ls.entity.receivers:
            ls.entity.receivers.remove(ls)

    # ---- links --------------------------------------------------------------

    @staticmethod
    def normalize(addr):
        a = addr or ""
        if "://" in a:
            a = urllib.parse.urlsplit(a).path
        return a.strip("/")

    def authorized(self, cs, path, now=None):
        now = now or now_ms()
        p = path.lower()
        for res, exp in cs.tokens.items():
            if exp > now and (res == "" or p == res or p.startswith(res + "/")):
                return True
        return False

    def refuse(self, link, condition, description, address, cs):
        if link.is_receiver:
            link.target.type = Terminus.UNSPECIFIED      # attach with a null target
        else:
            link.source.type = Terminus.UNSPECIFIED      # attach with a null source
        link.open()
        link.condition = Condition(condition, description)
        link.close()
        self.event("attach-refused", self.normalize(address) or address, condition,
                   description=description, address=address, connection=cs.id if cs else None)

    @guarded
    def on_link_remote_open(self, event):
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        cs = self.cs_of(link.connection)
        client_sends = link.is_receiver
        address = link.remote_target.address if client_sends else link.remote_source.address
        # Mirror the client's termini and settle modes.
        link.source.address = link.remote_source.address
        link.target.address = link.remote_target.address
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        if cs is None:
            self.refuse(link, "amqp:internal-error", "unknown connection", address, cs)
            return
        path = self.normalize(address)
        low = path.lower()
        if not path:
            self.refuse(link, COND_NOT_FOUND, "no address", address, cs)
            return
        if low == "$cbs":
            ls = LinkState(cs, link, "in" if client_sends else "out", address, node="$cbs")
            ls.target = link.remote_target.address
            cs.links.append(ls)
            link.asb = ls
            link.open()
            if client_sends:
                link.flow(100)
            return
        if not self.authorized(cs, path):
            self.refuse(link, COND_UNAUTHORIZED,
                        "Unauthorized access. 'Send'/'Listen' claim(s) are required to perform this "
                        "operation on '%s': put a token on $cbs first." % path, address, cs)
            return
        if low.endswith("/$management"):
            base = path[: -len("/$management")]
            ent = self.resolve(base)
            if ent is None:
                self.refuse(link, COND_NOT_FOUND, "The messaging entity '%s' could not be found." % base,
                            address, cs)
                return
            ls = LinkState(cs, link, "in" if client_sends else "out", address, node=low,
                           entity=None, auth_path=path)
            ls.mgmt_entity = ent
            ls.target = link.remote_target.address
            cs.links.append(ls)
            link.asb = ls
            link.open()
            if client_sends:
                link.flow(100)
            return
        ent = self.resolve(path)
        if ent is None:
            self.refuse(link, COND_NOT_FOUND, "The messaging entity '%s' could not be found." % path,
                        address, cs)
            return
        if client_sends and ent.kind in ("subscription", "dlq"):
            self.refuse(link, COND_NOT_ALLOWED, "Cannot send to '%s'." % path, address, cs)
            return
        if not client_sends and ent.kind == "topic":
            self.refuse(link, COND_NOT_ALLOWED,
                        "Cannot receive from topic '%s': receive from a subscription." % path, address, cs)
            return
        ls = LinkState(cs, link, "in" if client_sends else "out", address, entity=ent, auth_path=path)
        cs.links.append(ls)
        link.asb = ls
        link.open()
        if client_sends:
            link.flow(LINK_CREDIT)
        else:
            ent.receivers.append(ls)
            self.pump(ent)

    def close_link(self, ls, condition, description):
        link = ls.link
        self.drop_link(ls)
        if link.state & Endpoint.LOCAL_ACTIVE:
            link.condition = Condition(condition, description)
            link.close()

    @guarded
    def on_link_remote_close(self, event):
        self._remote_detach(event.link, close=True)

    @guarded
    def on_link_remote_detach(self, event):
        self._remote_detach(event.link, close=False)

    def _remote_detach(self, link, close):
        ls = getattr(link, "asb", None)
        if ls is not None:
            self.drop_link(ls)
        if link.state & Endpoint.LOCAL_ACTIVE:
            if close:
                link.close()
            else:
                link.detach()

    def check_links(self, cs, now):
        """Detaches the links whose token has expired with no newer one."""
        for ls in list(cs.links):
            if ls.auth_path is None or ls.closed:
                continue
            if not self.authorized(cs, ls.auth_path, now):
                self.event("detach-expired-token", self.normalize(ls.address), COND_UNAUTHORIZED,
                           connection=cs.id, address=ls.address)
                self.close_link(ls, COND_UNAUTHORIZED,
                                "The token for '%s' has expired; put a new one on $cbs." % ls.auth_path)

    @guarded
    def on_link_flow(self, event):
        link = event.link
        ls = getattr(link, "asb", None)
        if ls is None or ls.closed or not link.is_sender:
            return
        if ls.node is not None:
            self.flush(ls)
        elif ls.entity is not None:
            self.pump(ls.entity)
        if link.drain_mode:
            link.drained()

    # ---- deliveries ---------------------------------------------------------

    @guarded
    def on_delivery(self, event):
        dlv = event.delivery
        link = dlv.link
        ls = getattr(link, "asb", None)
        if link.is_receiver:
            if dlv.aborted:
                dlv.settle()
                return
            if not dlv.readable or dlv.partial:
                return
            raw = link.recv(dlv.pending)
            link.advance()
            if ls is None or ls.closed:
                dlv.update(Delivery.RELEASED)
                dlv.settle()
                return
            msg = Message()
            msg.decode(raw)
            plan = self.reject_plan.get(ls.entity.name.lower()) if ls.entity is not None else None
            if plan is not None and plan["count"] > 0:
                # POST /reject-sends: this transfer is refused, not stored.
                plan["count"] -= 1
                dlv.local.condition = Condition(plan["condition"], plan["description"])
                dlv.update(Delivery.REJECTED)
                dlv.settle()
                self.event("send-rejected", ls.entity.name, plan["condition"], message_id=jsonable(msg.id),
                           description=plan["description"])
            else:
                if ls.node == "$cbs":
                    self.on_cbs_request(ls, msg)
                elif ls.node is not None:
                    self.on_mgmt_request(ls, msg)
                else:
                    self.enqueue(ls.entity, msg)
                dlv.update(Delivery.ACCEPTED)
                dlv.settle()
            if link.credit < LINK_CREDIT // 2:
                link.flow(LINK_CREDIT - link.credit)
        else:
            if ls is not None and ls.entity is not None:
                self.on_outcome(ls, dlv)
            elif dlv.remote_state or dlv.settled:
                dlv.settle()

    def enqueue(self, ent, msg, delivery_count=0):
        now = now_ms()
        ent.sent += 1
        if ent.kind == "topic":
            for sub in ent.subs:
                self.enqueue(sub, msg, delivery_count)
            return
        ann = dict(msg.annotations or {})
        due = ann.get(ANN_SCHEDULED)
        due = int(due) if isinstance(due, int) and not isinstance(due, bool) else None
        seq = ent.next_seq
        ent.next_seq += 1
        enqueued = due if due is not None and due > now else now
        ann[ANN_SEQ] = seq
        ann[ANN_ENQUEUED] = timestamp(enqueued)
        msg.annotations = ann
        m = Stored(seq, msg.encode(), enqueued, delivery_count, jsonable(msg.id))
        ent.msgs[seq] = m
        if due is not None and due > now:
            m.state = "scheduled"
            heapq.heappush(self.sched_heap, (due, next(self.heap_seq), ent, seq))
        else:
            heapq.heappush(ent.available, seq)
            self.pump(ent)

    def pump(self, ent):
        """Deliver available messages to the receivers with credit."""
        while ent.available:
            ready = [ls for ls in ent.receivers
                     if not ls.closed and ls.link.state & Endpoint.LOCAL_ACTIVE and ls.link.credit > 0]
            if not ready:
                return
            for _ in range(len(ready)):
                if not ent.available:
                    return
                ls = ready[ent.rr % len(ready)]
                ent.rr += 1
                if ls.link.credit <= 0:
                    continue
                seq = heapq.heappop(ent.available)
                m = ent.msgs.get(seq)
                if m is None or m.state != "active":
                    continue
                self.deliver(ent, m, ls)

    def deliver(self, ent, m, ls):
        now = now_ms()
        link = ls.link
        out = Message()
        out.decode(m.raw)
        ann = dict(out.annotations or {})
        presettled = link.snd_settle_mode == Link.SND_SETTLED
        if presettled:
            tag = ascii_tag(new_lock_token().bytes_le)
        else:
            token = new_lock_token()
            m.lock = token
            m.locked_until = now + self.lock_ms
            m.state = "locked"
            self.locks[token] = (ent, m)
            heapq.heappush(self.lock_heap, (m.locked_until, next(self.heap_seq), token))
            ann[ANN_LOCKED_UNTIL] = timestamp(m.locked_until)
            ann[ANN_LOCK_TOKEN] = token
            # The delivery tag is the lock token in .NET's GUID byte order, as on ASB.
            tag = ascii_tag(token.bytes_le)
        out.annotations = ann
        out.delivery_count = m.delivery_count
        dlv = link.delivery(tag)
        link.send(out.encode())
        link.advance()
        ent.delivered += 1
        if presettled:
            dlv.settle()
            del ent.msgs[m.seq]
            ent.completed += 1
            self.event("complete", ent.name, "receive-and-delete", message_id=m.message_id,
                       sequence_number=m.seq)

    def expire_lock(self, token):
        ent, m = self.locks.pop(token)
        m.lock = None
        m.delivery_count += 1
        self.event("lock-expired", ent.name, None, lock_token=str(token), message_id=m.message_id,
                   sequence_number=m.seq, delivery_count=m.delivery_count)
        self.make_available(ent, m, counted=True)

    def make_available(self, ent, m, counted):
        if counted and ent.kind != "dlq" and m.delivery_count >= self.max_delivery_count:
            self.dead_letter(ent, m, "MaxDeliveryCountExceeded",
                             "Message could not be consumed after %d delivery attempts."
                             % self.max_delivery_count)
            return
        m.state = "active"
        heapq.heappush(ent.available, m.seq)
        self.pump(ent)

    def dead_letter(self, ent, m, reason, description):
        ent.msgs.pop(m.seq, None)
        msg = Message()
        msg.decode(m.raw)
        props = dict(msg.properties or {})
        if reason is not None:
            props["DeadLetterReason"] = reason
        if description is not None:
            props["DeadLetterErrorDescription"] = description
        msg.properties = props
        ann = dict(msg.annotations or {})
        ann[ANN_DL_SOURCE] = ent.name
        ann.pop(ANN_SEQ, None)
        ann.pop(ANN_ENQUEUED, None)
        ann.pop(ANN_SCHEDULED, None)
        msg.annotations = ann
        self.event("dead-letter", ent.name, reason, description=description, message_id=m.message_id,
                   sequence_number=m.seq, delivery_count=m.delivery_count)
        self.enqueue(ent.dlq, msg, m.delivery_count)

    def on_outcome(self, ls, dlv):
        state = dlv.remote_state
        if state == Delivery.RECEIVED or (not state and not dlv.settled):
            return
        ent = ls.entity
        try:
            token = uuid.UUID(bytes_le=tag_bytes(dlv.tag))
        except (ValueError, TypeError):
            token = None
        entry = self.locks.get(token)
        now = now_ms()
        if entry is not None and entry[1].locked_until <= now:
            self.expire_lock(token)
            entry = None
        outcome = {Delivery.ACCEPTED: "accepted", Delivery.RELEASED: "released",
                   Delivery.MODIFIED: "modified", Delivery.REJECTED: "rejected"}.get(state, "none")
        if entry is None:
            self.event("lock-lost", ent.name, COND_LOCK_LOST, outcome=outcome,
                       lock_token=str(token) if token else None)
            if not dlv.settled:
                dlv.local.condition = Condition(
                    COND_LOCK_LOST, "The lock supplied is invalid. Either the lock expired, or the "
                    "message has already been removed from the queue.")
                dlv.update(Delivery.REJECTED)
            dlv.settle()
            return
        _, m = entry
        del self.locks[token]
        m.lock = None
        if state == Delivery.ACCEPTED:
            del ent.msgs[m.seq]
            ent.completed += 1
            self.event("complete", ent.name, "accepted", message_id=m.message_id,
                       sequence_number=m.seq, lock_token=str(token))
        elif state == Delivery.REJECTED:
            cond = dlv.remote.condition
            info = {}
            if cond is not None and cond.info:
                info = {str(k): v for k, v in dict(cond.info).items()}
            reason = info.get("DeadLetterReason")
            description = info.get("DeadLetterErrorDescription")
            if reason is None and cond is not None and cond.name != COND_DEAD_LETTER:
                reason = cond.name
            if description is None and cond is not None:
                description = cond.description
            if ent.kind == "dlq":
                # No dead-lettering out of a dead-letter queue: an abandon.
                m.delivery_count += 1
                self.event("abandon", ent.name, "rejected-in-dlq", message_id=m.message_id,
                           sequence_number=m.seq, delivery_count=m.delivery_count)
                self.make_available(ent, m, counted=True)
            else:
                self.dead_letter(ent, m, None if reason is None else str(reason),
                                 None if description is None else str(description))
        elif state == Delivery.MODIFIED:
            failed = bool(dlv.remote.failed)
            if failed:
                m.delivery_count += 1
            self.event("abandon", ent.name, "modified", delivery_failed=failed,
                       undeliverable_here=bool(dlv.remote.undeliverable), message_id=m.message_id,
                       sequence_number=m.seq, delivery_count=m.delivery_count)
            self.make_available(ent, m, counted=failed)
        else:
            # Released, or settled with no outcome: back without counting.
            self.event("abandon", ent.name, outcome if state else "settled-without-outcome",
                       message_id=m.message_id, sequence_number=m.seq, delivery_count=m.delivery_count)
            self.make_available(ent, m, counted=False)
        if not dlv.settled:
            dlv.update(state)
        dlv.settle()

    # ---- $cbs and $management ---------------------------------------------

    def respond(self, ls, req, app_props, body=None, node=None):
        resp = Message()
        resp.correlation_id = req.id if req.id is not None else req.correlation_id
        resp.properties = app_props
        if body is not None:
            resp.body = body
        reply_to = req.reply_to
        resp.address = reply_to
        node = node or ls.node
        outs = [x for x in ls.cs.links if x.role == "out" and x.node == node and not x.closed]
        chosen = [x for x in outs if reply_to and x.target == reply_to] or outs
        if not chosen:
            log("no receiver link on %s for reply-to %r: response dropped" % (node, reply_to))
            self.event("response-dropped", node, None, reply_to=reply_to)
            return
        chosen[0].pending.append(resp)
        self.flush(chosen[0])

    def flush(self, ls):
        link = ls.link
        while ls.pending and link.credit > 0 and link.state & Endpoint.LOCAL_ACTIVE:
            m = ls.pending.pop(0)
            dlv = link.delivery(ascii_tag(new_lock_token().bytes_le))
            link.send(m.encode())
            link.advance()
            if link.snd_settle_mode == Link.SND_SETTLED:
                dlv.settle()

    def audience_path(self, uri):
        """The lower-case entity path an audience/resource URI names in this
        namespace, or None when it is not a URI of this namespace."""
        try:
            u = urllib.parse.urlsplit(uri.strip())
        except ValueError:
            return None
        if u.scheme.lower() not in ("sb", "amqp", "amqps"):
            return None
        host = (u.hostname or "").lower()
        if host != self.namespace:
            return None
        return u.path.strip("/").lower()

    def check_token(self, typ, name, token):
        """(status, description, audience path, expiry ms)"""
        if typ != SAS_TYPE:
            return 400, "Unsupported token type %r (this double takes %s)." % (typ, SAS_TYPE), None, None
        if not isinstance(name, str) or self.audience_path(name) is None:
            return 400, "The audience %r is not a sb:// or amqp:// URI of namespace %s." % (
                name, self.namespace), None, None
        if isinstance(token, (bytes, bytearray, memoryview)):
            token = bytes(token).decode("utf-8", "replace")
        prefix = "SharedAccessSignature "
        if not isinstance(token, str) or not token.startswith(prefix):
            return 400, "The token is not a SharedAccessSignature.", None, None
        fields = {}
        for part in token[len(prefix):].split("&"):
            k, _, v = part.partition("=")
            fields[k.strip()] = v
        missing = [k for k in ("sr", "sig", "se", "skn") if k not in fields]
        if missing:
            return 401, "InvalidSignature: the token lacks %s." % ", ".join(missing), None, None
        sr_raw = fields["sr"]
        resource = self.audience_path(urllib.parse.unquote(sr_raw))
        if resource is None:
            return 401, "InvalidAudience: the token's sr %r is not a resource of namespace %s." % (
                urllib.parse.unquote(sr_raw), self.namespace), None, None
        try:
            se = int(fields["se"])
        except ValueError:
            return 401, "InvalidSignature: se %r is not a number." % fields["se"], None, None
        if self.args.key is not None:
            if fields["skn"] != self.args.key_name:
                return 401, "InvalidSignature: the key name %r is not %r." % (
                    fields["skn"], self.args.key_name), None, None
            want = base64.b64encode(hmac.new(self.args.key.encode("utf-8"),
                                             (sr_raw + "\n" + fields["se"]).encode("utf-8"),
                                             hashlib.sha256).digest()).decode("ascii")
            if not hmac.compare_digest(want, urllib.parse.unquote(fields["sig"])):
                return 401, ("InvalidSignature: the token's signature does not match "
                             "(HMAC-SHA256 of sr as sent + '\\n' + se, with key %r)." % self.args.key_name), \
                    None, None
        if se * 1000 <= now_ms():
            return 401, "ExpiredToken: the token expired at %d (now %d)." % (se, now_ms() // 1000), None, None
        audience = self.audience_path(name)
        if not (resource == "" or audience == resource or audience.startswith(resource + "/")):
            return 401, "InvalidAudience: the token for %r does not cover %r." % (resource, audience), None, None
        return 202, "Accepted", audience, se * 1000

    def on_cbs_request(self, ls, msg):
        ap = msg.properties or {}
        op = ap.get("operation")
        if op != "put-token":
            self.respond(ls, msg, {"status-code": int32(400),
                                   "status-description": "Unsupported operation %r" % (op,)})
            return
        name = ap.get("name")
        status, desc, audience, expiry = self.check_token(ap.get("type"), name, msg.body)
        cs = ls.cs
        if status == 202:
            cs.tokens[audience] = expiry
            heapq.heappush(self.token_heap, (expiry, next(self.heap_seq), cs.id))
        self.event("put-token", self.audience_path(name) if isinstance(name, str) else None, status,
                   audience=name, description=desc, expires_ms=expiry, connection=cs.id)
        self.respond(ls, msg, {"status-code": int32(status), "status-description": desc})

    def on_mgmt_request(self, ls, msg):
        ap = msg.properties or {}
        op = ap.get("operation")
        ent = ls.mgmt_entity
        if not self.authorized(ls.cs, ls.auth_path):
            self.respond(ls, msg, {"statusCode": int32(401), "statusDescription": "Unauthorized",
                                   "errorCondition": symbol(COND_UNAUTHORIZED)})
            return
        if op != "com.microsoft:renew-lock":
            self.respond(ls, msg, {"statusCode": int32(501),
                                   "statusDescription": "Operation %r is not modelled by the double." % (op,),
                                   "errorCondition": symbol("amqp:not-implemented")})
            return
        body = msg.body if isinstance(msg.body, dict) else {}
        raw_tokens = body.get("lock-tokens")
        if isinstance(raw_tokens, Array):
            raw_tokens = raw_tokens.elements
        tokens = []
        for t in raw_tokens or []:
            try:
                if isinstance(t, uuid.UUID):
                    tokens.append(t)
                elif isinstance(t, (bytes, bytearray, memoryview)) and len(t) == 16:
                    tokens.append(uuid.UUID(bytes=bytes(t)))
                else:
                    tokens.append(uuid.UUID(str(t)))
            except ValueError:
                tokens.append(None)
        now = now_ms()
        for t in tokens:
            entry = self.locks.get(t)
            if entry is not None and entry[1].locked_until <= now:
                self.expire_lock(t)
        bad = [t for t in tokens if t is None or t not in self.locks or self.locks[t][0] is not ent]
        if not tokens or bad:
            desc = ("The lock supplied is invalid. Either the lock expired, or the message has already "
                    "been removed from the queue.") if tokens else "No lock-tokens in the request."
            status = 410 if tokens else 400
            self.event("renew-lock", ent.name, status, lock_tokens=[str(t) for t in tokens])
            props = {"statusCode": int32(status), "statusDescription": desc}
            if status == 410:
                props["errorCondition"] = symbol(COND_LOCK_LOST)
            self.respond(ls, msg, props)
            return
        expirations = []
        for t in tokens:
            _, m = self.locks[t]
            m.locked_until = now + self.lock_ms
            heapq.heappush(self.lock_heap, (m.locked_until, next(self.heap_seq), t))
            expirations.append(timestamp(m.locked_until))
        self.event("renew-lock", ent.name, 200, lock_tokens=[str(t) for t in tokens],
                   locked_until_ms=[int(x) for x in expirations])
        self.respond(ls, msg, {"statusCode": int32(200), "statusDescription": "OK"},
                     body={"expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *expirations)})

    # ---- control API (runs on the reactor thread via call()) ---------------

    def stored_json(self, m):
        msg = Message()
        msg.decode(m.raw)
        text, kind = body_text(msg)
        j = {
            "body": text,
            "body_type": kind,
            "properties": message_properties(msg),
            "message_id": jsonable(msg.id),
            "application_properties": jsonable(msg.properties or {}),
            "message_annotations": jsonable(msg.annotations or {}),
            "delivery_count": m.delivery_count,
            "sequence_number": m.seq,
            "enqueued_time_ms": m.enqueued_ms,
            "state": m.state,
        }
        if m.state == "locked":
            j["locked_until_ms"] = m.locked_until
            j["lock_token"] = str(m.lock)
        return j

    def ctl_state(self, kinds):
        ents = {}
        for e in sorted(self.entities.values(), key=lambda x: x.name.lower()):
            states = [m.state for m in e.msgs.values()]
            dlq = e._dlq
            ents[e.name] = {
                "kind": e.kind,
                "active": states.count("active"),
                "scheduled": states.count("scheduled"),
                "locked": states.count("locked"),
                "completed": e.completed,
                "sent": e.sent,
                "delivered": e.delivered,
                "dead_letters": [self.stored_json(m) for _, m in sorted(dlq.msgs.items())] if dlq else [],
                "dead_letters_completed": dlq.completed if dlq else 0,
            }
        events = self.events if not kinds else [e for e in self.events if e["kind"] in kinds]
        return {"entities": ents, "events": list(events), "connections": len(self.conns)}

    def ctl_send(self, entity, messages):
        path = self.normalize(entity)
        ent = self.resolve(path)
        if ent is None:
            raise ValueError("no entity %r (subscriptions come from --topic)" % entity)
        for j in messages:
            self.enqueue(ent, message_from_json(j))
        return {"enqueued": len(messages), "entity": ent.name}

    def ctl_messages(self, entity):
        ent = self.resolve(self.normalize(entity), create=False)
        if ent is None:
            return []
        return [self.stored_json(m) for _, m in sorted(ent.msgs.items())]

    def ctl_reject_sends(self, entity, count, condition, description):
        ent = self.resolve(self.normalize(entity))
        if ent is None:
            raise ValueError("no entity %r" % entity)
        self.reject_plan[ent.name.lower()] = {"count": int(count), "condition": condition,
                                              "description": description}
        return {"entity": ent.name, "count": int(count)}

    def ctl_disconnect(self):
        n = 0
        for cs in list(self.conns.values()):
            c = cs.conn
            self.drop_connection(c)
            if c.state & Endpoint.LOCAL_ACTIVE:
                c.condition = Condition("amqp:connection:forced", "closed by the test (POST /disconnect)")
                c.close()
                n += 1
        self.event("disconnect", None, None, connections=n)
        return {"closed": n}


def make_http_handler(double):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, status, obj):
            data = json.dumps(obj).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def do_GET(self):  # noqa: N802
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            try:
                if u.path == "/state":
                    kinds = set(",".join(q.get("kind", [])).split(",")) - {""}
                    self.answer(200, double.call(double.ctl_state, kinds))
                elif u.path == "/messages":
                    if "entity" not in q:
                        self.answer(400, {"error": "GET /messages?entity=NAME"})
                        return
                    self.answer(200, double.call(double.ctl_messages, q["entity"][0]))
                else:
                    self.answer(404, {"error": "GET /state or /messages?entity=NAME"})
            except Exception as e:
                self.answer(500, {"error": str(e)})

        def do_POST(self):  # noqa: N802
            u = urllib.parse.urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                if u.path == "/send":
                    j = json.loads(raw or b"{}")
                    if not isinstance(j.get("entity"), str) or not isinstance(j.get("messages"), list):
                        self.answer(400, {"error": "POST /send {\"entity\": E, \"messages\": [...]}"})
                        return
                    self.answer(200, double.call(double.ctl_send, j["entity"], j["messages"]))
                elif u.path == "/reject-sends":
                    j = json.loads(raw or b"{}")
                    if not isinstance(j.get("entity"), str):
                        self.answer(400, {"error": "POST /reject-sends {\"entity\": E, \"count\": n, "
                                                   "\"condition\": C, \"description\": D}"})
                        return
                    self.answer(200, double.call(double.ctl_reject_sends, j["entity"], j.get("count", 1),
                                                 j.get("condition", "amqp:not-allowed"),
                                                 j.get("description", "rejected by the test (POST /reject-sends)")))
                elif u.path == "/disconnect":
                    self.answer(200, double.call(double.ctl_disconnect))
                else:
                    self.answer(404, {"error": "POST /send, /reject-sends or /disconnect"})
            except ValueError as e:
                self.answer(400, {"error": str(e)})
            except Exception as e:
                self.answer(500, {"error": str(e)})

    return H


def accept_loop(double, listener):
    while True:
        try:
            sock, peer = listener.accept()
        except OSError as e:
            log("accept failed: %s" % e)
            time.sleep(0.05)
            continue
        threading.Thread(target=negotiate, args=(double, sock, peer), daemon=True).start()


def negotiate(double, sock, peer):
    try:
        mech = sasl_handshake(sock)
    except Exception as e:
        log("connection from %s:%s refused: %s" % (peer[0], peer[1], e))
        try:
            sock.close()
        except OSError:
            pass
        return
    double.handover.put((sock, peer, mech))
    double.injector.trigger(ApplicationEvent("handover"))


def main():
    p = argparse.ArgumentParser(description="Azure Service Bus test double (AMQP 1.0)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--namespace", required=True,
                   help="the namespace host the tokens' audiences name, e.g. test.servicebus.windows.net")
    p.add_argument("--key-name", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--lock-ms", type=int, default=5000)
    p.add_argument("--max-delivery-count", type=int, default=10)
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC:sub1,sub2")
    args = p.parse_args()
    if (args.key is None) != (args.key_name is None):
        p.error("--key-name and --key go together")

    double = Double(args)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.control_port), make_http_handler(double))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threading.Thread(target=accept_loop, args=(double, listener), daemon=True).start()

    container = Container(double)
    container.container_id = "asb-double"
    container.run()


if __name__ == "__main__":
    main()
