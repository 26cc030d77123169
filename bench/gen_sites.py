#!/usr/bin/python3
"""gen_sites.py N DIR - write N simple site files (one host, one upstream
server, one proxy route, like `proxyctl add-site NAME --host H --upstream A`)
plus every tenth site with a few more routes, into DIR."""
import os
import sys

n, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
for i in range(n):
    extra = ""
    if i % 10 == 0:
        extra = (
            "  - match: {path_exact: /healthz}\n    return: {status: 200}\n"
            "  - match: {path_regex: '\\.(git|env)$'}\n    return: {status: 404}\n"
            "  - match: {path_prefix: /api/, methods: [GET, POST]}\n    upstream: app\n    strip_prefix: true\n"
        )
    with open(os.path.join(out, f"site{i:05d}.yaml"), "w") as f:
        f.write(
            f"site: site{i:05d}\n"
            f"hosts: [www{i}.bench.example]\n"
            "upstreams:\n  app:\n    servers:\n"
            f"      - address: \"127.0.0.{1 + i % 250}:{3000 + i % 1000}\"\n"
            "routes:\n" + extra +
            "  - match: {path_prefix: /}\n    upstream: app\n"
        )
