"""The cold tier on a real XRootD server (Debian's ``xrootd-server``, started here on loopback): put, audit,
corrupt, repair, and ``get`` falling back to the remote replica."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vbes.archive import Archive

pytestmark = pytest.mark.xrootd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def xrootd_server() -> Iterator[tuple[str, Path]]:
    """``(root://127.0.0.1:PORT, data folder)`` of a private XRootD server, stopped at teardown."""
    binary = shutil.which("xrootd")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the xrootd binary is missing; CI must install it: apt-get install -y xrootd-server")
        pytest.skip("the xrootd binary is absent (Debian: apt-get install -y xrootd-server)")
    # not under pytest's tmp_path: that folder is private to root, and the server runs as nobody
    base = Path(tempfile.mkdtemp(prefix="vbes-xrootd-"))
    data, admin = base / "data", base / "admin"
    data.mkdir()
    admin.mkdir()
    port = _free_port()
    config = base / "xrootd.cfg"
    config.write_text(
        "all.export /\n"
        f"oss.localroot {data}\n"
        f"xrd.port {port}\n"
        "all.role server\n"
        f"all.adminpath {admin}\n"
        f"all.pidpath {admin}\n"
        # connections from loopback only
        "xrd.allow host localhost\n"
        "xrd.allow host 127.0.0.1\n"
    )
    command = [binary, "-c", str(config), "-l", str(base / "xrootd.log")]
    if os.geteuid() == 0:
        # xrootd refuses to run as root ("Security reasons prohibit running as superuser")
        base.chmod(0o755)
        for path in (base, data, admin):
            shutil.chown(path, user="nobody")
        command += ["-R", "nobody"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                log = (
                    (base / "xrootd.log").read_text(errors="replace")[-2000:]
                    if (base / "xrootd.log").exists()
                    else ""
                )
                pytest.fail(f"xrootd exited with status {server.returncode}: {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("xrootd did not listen within 30 s")
                time.sleep(0.1)
        yield f"root://127.0.0.1:{port}", data
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_cold_tier_on_xrootd_put_audit_corrupt_repair(
    tmp_path: Path, xrootd_server: tuple[str, Path]
) -> None:
    endpoint, served = xrootd_server
    cold_url = f"{endpoint}//vbes/cold"
    files = {f"mc:run{i}.h5": os.urandom(30_000 + 7 * i) for i in range(3)}
    with Archive(
        f"sqlite:///{tmp_path / 'c.sqlite'}", {"hot": str(tmp_path / "hot"), "cold": cold_url}
    ) as archive:
        shas = {}
        for name, data in files.items():
            src = tmp_path / "src.bin"
            src.write_bytes(data)
            result = archive.put(src, name)
            assert set(result.written_tiers) == {"hot", "cold"}
            shas[name] = result.sha256
        remote = {name: served / "vbes" / "cold" / sha[:2] / sha[2:4] / sha for name, sha in shas.items()}
        for name, path in remote.items():  # the bytes really are on the server, under their SHA-256
            assert path.read_bytes() == files[name]
        assert archive.info("mc:run0.h5").replica("cold").state == "available"  # type: ignore[union-attr]
        assert not any(
            p.is_file() for p in (served / "vbes" / "cold" / ".tmp").iterdir()
        )  # renamed into place
        report = archive.audit()
        assert report.exit_code == 0 and report.replicas_ok == 6 and not report.dark, report.as_dict()

        # corrupt on the server: a flipped bit, a truncation, and a stray file nobody catalogued
        flipped = bytearray(files["mc:run0.h5"])
        flipped[100] ^= 0x04
        remote["mc:run0.h5"].write_bytes(bytes(flipped))
        remote["mc:run1.h5"].write_bytes(files["mc:run1.h5"][:1000])
        (served / "vbes" / "cold" / "stray.dat").write_bytes(b"dark")
        report = archive.audit()
        assert {(b["names"][0], b["tier"]) for b in report.bad} == {
            ("mc:run0.h5", "cold"),
            ("mc:run1.h5", "cold"),
        }
        assert [d["kind"] for d in report.dark] == ["stray"] and report.exit_code == 3
        assert all(b["location"].startswith("root://127.0.0.1") for b in report.bad)

        report = archive.audit(repair=True)
        assert {(r["names"][0], r["source"]) for r in report.repaired} == {
            ("mc:run0.h5", "hot"),
            ("mc:run1.h5", "hot"),
        }
        # a dark file stays a finding: the repair never deletes data it does not know (issue 8)
        assert [d["kind"] for d in report.dark] == ["stray"] and report.exit_code == 3
        for name, path in remote.items():
            assert path.read_bytes() == files[name]
        (served / "vbes" / "cold" / "stray.dat").unlink()
        assert archive.audit().exit_code == 0

        # get falls back to the XRootD replica when the hot one is gone
        (tmp_path / "hot" / shas["mc:run2.h5"][:2] / shas["mc:run2.h5"][2:4] / shas["mc:run2.h5"]).unlink()
        archive.get("mc:run2.h5", tmp_path / "back.h5")
        assert (tmp_path / "back.h5").read_bytes() == files["mc:run2.h5"]
