"""A private Postfix for tests: its own config, queue and data directories under /tmp, loopback
ports only, never the system instance (``postfix -c DIR``).  Needs root and Debian's postfix."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from servers import free_port, wait_port

SERVICES = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> str | None:
    """Why Postfix cannot run here, or None when it can."""
    if shutil.which("postfix") is None or not Path("/usr/lib/postfix/sbin/master").exists():
        return "postfix is not installed (Debian package postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    return None


class Postfix:
    """``Postfix(relay_port=..., main={...}, extra_master="...")``: smtpd on ``self.port``,
    relaying every domain in ``relay_domains`` to 127.0.0.1:relay_port."""

    def __init__(self, relay_port: int, main: dict[str, str] | None = None, extra_master: str = "",
                 smtpd_options: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="antispam-postfix-"))
        self.dir.chmod(0o755)  # the postfix user walks into its queue below
        self.conf = self.dir / "conf"
        self.conf.mkdir()
        (self.dir / "data").mkdir()
        (self.dir / "queue").mkdir()
        self.port = free_port()
        self.main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "queue"),
            "data_directory": str(self.dir / "data"),
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-antispam-test",
            "maillog_file": str(self.dir / "maillog"),
            "maillog_file_prefixes": str(self.dir),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.rcpt.test",
            "mydomain": "rcpt.test",
            "myorigin": "rcpt.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "rcpt.test",
            "transport_maps": f"inline:{{rcpt.test=smtp:[127.0.0.1]:{relay_port}}}",
            "smtp_dns_support_level": "disabled",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
            "smtputf8_enable": "no",
            "biff": "no",
            "queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            **(main or {}),
        }
        self.extra_master = extra_master
        self.smtpd_options = smtpd_options
        self._write()
        self._run("set-permissions", "create-missing")
        self._run("start")
        wait_port(self.port, 20)

    def _write(self) -> None:
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main.items()))
        (self.conf / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n{self.smtpd_options}" + SERVICES + self.extra_master)

    def _run(self, *args: str) -> None:
        r = subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {r.stdout}{r.stderr}\n{self.log()}")

    def set(self, **main: str) -> None:
        """Change main.cf settings and reload."""
        self.main.update(main)
        self._write()
        self._run("reload")
        time.sleep(1.0)  # the master re-reads its configuration asynchronously

    def log(self) -> str:
        p = self.dir / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""

    def queue_ids(self) -> list[str]:
        r = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], capture_output=True, text=True, timeout=30)
        return [line for line in r.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.conf), "-f"], capture_output=True, timeout=30)

    def stop(self) -> None:
        try:
            self._run("stop")
        except RuntimeError:
            subprocess.run(["postfix", "-c", str(self.conf), "abort"], capture_output=True, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def swaks(port: int, raw: bytes, mail_from: str = "ana@sender.test", to: str = "bo@rcpt.test",
          timeout: float = 60) -> subprocess.CompletedProcess:
    """Send ``raw`` with swaks; returns the completed process (exit code 0 = accepted)."""
    with tempfile.NamedTemporaryFile(suffix=".eml") as fh:
        fh.write(raw)
        fh.flush()
        return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--from", mail_from,
                               "--to", to, "--helo", "client.sender.test", "--data", fh.name, "--timeout", "30"],
                              capture_output=True, text=True, timeout=timeout)
