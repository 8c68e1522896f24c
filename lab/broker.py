"""The city's MQTT broker: Debian's mosquitto, run by the lab as a child process.

:class:`Broker` writes a mosquitto configuration into a temporary directory and runs
``mosquitto -c <that file>``: one listener on ``site.broker:site.mqtt_port`` (MQTT 3.1.1 and 5),
no persistence (every run starts empty), and anonymous clients allowed, as many city sensor
networks do: the sensors publish without credentials, which is exactly what the rogue-publisher
scenario exploits. The system-wide mosquitto (``/etc/mosquitto``, the Debian package's systemd
unit) is never used or touched: the lab's broker has its own configuration and process.

mosquitto logs to its standard error, which goes to a file in the temporary directory; the
broker is ready when it logs ``running`` (printed after every listener is bound), so start-up
sends nothing on the wire. Started as root, mosquitto drops to the ``mosquitto`` user the Debian
package creates, after reading its configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from lab.base import LabSite

#: where Debian puts the binary (``/usr/sbin`` is often missing from a user's PATH)
DEBIAN_BINARY = Path("/usr/sbin/mosquitto")
INSTALL_HINT = (
    "mosquitto (the MQTT broker) is not installed: install Debian's package with "
    "`sudo apt-get install -y mosquitto` (or `make mosquitto`, or put a `mosquitto` binary on PATH)"
)


class MosquittoMissing(RuntimeError):
    """The mosquitto binary is not there and could not be installed."""


def find_mosquitto() -> Path | None:
    """The mosquitto binary: ``mosquitto`` on PATH, else Debian's ``/usr/sbin/mosquitto``."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    if DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return None


def ensure_mosquitto() -> Path:
    """The mosquitto binary; when it is missing and we are root, install Debian's package.

    Blocking (apt-get takes a while): call it with :func:`asyncio.to_thread` from async code.
    Raises :class:`MosquittoMissing` naming what to install when it cannot be had.
    """
    found = find_mosquitto()
    if found is not None:
        return found
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise MosquittoMissing(INSTALL_HINT)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(  # noqa: S603 (a fixed command)
        [apt_get, "install", "-y", "--no-install-recommends", "mosquitto"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = find_mosquitto()
    if found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise MosquittoMissing(
            f"{INSTALL_HINT}; `apt-get install -y mosquitto` failed "
            f"(exit {done.returncode}): {' / '.join(tail)}"
        )
    return found


def mosquitto_config(site: LabSite) -> str:
    """The broker's configuration (mosquitto.conf syntax) for the site."""
    return "\n".join(
        [
            "# written by lab/broker.py: the lab's own broker, not the system one",
            "per_listener_settings false",
            f"listener {site.mqtt_port} {site.broker}",
            "protocol mqtt",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # $SYS/# (version, clients, load) every 10 s: what a discovery scan reads
            "sys_interval 10",
            "",
        ]
    )


class Broker:
    """The MQTT broker of the site as a lab :class:`~lab.base.Service` (mosquitto)."""

    name = "mqtt-broker"

    def __init__(self, site: LabSite, *, seed: int = 0, start_timeout_s: float = 5.0) -> None:
        """``seed`` is accepted like every lab service's, and unused: a broker has no chance."""
        self.site = site
        self.start_timeout_s = start_timeout_s
        self.binary: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None
        self._log_text = ""

    @property
    def running(self) -> bool:
        """Whether the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The mosquitto process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    async def start(self) -> None:
        """Run mosquitto and return once its listener accepts connections."""
        if self.running:
            return
        self.binary = await asyncio.to_thread(ensure_mosquitto)
        self._dir = tempfile.TemporaryDirectory(prefix="lab-mosquitto-")
        folder = Path(self._dir.name)
        conf = folder / "mosquitto.conf"
        conf.write_text(mosquitto_config(self.site), encoding="utf-8")
        # mosquitto drops root for its own user after reading the file: let it read it
        conf.chmod(0o644)
        self._log = (folder / "mosquitto.log").open("wb")
        self._proc = subprocess.Popen(  # noqa: S603 (our binary, our arguments)
            [str(self.binary), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the lab, which stops us
        )
        try:
            await self._wait_running(folder / "mosquitto.log")
        except BaseException:
            await self.stop()
            raise

    async def _wait_running(self, log: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            text = log.read_text(encoding="utf-8", errors="replace")
            if " running" in text:
                return
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited ({self._proc.returncode}) before listening on "
                    f"{self.site.broker}:{self.site.mqtt_port}: {_tail(text)}"
                )
            if loop.time() > deadline:
                raise TimeoutError(
                    f"mosquitto not listening on {self.site.broker}:{self.site.mqtt_port} "
                    f"after {self.start_timeout_s} s: {_tail(text)}"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Terminate mosquitto (SIGTERM, then SIGKILL after 3 s), wait for it, remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 3.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
            else:
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            log = Path(self._dir.name) / "mosquitto.log"
            with contextlib.suppress(OSError):
                self._log_text = log.read_text(encoding="utf-8", errors="replace")
            self._dir.cleanup()
            self._dir = None

    def log(self) -> str:
        """mosquitto's log so far (connections, disconnections, errors): for debugging."""
        if self._dir is not None:
            with contextlib.suppress(OSError):
                return (Path(self._dir.name) / "mosquitto.log").read_text(
                    encoding="utf-8", errors="replace"
                )
        return self._log_text

    def history(self) -> list[dict[str, Any]]:
        """A broker has no process values of its own: the sensors' history holds the samples."""
        return []


def _tail(text: str, lines: int = 5) -> str:
    return " / ".join(text.strip().splitlines()[-lines:]) or "(no output)"
