#!/usr/bin/python3
"""Self-test of the Azure Service Bus double (asb_double.py) with the plain
AMQP 1.0 client (amqp_client.py): starts the double on free ports, runs each
check, prints `PASS name` or `FAIL name: why`, then `N passed, M failed`.
Exits 0 only if every check passed.

    /usr/bin/python3 tests/asb/selftest.py [-k SUBSTRING]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import amqp_client as ac  # noqa: E402
from proton import Delivery, Link, Timeout, symbol, timestamp  # noqa: E402
from proton.reactor import LinkOption  # noqa: E402

NS = "selftest.servicebus.windows.net"
KEY_NAME = "RootManageSharedAccessKey"
KEY = "c2VsZnRlc3Qta2V5LW5vdC1hLXNlY3JldA=="
LOCK_MS = 1500
MAX_DELIVERY = 3


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Double:
    def __init__(self):
        self.port = free_port()
        self.control = free_port()
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "asb_double.py"), "--port", str(self.port),
             "--control-port", str(self.control), "--namespace", NS, "--key-name", KEY_NAME,
             "--key", KEY, "--lock-ms", str(LOCK_MS), "--max-delivery-count", str(MAX_DELIVERY),
             "--topic", "events:audit,billing"],
            stdout=subprocess.PIPE, stderr=self.err)
        line = [None]

        def read():
            line[0] = self.proc.stdout.readline()
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(20)
        if line[0] != b"ready\n":
            self.proc.kill()
            self.err.seek(0)
            raise SystemExit("the double did not print ready within 20 s: %r\n%s"
                             % (line[0], self.err.read().decode(errors="replace")))
        self.url = "amqp://127.0.0.1:%d" % self.port

    def http(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.control, path), data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def state(self):
        return self.http("GET", "/state")

    def events(self, kind, entity=None):
        return [e for e in self.state()["events"]
                if e["kind"] == kind and (entity is None or e["entity"] == entity)]

    def messages(self, entity):
        return self.http("GET", "/messages?entity=" + entity)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.err.seek(0)
        return self.err.read().decode(errors="replace")


class Check(Exception):
    pass


def expect(cond, why):
    if not cond:
        raise Check(why)


def client(d, path=None):
    """A connection to the double, authorized for `path` if given."""
    c = ac.Client(d.url, timeout=10)
    if path is not None:
        c.authorize(NS, KEY_NAME, KEY, path)
    return c


def send(c, address, bodies, **kw):
    msgs = []
    for i, b in enumerate(bodies):
        m = ac.Message()
        m.body = b.encode()
        m.inferred = True
        m.id = kw.get("ids", [None] * len(bodies))[i] or str(uuid.uuid4())
        m.subject = kw.get("subject", "test")
        m.content_type = "application/json"
        m.properties = dict(kw.get("app", {"message-type": "test"}))
        if "annotations" in kw:
            m.annotations = kw["annotations"]
        msgs.append((i + 1, m))
    accepted, failures = c.send_all(address, msgs)
    expect(not failures and accepted == len(bodies), "send to %s: %s accepted, failures %s"
           % (address, accepted, failures))


def entity(d, name):
    return d.state()["entities"].get(name, {})


def q():
    return "q-%s" % uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------

def check_put_token_202(d):
    c = client(d)
    try:
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, "orders")
        status, desc = c.put_token(aud, tok)
        expect(status == 202 and desc == "Accepted", "got %s %r" % (status, desc))
        # A namespace-wide token, and the amqp:// scheme.
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, "", scheme="amqp")
        status, desc = c.put_token(aud, tok)
        expect(status == 202, "namespace token (amqp://): %s %r" % (status, desc))
    finally:
        c.close()
    ev = d.events("put-token", "orders")
    expect(ev and ev[-1]["status"] == 202, "no put-token 202 event: %s" % ev)


def check_put_token_401(d):
    c = client(d)
    try:
        for label, args, kw in [
            ("bad key", (NS, KEY_NAME, "d3Jvbmc="), {}),
            ("bad key name", (NS, "SomeOtherKey", KEY), {}),
            ("expired", (NS, KEY_NAME, KEY), {"expiry": time.time() - 10}),
        ]:
            aud, tok = ac.sas_token(*args, "orders", **kw)
            status, desc = c.put_token(aud, tok)
            expect(status == 401 and desc, "%s: got %s %r" % (label, status, desc))
        # A token for one queue does not cover another.
        aud, _ = ac.sas_token(NS, KEY_NAME, KEY, "orders")
        _, tok = ac.sas_token(NS, KEY_NAME, KEY, "payments")
        status, desc = c.put_token(aud, tok)
        expect(status == 401, "token for payments put for orders: %s %r" % (status, desc))
    finally:
        c.close()
    ev = [e for e in d.events("put-token", "orders") if e["status"] == 401]
    expect(len(ev) >= 4, "expected 4 put-token 401 events, got %s" % ev)


def check_attach_refused_without_token(d):
    name = q()
    c = client(d)
    try:
        for make in (lambda: c.sender(name), lambda: c.receiver(name),
                     lambda: c.receiver(name + "/$DeadLetterQueue")):
            try:
                make()
                raise Check("attach to %s was not refused" % name)
            except ac.LinkRefused as e:
                expect(e.condition == "amqp:unauthorized-access", "refused with %s" % e.condition)
        # With a token for another entity: still refused.
        c.authorize(NS, KEY_NAME, KEY, "elsewhere")
        try:
            c.sender(name)
            raise Check("attach with a token for another entity was not refused")
        except ac.LinkRefused as e:
            expect(e.condition == "amqp:unauthorized-access", "refused with %s" % e.condition)
    finally:
        c.close()
    expect(len(d.events("attach-refused", name)) >= 2, "no attach-refused events for %s" % name)


def check_send_receive_complete(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"n":1}', '{"n":2}'], ids=["m-1", "m-2"], subject="order.placed")
        stored = d.messages(name)
        expect([m["body"] for m in stored] == ['{"n":1}', '{"n":2}'], "stored: %s" % stored)
        seqs = [m["message_annotations"].get("x-opt-sequence-number") for m in stored]
        expect(seqs == [1, 2], "sequence numbers %s" % seqs)
        expect(all(isinstance(m["message_annotations"].get("x-opt-enqueued-time"), int) for m in stored),
               "no x-opt-enqueued-time: %s" % stored)
        expect(stored[0]["properties"].get("subject") == "order.placed"
               and stored[0]["message_id"] == "m-1"
               and stored[0]["application_properties"] == {"message-type": "test"}
               and stored[0]["body_type"] == "data", "stored message: %s" % stored[0])
        r = c.receiver(name)
        got = []
        for _ in range(2):
            msg, dlv = r.receive(5)
            ann = msg.annotations
            token = ac.lock_token(dlv)
            expect(ann.get("x-opt-lock-token") == token,
                   "x-opt-lock-token %r vs tag %s" % (ann.get("x-opt-lock-token"), token))
            expect(isinstance(ann.get("x-opt-locked-until"), timestamp)
                   and int(ann["x-opt-locked-until"]) > time.time() * 1000, "locked-until %r" % ann)
            expect(msg.delivery_count == 0, "delivery-count %s" % msg.delivery_count)
            expect(isinstance(msg.body, bytes), "body is %r, not a data section" % type(msg.body))
            got.append(msg.body.decode())
            expect(entity(d, name)["locked"] >= 1, "not locked: %s" % entity(d, name))
            ac.accept(dlv)
        expect(got == ['{"n":1}', '{"n":2}'], "received %s" % got)
        c.pump(0.2)
        st = entity(d, name)
        expect(st["completed"] == 2 and st["active"] == 0 and st["locked"] == 0, "state %s" % st)
        expect(len(d.events("complete", name)) == 2, "complete events %s" % d.events("complete", name))
    finally:
        c.close()


def check_credit_honoured(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"i":%d}' % i for i in range(5)])
        r = c.receiver(name)
        r.flow(2)
        try:
            c.bc.wait(lambda: len(r.incoming) > 2, timeout=0.5)
        except Timeout:
            pass
        expect(len(r.incoming) == 2, "with 2 credits %d messages came" % len(r.incoming))
        st = entity(d, name)
        expect(st["locked"] == 2 and st["active"] == 3, "state %s" % st)
        for _ in range(2):
            _, dlv = r.receive(5)
            ac.accept(dlv)
    finally:
        c.close()


def check_abandon_counts(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"a":1}'])
        r = c.receiver(name)
        msg, dlv = r.receive(5)
        expect(msg.delivery_count == 0, "first delivery-count %s" % msg.delivery_count)
        ac.abandon(dlv)                     # Modified(delivery-failed)
        msg, dlv = r.receive(5)
        expect(msg.delivery_count == 1, "after abandon delivery-count %s" % msg.delivery_count)
        ac.release(dlv)                     # Released: not counted
        msg, dlv = r.receive(5)
        expect(msg.delivery_count == 1, "after release delivery-count %s" % msg.delivery_count)
        ac.abandon(dlv, delivery_failed=False)   # Modified without delivery-failed: not counted
        msg, dlv = r.receive(5)
        expect(msg.delivery_count == 1, "after modified(failed=false) %s" % msg.delivery_count)
        ac.accept(dlv)
    finally:
        c.close()
    ev = d.events("abandon", name)
    expect([e["status"] for e in ev] == ["modified", "released", "modified"], "abandon events %s" % ev)


def check_max_delivery_count(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"poison":true}'], ids=["poison-1"])
        r = c.receiver(name)
        for n in range(MAX_DELIVERY):
            msg, dlv = r.receive(5)
            expect(msg.delivery_count == n, "delivery %d has delivery-count %s" % (n, msg.delivery_count))
            ac.abandon(dlv)
        c.pump(0.3)
        expect(not r.incoming, "delivered again past max delivery count")
        st = entity(d, name)
        expect(len(st["dead_letters"]) == 1, "dead letters %s" % st)
        dl = st["dead_letters"][0]
        expect(dl["application_properties"].get("DeadLetterReason") == "MaxDeliveryCountExceeded"
               and dl["message_id"] == "poison-1", "dead letter %s" % dl)
    finally:
        c.close()


def check_dead_letter(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"bad":1}'], ids=["dl-1"], app={"message-type": "order.placed", "tenant": "t1"})
        r = c.receiver(name)
        _, dlv = r.receive(5)
        ac.dead_letter(dlv, "ValidationFailed", "order 1 has no items")
        c.pump(0.2)
        st = entity(d, name)
        expect(st["active"] == 0 and len(st["dead_letters"]) == 1, "state %s" % st)
        ap = st["dead_letters"][0]["application_properties"]
        expect(ap.get("DeadLetterReason") == "ValidationFailed"
               and ap.get("DeadLetterErrorDescription") == "order 1 has no items"
               and ap.get("tenant") == "t1" and ap.get("message-type") == "order.placed",
               "dead letter properties %s" % ap)
        # Readable over AMQP from the dead-letter sub-queue (the entity's token covers it).
        dr = c.receiver(name + "/$DeadLetterQueue")
        msg, dlv = dr.receive(5)
        expect(msg.id == "dl-1" and msg.body == b'{"bad":1}', "DLQ message %s" % msg)
        expect(msg.properties.get("DeadLetterReason") == "ValidationFailed"
               and msg.properties.get("DeadLetterErrorDescription") == "order 1 has no items",
               "DLQ properties %s" % msg.properties)
        ac.accept(dlv)
        c.pump(0.2)
        expect(entity(d, name)["dead_letters"] == [], "DLQ not emptied")
        # No sending to a dead-letter queue.
        try:
            c.sender(name + "/$DeadLetterQueue")
            raise Check("a sender to the DLQ was attached")
        except ac.LinkRefused as e:
            expect(e.condition == "amqp:not-allowed", "DLQ sender refused with %s" % e.condition)
    finally:
        c.close()
    ev = d.events("dead-letter", name)
    expect(ev and ev[0]["status"] == "ValidationFailed", "dead-letter events %s" % ev)


def check_lock_expiry(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"slow":1}'])
        r = c.receiver(name)
        _, old = r.receive(5)
        t0 = time.time()
        r.flow(1)
        msg, dlv = r.receive(LOCK_MS / 1000 + 3)
        waited = time.time() - t0
        expect(msg.delivery_count == 1, "redelivered with delivery-count %s" % msg.delivery_count)
        expect(waited >= LOCK_MS / 1000 - 0.1, "redelivered after %.2fs, lock is %dms" % (waited, LOCK_MS))
        expect(ac.lock_token(dlv) != ac.lock_token(old), "the new delivery kept the old lock token")
        ac.accept(old)                      # too late: lock lost, no effect
        c.pump(0.3)
        lost = d.events("lock-lost", name)
        expect(lost and lost[-1]["outcome"] == "accepted", "no lock-lost event: %s" % lost)
        st = entity(d, name)
        expect(st["completed"] == 0 and st["locked"] == 1, "the late settle had an effect: %s" % st)
        expect(d.events("lock-expired", name), "no lock-expired event")
        ac.accept(dlv)
    finally:
        c.close()


class _RcvSecond(LinkOption):
    def apply(self, link):
        link.rcv_settle_mode = Link.RCV_SECOND
        link.snd_settle_mode = Link.SND_UNSETTLED


def check_lock_lost_outcome(d):
    """rcv-settle-mode second: the double answers a late complete with
    Rejected(com.microsoft:message-lock-lost), a timely one with Accepted."""
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"x":1}', '{"x":2}'])
        b = c.bc.create_receiver(name, credit=None, options=[_RcvSecond()])
        r = ac.Receiver(c, b)
        r.flow(1)
        _, dlv = r.receive(5)
        dlv.update(Delivery.ACCEPTED)       # not settled: wait for the double's answer
        c.bc.wait(lambda: dlv.settled, timeout=5)
        expect(dlv.remote_state == Delivery.ACCEPTED, "timely complete answered %s" % dlv.remote_state)
        dlv.settle()
        r.flow(1)
        _, dlv = r.receive(5)
        time.sleep(LOCK_MS / 1000 + 0.3)
        dlv.update(Delivery.ACCEPTED)
        c.bc.wait(lambda: dlv.settled, timeout=5)
        cond = dlv.remote.condition
        expect(dlv.remote_state == Delivery.REJECTED and cond is not None
               and cond.name == "com.microsoft:message-lock-lost",
               "late complete answered %s %s" % (dlv.remote_state, cond))
        dlv.settle()
    finally:
        c.close()


def check_renew_lock(d):
    name = q()
    c = client(d, name)
    try:
        send(c, name, ['{"long":1}'])
        r = c.receiver(name)
        msg, dlv = r.receive(5)
        token = ac.lock_token(dlv)
        first = int(msg.annotations["x-opt-locked-until"])
        t0 = time.time()
        last = first
        while time.time() - t0 < LOCK_MS / 1000 * 2:   # hold it twice the lock duration
            time.sleep(LOCK_MS / 1000 * 0.5)
            status, desc, exps = c.renew_lock(name, [token])
            expect(status == 200 and len(exps) == 1 and exps[0] > last,
                   "renew: %s %r %s (previous %s)" % (status, desc, exps, last))
            last = exps[0]
        st = entity(d, name)
        expect(st["locked"] == 1 and st["active"] == 0, "lock not held past lock-ms: %s" % st)
        expect(not d.events("lock-expired", name), "lock expired despite renewals")
        ac.accept(dlv)
        c.pump(0.2)
        expect(entity(d, name)["completed"] == 1, "complete after renewals failed: %s" % entity(d, name))
        status, desc, _ = c.renew_lock(name, [token])
        expect(status == 410, "renewing a completed lock: %s %r" % (status, desc))
        status, _, _ = c.renew_lock(name, [uuid.uuid4()])
        expect(status == 410, "renewing an unknown lock: %s" % status)
    finally:
        c.close()
    ev = d.events("renew-lock", name)
    expect([e["status"] for e in ev].count(200) >= 3 and ev[-1]["status"] == 410, "renew events %s" % ev)


def check_scheduled(d):
    name = q()
    c = client(d, name)
    try:
        due = int(time.time() * 1000) + 1500
        send(c, name, ['{"later":1}'], annotations={symbol("x-opt-scheduled-enqueue-time"): timestamp(due)})
        st = entity(d, name)
        expect(st["scheduled"] == 1 and st["active"] == 0, "state %s" % st)
        r = c.receiver(name)
        r.flow(1)
        try:
            r.receive(0.8)
            raise Check("a scheduled message came before its time")
        except Timeout:
            pass
        msg, dlv = r.receive(3)
        now = time.time() * 1000
        expect(now >= due - 30, "arrived %.0f ms before its time" % (due - now))
        expect(int(msg.annotations["x-opt-enqueued-time"]) == due, "enqueued-time %r" % msg.annotations)
        ac.accept(dlv)
    finally:
        c.close()


def check_token_expiry_detaches(d):
    name = q()
    c = client(d)
    try:
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, name, expiry=time.time() + 2)
        status, _ = c.put_token(aud, tok)
        expect(status == 202, "put-token %s" % status)
        r = c.receiver(name)
        t0 = time.time()
        cond, desc = c.wait_detached(r.link, timeout=6)
        expect(cond == "amqp:unauthorized-access", "detached with %s %s" % (cond, desc))
        expect(time.time() - t0 < 4, "detached only after %.1fs" % (time.time() - t0))
    finally:
        c.close()
    expect(d.events("detach-expired-token", name), "no detach-expired-token event")


def check_token_refresh_keeps_link(d):
    name = q()
    c = client(d)
    try:
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, name, expiry=time.time() + 2)
        c.put_token(aud, tok)
        r = c.receiver(name)
        time.sleep(1)
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, name, ttl_s=3600)
        status, _ = c.put_token(aud, tok)
        expect(status == 202, "refresh put-token %s" % status)
        try:
            cond, _ = c.wait_detached(r.link, timeout=3)
            raise Check("the link was detached (%s) despite the refreshed token" % cond)
        except Timeout:
            pass
        d.http("POST", "/send", {"entity": name, "messages": [{"body": "after refresh"}]})
        msg, dlv = r.receive(5)
        expect(msg.body == b"after refresh", "got %r" % msg.body)
        ac.accept(dlv)
    finally:
        c.close()


def check_topic_fanout(d):
    c = client(d, "events")
    try:
        send(c, "events", ['{"e":1}'], ids=["ev-1"])
        for sub in ("audit", "billing"):
            r = c.receiver("events/Subscriptions/" + sub)
            msg, dlv = r.receive(5)
            expect(msg.id == "ev-1" and msg.annotations["x-opt-sequence-number"] == 1,
                   "%s got %s" % (sub, msg))
            ac.accept(dlv)
        try:
            c.receiver("events")
            raise Check("a receiver on the topic itself was attached")
        except ac.LinkRefused as e:
            expect(e.condition == "amqp:not-allowed", "topic receiver refused with %s" % e.condition)
        try:
            c.receiver("events/Subscriptions/nosuch")
            raise Check("a receiver on an unknown subscription was attached")
        except ac.LinkRefused as e:
            expect(e.condition == "amqp:not-found", "unknown subscription refused with %s" % e.condition)
    finally:
        c.close()


def check_control_send_and_messages(d):
    name = q()
    due = int(time.time() * 1000) + 60_000
    res = d.http("POST", "/send", {"entity": name, "messages": [
        {"body": '{"k":1}', "properties": {"message_id": "ctl-1", "subject": "order.placed",
                                           "content_type": "application/json"},
         "application_properties": {"message-type": "order.placed", "n": 7}},
        {"body": "later", "message_annotations": {"x-opt-scheduled-enqueue-time": due}},
    ]})
    expect(res.get("enqueued") == 2, "POST /send answered %s" % res)
    ms = d.messages(name)
    expect(len(ms) == 2 and ms[0]["state"] == "active" and ms[1]["state"] == "scheduled",
           "messages %s" % ms)
    expect(ms[0]["properties"] == {"message_id": "ctl-1", "subject": "order.placed",
                                   "content_type": "application/json"}
           and ms[0]["application_properties"] == {"message-type": "order.placed", "n": 7},
           "message 1 %s" % ms[0])
    expect(ms[1]["message_annotations"]["x-opt-scheduled-enqueue-time"] == due, "message 2 %s" % ms[1])
    c = client(d, name)
    try:
        r = c.receiver(name)
        msg, dlv = r.receive(5)
        expect(msg.id == "ctl-1" and msg.subject == "order.placed" and msg.properties["n"] == 7,
               "received %s" % msg)
        ac.accept(dlv)
    finally:
        c.close()


def check_cli_send_receive(d):
    name = q()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for i in range(1, 51):
            f.write('{"order":%d}\n' % i)
        path = f.name
    auth = ["--namespace", NS, "--sas-key-name", KEY_NAME, "--sas-key", KEY]
    cli = [sys.executable if sys.executable else "/usr/bin/python3", os.path.join(HERE, "amqp_client.py")]
    try:
        out = subprocess.run(cli + ["send", "--url", d.url, "--address", name, "--type", "order.placed",
                                    "--bodies", path, "--id-prefix", "cli"] + auth,
                             capture_output=True, text=True, timeout=60)
        expect(out.returncode == 0 and out.stdout.strip() == "sent 50", "send: %s %r %r"
               % (out.returncode, out.stdout, out.stderr))
        ms = d.messages(name)
        expect(len(ms) == 50 and ms[0]["message_id"] == "cli-1"
               and ms[0]["application_properties"] == {"message-type": "order.placed"}
               and ms[0]["properties"]["subject"] == "order.placed"
               and ms[0]["properties"]["content_type"] == "application/json", "stored %s" % ms[:1])
        out = subprocess.run(cli + ["receive", "--url", d.url, "--address", name, "--count", "50",
                                    "--timeout-s", "20"] + auth, capture_output=True, text=True, timeout=60)
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        expect(out.returncode == 0 and len(lines) == 50, "receive: %s, %d lines, %r"
               % (out.returncode, len(lines), out.stderr))
        expect(lines[0]["body"] == '{"order":1}' and lines[0]["message_id"] == "cli-1"
               and "x-opt-sequence-number" in lines[0]["message_annotations"], "line 1 %s" % lines[0])
        time.sleep(0.2)
        expect(entity(d, name)["completed"] == 50, "state %s" % entity(d, name))
        out = subprocess.run(cli + ["receive", "--url", d.url, "--address", name, "--count", "1",
                                    "--timeout-s", "1"] + auth, capture_output=True, text=True, timeout=60)
        expect(out.returncode == 3 and "timed out" in out.stderr, "empty receive: %s %r"
               % (out.returncode, out.stderr))
        out = subprocess.run(cli + ["send", "--url", d.url, "--address", name, "--type", "t",
                                    "--bodies", path], capture_output=True, text=True, timeout=60)
        expect(out.returncode != 0 and "unauthorized-access" in out.stderr,
               "send without a token: %s %r" % (out.returncode, out.stderr))
    finally:
        os.unlink(path)


def check_sasl(d):
    # PLAIN is accepted (credentials ignored: authorization is CBS).
    c = ac.Client("amqp://someone:whatever@127.0.0.1:%d" % d.port, timeout=10)
    try:
        aud, tok = ac.sas_token(NS, KEY_NAME, KEY, "orders")
        expect(c.put_token(aud, tok)[0] == 202, "put-token over a PLAIN connection")
    finally:
        c.close()
    # No SASL layer at all: refused with the SASL header.
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    try:
        s.sendall(b"AMQP\x00\x01\x00\x00")
        head = s.recv(8)
        rest = s.recv(100)
        expect(head == b"AMQP\x03\x01\x00\x00" and rest == b"", "answer to a SASL-less header: %r %r"
               % (head, rest))
    finally:
        s.close()


def check_reject_sends(d):
    name = q()
    res = d.http("POST", "/reject-sends", {"entity": name, "count": 1, "condition": "amqp:not-allowed",
                                           "description": "no thanks"})
    expect(res == {"entity": name, "count": 1}, "POST /reject-sends answered %s" % res)
    c = client(d, name)
    try:
        msgs = []
        for i in (1, 2):
            m = ac.Message()
            m.body = b"x"
            m.inferred = True
            m.id = "rej-%d" % i
            msgs.append((i, m))
        accepted, failures = c.send_all(name, msgs)
        expect(accepted == 1 and len(failures) == 1 and failures[0][0] == 1
               and "rejected" in failures[0][1] and "no thanks" in failures[0][1],
               "accepted %s, failures %s" % (accepted, failures))
    finally:
        c.close()
    expect([m["message_id"] for m in d.messages(name)] == ["rej-2"], "stored %s" % d.messages(name))
    expect(d.events("send-rejected", name), "no send-rejected event")


def check_disconnect(d):
    name = q()
    c = client(d, name)
    try:
        r = c.receiver(name)
        res = d.http("POST", "/disconnect")
        expect(res["closed"] >= 1, "disconnect %s" % res)
        closed = None
        try:
            c.bc.wait(lambda: False, timeout=3)
        except Timeout:
            pass
        except Exception as e:  # proton's ConnectionClosed
            closed = e
        expect(closed is not None and "amqp:connection:forced" in str(closed),
               "the connection was not closed with amqp:connection:forced: %r" % closed)
        del r
    finally:
        c.close()


CHECKS = [
    ("put-token accepted (202)", check_put_token_202),
    ("put-token refused (401): bad key, key name, expiry, audience", check_put_token_401),
    ("attach refused without a token (amqp:unauthorized-access)", check_attach_refused_without_token),
    ("send, receive (peek-lock annotations), complete", check_send_receive_complete),
    ("link credit honoured", check_credit_honoured),
    ("abandon: Modified(delivery-failed) counts, Released does not", check_abandon_counts),
    ("max delivery count dead-letters (MaxDeliveryCountExceeded)", check_max_delivery_count),
    ("dead-letter with reason/description, read from $DeadLetterQueue", check_dead_letter),
    ("lock expiry redelivers with delivery-count+1; late settle is lock-lost", check_lock_expiry),
    ("rcv-settle-mode second: late complete answered with message-lock-lost", check_lock_lost_outcome),
    ("renew-lock holds a lock past lock-ms; 410 for a lost lock", check_renew_lock),
    ("scheduled message arrives only at its time", check_scheduled),
    ("token expiry detaches the link (amqp:unauthorized-access)", check_token_expiry_detaches),
    ("token refresh before expiry keeps the link", check_token_refresh_keeps_link),
    ("topic copies to each subscription", check_topic_fanout),
    ("control POST /send and GET /messages", check_control_send_and_messages),
    ("amqp_client.py send/receive CLI against the double", check_cli_send_receive),
    ("SASL: PLAIN accepted, no SASL refused", check_sasl),
    ("POST /reject-sends rejects the next transfers", check_reject_sends),
    ("POST /disconnect closes connections", check_disconnect),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-k", default="", help="run only the checks whose name contains this")
    args = p.parse_args()
    d = Double()
    passed = failed = 0
    try:
        for name, fn in CHECKS:
            if args.k and args.k not in name:
                continue
            t0 = time.time()
            try:
                fn(d)
                passed += 1
                print("PASS %s (%.1fs)" % (name, time.time() - t0), flush=True)
            except Check as e:
                failed += 1
                print("FAIL %s: %s" % (name, e), flush=True)
            except Exception as e:
                failed += 1
                print("FAIL %s: %s: %s\n%s" % (name, type(e).__name__, e, traceback.format_exc()), flush=True)
        internal = d.events("internal-error")
        if internal:
            failed += 1
            print("FAIL the double logged internal errors: %s" % internal, flush=True)
    finally:
        err = d.stop()
    if failed and err.strip():
        print("--- the double's stderr ---\n%s" % err[-4000:])
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
