#!/usr/bin/python3
"""A plain AMQP 1.0 client (Debian's python3-qpid-proton) for the e2e suites:
for RabbitMQ's AMQP 1.0 plugin and for the Azure Service Bus double
(asb_double.py), which it authorizes with a CBS put-token first.

    amqp_client.py send    --url URL --address ADDR --type T --bodies FILE [--id-prefix P | --tab-ids]
    amqp_client.py receive --url URL --address ADDR --count N --timeout-s S
                           [--outcome accept|release|abandon|dead-letter|none]
    amqp_client.py declare-queue --url URL --queue NAME     (RabbitMQ, over AMQP 0-9-1)

ASB options (any command but declare-queue): --namespace NS --sas-key-name NAME
--sas-key KEY puts a SAS token for sb://NS/<entity> on $cbs before attaching.
SASL is PLAIN when the URL carries user:password, else ANONYMOUS.

Exit codes: 0 done; 1 a send was not accepted, or a link/connection failed
(stderr says which); 2 bad usage; 3 `receive` timed out before N messages.

Also a module: selftest.py uses Client, sas_token and the settle helpers.
"""

import argparse
import base64
import collections
import hashlib
import hmac
import json
import socket
import struct
import sys
import time
import urllib.parse
import uuid

try:
    from proton import Array, Condition, Delivery, Endpoint, Message, Timeout, Url, symbol
    from proton.reactor import LinkOption
    from proton.utils import BlockingConnection, LinkDetached
except ImportError:  # pragma: no cover - the message is the point
    sys.stderr.write("amqp_client.py needs the proton module: apt-get install -y python3-qpid-proton "
                     "(and run it with /usr/bin/python3)\n")
    sys.exit(2)

SAS_TYPE = "servicebus.windows.net:sastoken"


def sas_token(namespace, key_name, key, path="", ttl_s=3600, expiry=None, scheme="sb"):
    """(audience, token): a SharedAccessSignature for `scheme://namespace/path`,
    signed over the URL-encoded resource + "\\n" + expiry (unix seconds)."""
    audience = "%s://%s/%s" % (scheme, namespace, path.strip("/"))
    se = str(int(expiry if expiry is not None else time.time() + ttl_s))
    sr = urllib.parse.quote(audience, safe="")
    sig = base64.b64encode(hmac.new(key.encode("utf-8"), (sr + "\n" + se).encode("utf-8"),
                                    hashlib.sha256).digest()).decode("ascii")
    token = "SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s" % (
        sr, urllib.parse.quote(sig, safe=""), se, key_name)
    return audience, token


def entity_path(address):
    """`orders` from `orders`, `/orders`, `amqps://ns/orders`; management and
    dead-letter suffixes are kept (a token for the entity covers them)."""
    a = address or ""
    if "://" in a:
        a = urllib.parse.urlsplit(a).path
    return a.strip("/")


# An AMQP value as JSON data: the double's conversion, one for both.
from asb_double import jsonable as plain  # noqa: E402


def tag_bytes(tag):
    """A delivery tag as bytes (proton hands it over as a str with surrogate escapes)."""
    if isinstance(tag, str):
        return tag.encode("utf-8", "surrogateescape")
    return bytes(tag)


def lock_token(dlv):
    """The ASB lock token of a delivery: its 16-byte tag read as a .NET GUID."""
    return uuid.UUID(bytes_le=tag_bytes(dlv.tag))


def message_json(msg, dlv=None):
    b = msg.body
    if isinstance(b, (bytes, bytearray, memoryview)):
        body = bytes(b).decode("utf-8", "replace")
    elif b is None:
        body = ""
    elif isinstance(b, str):
        body = str(b)
    else:
        body = json.dumps(plain(b))
    j = {
        "body": body,
        "message_id": plain(msg.id),
        "subject": plain(msg.subject),
        "content_type": plain(msg.content_type),
        "correlation_id": plain(msg.correlation_id),
        "application_properties": plain(msg.properties or {}),
        "message_annotations": plain(msg.annotations or {}),
        "delivery_count": msg.delivery_count,
    }
    if dlv is not None and not dlv.settled:
        tag = tag_bytes(dlv.tag)
        if len(tag) == 16:
            j["lock_token"] = str(uuid.UUID(bytes_le=tag))
    return j


class LinkRefused(Exception):
    """The peer refused an attach (null terminus and/or a detach with an error)."""

    def __init__(self, address, condition, description):
        super().__init__("attach to %r refused: %s %s" % (address, condition, description or ""))
        self.address = address
        self.condition = condition
        self.description = description


class _Target(LinkOption):
    def __init__(self, address):
        self.address = address

    def apply(self, link):
        link.target.address = self.address


class _SettleMode(LinkOption):
    def __init__(self, snd):
        self.snd = snd

    def apply(self, link):
        link.snd_settle_mode = self.snd


# --- settling a received delivery (ASB: complete, abandon, dead-letter) -----

def accept(dlv):
    dlv.update(Delivery.ACCEPTED)
    dlv.settle()


def release(dlv):
    dlv.update(Delivery.RELEASED)
    dlv.settle()


def abandon(dlv, delivery_failed=True, undeliverable_here=False):
    """Modified: ASB's abandon (delivery-failed counts a delivery)."""
    dlv.local.failed = delivery_failed
    dlv.local.undeliverable = undeliverable_here
    dlv.update(Delivery.MODIFIED)
    dlv.settle()


def dead_letter(dlv, reason, description):
    """Rejected with com.microsoft:dead-letter, as ASB's SDKs dead-letter."""
    dlv.local.condition = Condition("com.microsoft:dead-letter", description,
                                    {symbol("DeadLetterReason"): reason,
                                     symbol("DeadLetterErrorDescription"): description})
    dlv.update(Delivery.REJECTED)
    dlv.settle()


class Receiver:
    """A receiving link whose deliveries the caller settles."""

    def __init__(self, client, blocking):
        self.client = client
        self.blocking = blocking
        self.link = blocking.link
        self.incoming = blocking.fetcher.incoming

    def flow(self, n):
        self.link.flow(n)

    def receive(self, timeout):
        """(message, delivery), giving one credit if none is out; raises
        proton.Timeout."""
        if not self.incoming and self.link.credit <= 0:
            self.link.flow(1)
        self.client.bc.wait(lambda: bool(self.incoming), timeout=timeout,
                            msg="receiving on %s" % self.link.source.address)
        return self.incoming.popleft()

    def close(self):
        """Detaches (closed) without waiting for the peer's answer."""
        if self.link.state & Endpoint.LOCAL_ACTIVE:
            self.link.close()


class Client:
    """One AMQP connection, blocking calls."""

    def __init__(self, url, timeout=30):
        u = Url(url)
        mechs = "PLAIN" if u.username else "ANONYMOUS"
        self.url = url
        self.timeout = timeout
        self.bc = BlockingConnection(url, timeout=timeout, allowed_mechs=mechs,
                                     allow_insecure_mechs=True)
        self._nodes = {}
        self._responses = {}

    # -- links -------------------------------------------------------------

    def _opened(self, link, address):
        """Waits for the peer's attach; raises LinkRefused if it refused."""
        try:
            self.bc.wait(lambda: not (link.state & Endpoint.REMOTE_UNINIT), timeout=self.timeout,
                         msg="attach of %s" % address)
            remote = link.remote_target if link.is_sender else link.remote_source
            if remote.address is None or link.state & Endpoint.REMOTE_CLOSED:
                # A refusal: null terminus, then a detach with the reason.
                self.bc.wait(lambda: link.state & Endpoint.REMOTE_CLOSED, timeout=5,
                             msg="detach after a refused attach of %s" % address)
        except LinkDetached as e:
            c = link.remote_condition
            raise LinkRefused(address, c.name if c else e.condition, c.description if c else None)
        if link.state & Endpoint.REMOTE_CLOSED:
            c = link.remote_condition
            if link.state & Endpoint.LOCAL_ACTIVE:
                link.close()
            raise LinkRefused(address, c.name if c else None, c.description if c else None)

    def sender(self, address):
        link = self.bc.container.create_sender(self.bc.conn, address)
        self._opened(link, address)
        return link

    def receiver(self, address, settled=False):
        """A receiver (peek-lock on ASB unless settled=True: receive-and-delete)."""
        from proton import Link
        opts = [_SettleMode(Link.SND_SETTLED)] if settled else [_SettleMode(Link.SND_UNSETTLED)]
        try:
            blocking = self.bc.create_receiver(address, credit=None, options=opts)
        except LinkDetached as e:
            c = e.link.remote_condition
            raise LinkRefused(address, c.name if c else e.condition, c.description if c else None)
        except Exception as e:
            if "source does not match" in str(e):
                raise LinkRefused(address, None, str(e))
            raise
        return Receiver(self, blocking)

    def wait_detached(self, link, timeout):
        """Waits for the peer to detach `link`; its error condition (name, description)."""
        try:
            self.bc.wait(lambda: link.state & Endpoint.REMOTE_CLOSED, timeout=timeout,
                         msg="detach of %s" % link.name)
        except LinkDetached as e:
            if e.link is not link and e.link.name != link.name:
                raise
        c = link.remote_condition
        return (c.name, c.description) if c else (None, None)

    # -- request/response nodes ($cbs, ENTITY/$management) ----------------

    def _node(self, node):
        if node not in self._nodes:
            reply_to = "%s-reply-%s" % (node.replace("/", "-").strip("$-"), uuid.uuid4().hex[:12])
            snd = self.sender(node)
            rcv = self.bc.create_receiver(node, credit=50, options=[_Target(reply_to)])
            self._nodes[node] = (snd, rcv, reply_to)
        return self._nodes[node]

    def request(self, node, app_props, body=None, timeout=None):
        """Sends a request to a node; the response Message."""
        snd, rcv, reply_to = self._node(node)
        req = Message()
        req.id = str(uuid.uuid4())
        req.reply_to = reply_to
        req.properties = app_props
        if body is not None:
            req.body = body
        dlv = snd.send(req)
        timeout = timeout or self.timeout
        deadline = time.time() + timeout
        while True:
            for i, (msg, rdlv) in enumerate(rcv.fetcher.incoming):
                if msg.correlation_id == req.id:
                    del rcv.fetcher.incoming[i]
                    accept(rdlv)
                    if not rcv.link.credit:
                        rcv.link.flow(50)
                    if not dlv.settled:
                        pass
                    return msg
            left = deadline - time.time()
            if left <= 0:
                raise Timeout("no response from %s within %ss" % (node, timeout))
            n = len(rcv.fetcher.incoming)
            self.bc.wait(lambda: len(rcv.fetcher.incoming) > n, timeout=left,
                         msg="response from %s" % node)

    def put_token(self, audience, token, timeout=None):
        """CBS put-token: (status-code, status-description)."""
        resp = self.request("$cbs", {"operation": "put-token", "type": SAS_TYPE, "name": audience},
                            body=token, timeout=timeout)
        ap = resp.properties or {}
        return int(ap.get("status-code", ap.get("statusCode", 0))), ap.get(
            "status-description", ap.get("statusDescription"))

    def authorize(self, namespace, key_name, key, path, ttl_s=3600):
        audience, token = sas_token(namespace, key_name, key, path, ttl_s=ttl_s)
        status, desc = self.put_token(audience, token)
        if status != 202:
            raise RuntimeError("put-token for %s: %s %s" % (audience, status, desc))
        return status

    def renew_lock(self, entity, lock_tokens, timeout=None):
        """com.microsoft:renew-lock on ENTITY/$management: (statusCode,
        description, [expiration ms])."""
        from proton import UNDESCRIBED, Data
        body = {"lock-tokens": Array(UNDESCRIBED, Data.UUID, *[uuid.UUID(str(t)) for t in lock_tokens])}
        resp = self.request(entity_path(entity) + "/$management",
                            {"operation": "com.microsoft:renew-lock"}, body=body, timeout=timeout)
        ap = resp.properties or {}
        status = int(ap.get("statusCode", ap.get("status-code", 0)))
        exps = []
        if isinstance(resp.body, dict) and resp.body.get("expirations") is not None:
            e = resp.body["expirations"]
            exps = [int(x) for x in (e.elements if isinstance(e, Array) else e)]
        return status, ap.get("statusDescription", ap.get("status-description")), exps

    # -- bulk --------------------------------------------------------------

    def send_all(self, address, messages, window=1000, timeout=None):
        """Sends (tag, Message) pairs with up to `window` unsettled at once;
        (accepted count, [(tag, why)] of the others)."""
        link = self.sender(address)
        timeout = timeout or self.timeout
        pending = collections.deque()
        failures = []
        accepted = [0]

        def reap():
            while pending and pending[0][0].settled:
                d, tag = pending.popleft()
                if d.remote_state == Delivery.ACCEPTED:
                    accepted[0] += 1
                else:
                    st = d.remote_state
                    why = {Delivery.REJECTED: "rejected", Delivery.RELEASED: "released",
                           Delivery.MODIFIED: "modified"}.get(st, "settled with state %s" % st)
                    if d.remote.condition is not None:
                        why += " (%s)" % d.remote.condition
                    failures.append((tag, why))
                d.settle()

        for tag, msg in messages:
            if len(pending) >= window or link.credit <= 0:
                self.bc.wait(lambda: (reap() or True) and len(pending) <= window // 2 and link.credit > 0,
                             timeout=timeout, msg="settlements on %s" % address)
            pending.append((link.send(msg), tag))
        self.bc.wait(lambda: (reap() or True) and not pending, timeout=timeout,
                     msg="settlements on %s" % address)
        link.close()
        return accepted[0], failures

    def pump(self, seconds):
        """Runs the connection's I/O for `seconds` (sends buffered settlements)."""
        try:
            self.bc.wait(lambda: False, timeout=seconds)
        except Timeout:
            pass

    def close(self):
        try:
            self.bc.close()
        except Exception:
            pass


# --- RabbitMQ: queue.declare over AMQP 0-9-1 (the 1.0 plugin cannot) ---------

def _shortstr(s):
    b = s.encode("utf-8")
    return struct.pack("B", len(b)) + b


def _longstr(b):
    return struct.pack(">I", len(b)) + b


def _method(channel, class_id, method_id, args):
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def _read_frame(sock):
    head = b""
    while len(head) < 7:
        chunk = sock.recv(7 - len(head))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        head += chunk
    ftype, channel, size = struct.unpack(">BHI", head)
    body = b""
    while len(body) < size + 1:
        chunk = sock.recv(size + 1 - len(body))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        body += chunk
    return ftype, channel, body[:-1]


def _expect(sock, class_id, method_id):
    while True:
        ftype, _, payload = _read_frame(sock)
        if ftype != 1:
            continue
        cid, mid = struct.unpack(">HH", payload[:4])
        if (cid, mid) == (class_id, method_id):
            return payload[4:]
        if (cid, mid) in ((10, 50), (20, 40)):  # connection.close / channel.close
            code = struct.unpack(">H", payload[4:6])[0]
            text = payload[7:7 + payload[6]].decode("utf-8", "replace")
            raise RuntimeError("broker closed: %d %s" % (code, text))


def declare_queue(url, name, durable=True, timeout=10):
    """queue.declare NAME on the broker at amqp://user:pass@host:port[/vhost]."""
    u = urllib.parse.urlsplit(url)
    user = urllib.parse.unquote(u.username or "guest")
    password = urllib.parse.unquote(u.password or "guest")
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=timeout)
    try:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        _expect(sock, 10, 10)  # connection.start
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        sock.sendall(_method(0, 10, 11, struct.pack(">I", 0) + _shortstr("PLAIN") + _longstr(response)
                             + _shortstr("en_US")))
        tune = _expect(sock, 10, 30)  # connection.tune
        channel_max, frame_max, _hb = struct.unpack(">HIH", tune[:8])
        sock.sendall(_method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        sock.sendall(_method(0, 10, 40, _shortstr(vhost) + _shortstr("") + b"\x00"))
        _expect(sock, 10, 41)  # connection.open-ok
        sock.sendall(_method(1, 20, 10, _shortstr("")))
        _expect(sock, 20, 11)  # channel.open-ok
        bits = 0x02 if durable else 0x00  # passive=1, durable=2, exclusive=4, auto-delete=8, no-wait=16
        sock.sendall(_method(1, 50, 10, struct.pack(">H", 0) + _shortstr(name) + struct.pack("B", bits)
                             + struct.pack(">I", 0)))
        _expect(sock, 50, 11)  # queue.declare-ok
        sock.sendall(_method(0, 10, 50, struct.pack(">H", 200) + _shortstr("bye") + struct.pack(">HH", 0, 0)))
        try:
            _expect(sock, 10, 51)
        except (ConnectionError, socket.timeout):
            pass
    finally:
        sock.close()


# --- CLI ----------------------------------------------------------------------

def connect(args):
    c = Client(args.url, timeout=args.op_timeout_s)
    if args.sas_key is not None:
        if not args.namespace or args.sas_key_name is None:
            raise SystemExit("--sas-key needs --sas-key-name and --namespace")
        c.authorize(args.namespace, args.sas_key_name, args.sas_key, entity_path(args.address))
    return c


def cmd_send(args):
    try:
        with open(args.bodies, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        sys.stderr.write("cannot read %s: %s\n" % (args.bodies, e))
        return 2

    def messages():
        for n, line in enumerate(lines, 1):
            m = Message()
            given_id = None
            if args.tab_ids:
                given_id, _, line = line.partition("\t")
            m.body = line.encode("utf-8")
            m.inferred = True  # a data section
            m.content_type = "application/json"
            m.subject = args.type
            m.durable = True
            m.properties = {"message-type": args.type}
            if given_id:
                m.id = given_id
            else:
                m.id = "%s-%d" % (args.id_prefix, n) if args.id_prefix else str(uuid.uuid4())
            yield n, m

    c = connect(args)
    try:
        accepted, failures = c.send_all(args.address, messages(), window=args.window)
    finally:
        c.close()
    if failures:
        for n, why in failures[:20]:
            sys.stderr.write("line %d of %s: not accepted: %s\n" % (n, args.bodies, why))
        if len(failures) > 20:
            sys.stderr.write("... and %d more lines not accepted\n" % (len(failures) - 20))
        return 1
    print("sent %d" % accepted)
    return 0


def cmd_receive(args):
    c = connect(args)
    deadline = time.time() + args.timeout_s
    got = 0
    try:
        r = c.receiver(args.address)
        window = min(args.count, 200)
        r.flow(window)
        while got < args.count:
            left = deadline - time.time()
            if left <= 0:
                raise Timeout()
            msg, dlv = r.receive(timeout=left)
            sys.stdout.write(json.dumps(message_json(msg, dlv)) + "\n")
            if args.outcome == "accept":
                accept(dlv)
            elif args.outcome == "release":
                release(dlv)
            elif args.outcome == "abandon":
                abandon(dlv)
            elif args.outcome == "dead-letter":
                dead_letter(dlv, args.reason, args.description)
            got += 1
            # Top up in batches, never more credit out than messages still wanted.
            want = min(window, args.count - got)
            out = r.link.credit + len(r.incoming)
            if out <= window // 2 and out < want:
                r.flow(want - out)
        sys.stdout.flush()
        # No link detach: RabbitMQ 3.10's plugin does not answer one; closing
        # the connection ends the link.
    except Timeout:
        sys.stdout.flush()
        sys.stderr.write("receive: timed out after %ss with %d of %d messages from %s\n"
                         % (args.timeout_s, got, args.count, args.address))
        return 3
    finally:
        c.close()
    return 0


def cmd_declare(args):
    declare_queue(args.url, args.queue)
    print("declared %s" % args.queue)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="plain AMQP 1.0 client (proton)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--url", required=True, help="amqp://[user:pass@]host:port")
        sp.add_argument("--address", required=True)
        sp.add_argument("--namespace", help="ASB namespace host, for the SAS audience")
        sp.add_argument("--sas-key-name")
        sp.add_argument("--sas-key")
        sp.add_argument("--op-timeout-s", type=float, default=30,
                        help="how long one attach/settlement wait may take")

    s = sub.add_parser("send", help="send one message per line of FILE")
    common(s)
    s.add_argument("--type", required=True)
    s.add_argument("--bodies", required=True)
    s.add_argument("--id-prefix", default=None)
    s.add_argument("--tab-ids", action="store_true",
                   help="each line is MESSAGE_ID<TAB>BODY (a resent line keeps its id)")
    s.add_argument("--window", type=int, default=1000, help="unsettled sends at most")
    r = sub.add_parser("receive", help="receive and settle up to N messages")
    common(r)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--timeout-s", type=float, required=True)
    r.add_argument("--outcome", choices=["accept", "release", "abandon", "dead-letter", "none"],
                   default="accept")
    r.add_argument("--reason", default="TestDeadLetter")
    r.add_argument("--description", default="dead-lettered by amqp_client.py")
    d = sub.add_parser("declare-queue", help="declare a durable queue on RabbitMQ (AMQP 0-9-1)")
    d.add_argument("--url", required=True)
    d.add_argument("--queue", required=True)
    args = p.parse_args(argv)
    try:
        return {"send": cmd_send, "receive": cmd_receive, "declare-queue": cmd_declare}[args.cmd](args)
    except LinkRefused as e:
        sys.stderr.write("%s\n" % e)
        return 1
    except (RuntimeError, ConnectionError, OSError, Timeout) as e:
        sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
        return 1
    except Exception as e:  # proton's ConnectionException and friends
        sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
