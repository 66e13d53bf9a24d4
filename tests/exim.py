"""A private Exim for tests: Debian's ``exim4-daemon-heavy`` binary unpacked (not installed) by
``.ci/exim.sh``, run with a configuration file the test writes (``exim -C FILE``), its spool and
logs in a temporary directory, listening on a loopback port, never the system's mail setup.

Exim is unpacked rather than installed because Debian's exim4 packages conflict with postfix,
which the Postfix tests need.  Running it needs root: Exim starts as root and does its work as
the ``Debian-exim`` user compiled into Debian's binary (``.ci/exim.sh`` creates that user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from servers import free_port, wait_port

EXIM_USER = "Debian-exim"


def exim_dir() -> Path:
    """Where ``.ci/exim.sh`` unpacks Exim (the same rule as the script)."""
    return Path(os.environ.get("ANTISPAM_EXIM_DIR") or "/var/cache/antispam-exim")


def exim_binary() -> Path:
    return exim_dir() / "root" / "usr" / "sbin" / "exim4"


def available() -> str | None:
    """Why Exim cannot run here, or None when it can."""
    exe = exim_binary()
    if not exe.exists():
        return f"Exim is not unpacked at {exe}: run .ci/exim.sh (as root) to fetch it"
    if os.geteuid() != 0:
        return "a private Exim instance needs root"
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        return f"user {EXIM_USER} does not exist: run .ci/exim.sh (as root) to create it"
    probe = subprocess.run([str(exe), "-C", "/dev/null", "-bV"], capture_output=True, timeout=30)
    if probe.returncode != 0 or b"Content_Scanning" not in probe.stdout:
        return f"{exe} does not run or lacks content scanning: {probe.stderr.decode(errors='replace')[:200]}"
    return None


class Exim:
    """``Exim(spamd_port=..., relay_port=..., data_acl="...")``: an Exim daemon on ``self.port``
    accepting mail for ``rcpt.test`` and relaying it to 127.0.0.1:relay_port, asking the spamd
    server on ``spamd_port`` from the DATA ACL ``data_acl`` (Exim ACL lines); ``spamd_options``
    follow the address in ``spamd_address`` (``variant=rspamd``)."""

    def __init__(self, spamd_port: int, relay_port: int, data_acl: str, spamd_options: str = ""):
        self.exe = exim_binary()
        uid = pwd.getpwnam(EXIM_USER)
        self.dir = Path(tempfile.mkdtemp(prefix="antispam-exim-"))
        self.dir.chmod(0o755)
        self.spool = self.dir / "spool"
        self.logs = self.dir / "log"
        for d in (self.spool, self.logs):
            d.mkdir()
            os.chown(d, uid.pw_uid, uid.pw_gid)  # Exim receives and delivers as its own user
        self.port = free_port()
        self.conf = self.dir / "exim.conf"
        self.conf.write_text(CONFIG.format(exe=self.exe, spool=self.spool, logs=self.logs,
                                           spamd_port=spamd_port, spamd_options=spamd_options, relay_port=relay_port,
                                           data_acl=data_acl))
        self.conf.chmod(0o644)  # Exim refuses a configuration others could write
        self.proc = subprocess.Popen(
            [str(self.exe), "-C", str(self.conf), "-bdf", "-oX", str(self.port), "-oP", str(self.dir / "pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"Exim did not start: {self.log('main')}{self.log('panic')}")

    def log(self, name: str = "main") -> str:
        path = self.logs / f"{name}log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 20.0) -> str:
        """The main log once it contains ``needle`` (deliveries happen after the SMTP reply)."""
        deadline = time.monotonic() + timeout
        while needle not in (text := self.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return text

    def queue(self) -> list[str]:
        """Ids of the messages held in the spool (deferred deliveries)."""
        out = subprocess.run([str(self.exe), "-C", str(self.conf), "-bpi"], capture_output=True, timeout=30)
        return out.stdout.decode().split()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# Exim's configuration for the tests: one domain (rcpt.test) accepted from loopback clients and
# relayed to the sink; the DATA ACL is the test's.  Nothing here looks anything up in the DNS.
CONFIG = """\
exim_path = {exe}
primary_hostname = exim.test
qualify_domain = exim.test
local_interfaces = <; 127.0.0.1
spool_directory = {spool}
log_file_path = {logs}/%slog
log_selector = +received_recipients +smtp_confirmation
message_logs = false
keep_environment =
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
tls_advertise_hosts =
never_users =
domainlist relay_to_domains = rcpt.test

spamd_address = 127.0.0.1 {spamd_port} {spamd_options}

acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl

acl_check_rcpt:
  accept  hosts   = 127.0.0.1
          domains = +relay_to_domains
  deny    message = relay not permitted

acl_check_data:
{data_acl}

begin routers

to_sink:
  driver = manualroute
  domains = +relay_to_domains
  transport = sink_smtp
  route_list = * 127.0.0.1
  self = send

begin transports

sink_smtp:
  driver = smtp
  port = {relay_port}
  allow_localhost
  hosts_avoid_tls = *

begin retry

*  *  F,1h,1m
"""
