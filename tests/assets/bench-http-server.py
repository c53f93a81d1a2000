#!/usr/bin/env python3
"""The peer HTTP server for `bench-boot`: serves the test guest's kernel and
initrd plus an iPXE script, and accepts the guest's status report.

Usage: bench-http-server.py --bind ADDR --port PORT --dir DIR --url URL
DIR holds vmlinuz and initrd.img; URL is what the guest reports to (levee.url).
Stdlib only, so any Debian python3 runs it.
"""
import argparse
import http.server
import os
import sys


def make_handler(directory, script):
    class Handler(http.server.SimpleHTTPRequestHandler):
        # HTTP/1.1 so iPXE keeps one connection for script, kernel and initrd,
        # as it does with levee.
        protocol_version = "HTTP/1.1"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def do_GET(self):
            if self.path.split("?")[0] == "/boot.ipxe":
                body = script.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def copyfile(self, source, outputfile):
            # sendfile(2) instead of copying through Python buffers: the
            # peer's best case for the 8 MB kernel.
            outputfile.flush()
            try:
                self.connection.sendfile(source)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            if self.path != "/api/v1/report":
                self.send_error(404)
                return
            sys.stderr.write("report: %s\n" % body.decode(errors="replace"))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--dir", required=True)
    p.add_argument("--url", required=True)
    args = p.parse_args()
    for name in ("vmlinuz", "initrd.img"):
        if not os.path.isfile(os.path.join(args.dir, name)):
            sys.exit("missing %s in %s" % (name, args.dir))
    # The same kernel command line bench-boot gives levee's profile; iPXE
    # fills in the MAC. initrd= is needed by EFI kernels; no_timer_check
    # because TCG guests on a loaded host can panic in the IO-APIC timer check.
    script = (
        "#!ipxe\n"
        "echo peer: test guest\n"
        "kernel {url}/vmlinuz initrd=initrd.img console=ttyS0,115200 no_timer_check "
        "levee.url={url} levee.mac=${{net0/mac}}\n"
        "initrd {url}/initrd.img\n"
        "boot\n"
    ).format(url=args.url)
    server = http.server.ThreadingHTTPServer(
        (args.bind, args.port), make_handler(args.dir, script)
    )
    server.daemon_threads = True
    sys.stderr.write("http listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
