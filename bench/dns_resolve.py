#!/usr/bin/env python3
"""dns_resolve.py - upstream host names (docs/upstreams.md): how soon a changed DNS answer
reaches new requests with `resolve: 1s`, and whether a name server that withholds its
answers slows another site of the same worker.

usage: PROXYD=bin/proxyd PROXYCTL=bin/proxyctl /usr/bin/python3 bench/dns_resolve.py

One worker; the DNS responder, backends (127.0.0.2/.3) and client are those of
tests/integration/test_dns.py.  The latency of the other site includes the Python client
and backend on each side (one new connection per request); compare the two phases.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from test_dns import DnsResponder, Backend
from proxyd_fixtures import Proxyd, free_port, http, proxy_site

tmp = tempfile.mkdtemp()
dns = DnsResponder()
port = free_port()
backs = [Backend("127.0.0.2", port, "127.0.0.2"), Backend("127.0.0.3", port, "127.0.0.3")]
o = Backend("127.0.0.1", free_port(), "other")
site = proxy_site("dnsapp", f"app.test:{port}", hosts=["dns.test"], default=True, upstream_extra="resolve: 1s")
site2 = proxy_site("other", f"127.0.0.1:{o.server.server_address[1]}", hosts=["other.test"])
dns.set("app.test", ["127.0.0.2"])
p = Proxyd(tmp, {"resolver": [f"127.0.0.1:{dns.port}"]}, [site, site2], workers=1)
p.start()
try:
    switch = []
    cur = "127.0.0.2"
    for i in range(6):
        nxt = "127.0.0.3" if cur == "127.0.0.2" else "127.0.0.2"
        time.sleep(0.3)
        dns.set("app.test", [nxt]); t0 = time.monotonic()
        for _ in range(400):
            if http(p.port, host="dns.test").body.decode() == nxt:
                break
            time.sleep(0.01)
        switch.append(time.monotonic() - t0); cur = nxt
    print("switch latency with resolve: 1s (s):", [round(x, 2) for x in switch], "max", round(max(switch), 2))
    def phase(label):
        lat = []
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            t0 = time.monotonic(); r = http(p.port, host="other.test"); lat.append(time.monotonic() - t0)
            assert r.status == 200
        lat.sort()
        print(f"{label}: n={len(lat)} median={statistics.median(lat)*1000:.1f}ms "
              f"p99={lat[int(len(lat)*0.99)-1]*1000:.1f}ms max={lat[-1]*1000:.1f}ms")
    phase("other site, resolver answering at once")
    dns.set("app.test", [cur], mode="delay")
    phase("other site, resolver delaying every answer 2 s")
    print("queries seen", len(dns.queries))
    lat = []
finally:
    p.stop(check=False)
    for b in backs + [o]:
        b.stop()
    dns.stop()
