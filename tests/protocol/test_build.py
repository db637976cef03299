"""`python -m auxilio.build` (make firmware): compiles firmware and codec; the built codec passes the vectors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from auxilio.build import HOST_ONLY, MANIFEST, SOURCE_ONLY, build

from tests.conftest import FIRMWARE, run_micropython
from tests.protocol.vectors import VECTORS, VECTORS_DIR

HERE = Path(__file__).resolve().parent


def test_build_compiles_firmware_and_codec(tmp_path: Path) -> None:
    out = tmp_path / "fw"
    built = {b.name: b for b in build(out)}
    assert built["auxcodec.mpy"].compiled
    assert (out / "auxcodec.mpy").read_bytes()[:1] == b"M"  # mpy magic
    for src in FIRMWARE.rglob("*.py"):
        if "__pycache__" in src.parts:
            continue
        rel = src.relative_to(FIRMWARE)
        if len(rel.parts) == 1 and rel.name in HOST_ONLY:
            assert not (out / rel.with_suffix(".mpy")).exists() and rel.name not in built
            continue
        if len(rel.parts) == 1 and rel.name in SOURCE_ONLY:
            assert (out / rel).read_bytes() == src.read_bytes()  # copied as source
            assert not built[rel.as_posix()].compiled
        else:
            name = rel.with_suffix(".mpy").as_posix()
            assert (out / name).is_file() and built[name].compiled
    for b in built.values():
        assert (out / b.name).stat().st_size == b.size > 0


def test_built_codec_mpy_runs_every_vector(micropython: str, tmp_path: Path) -> None:
    out = tmp_path / "fw"
    build(out)
    script = (
        "import auxcodec\n"
        "assert auxcodec.__file__.endswith('.mpy'), auxcodec.__file__\n"
        f"import mp_vectors\nmp_vectors.run({str(VECTORS_DIR)!r})\n"
    )
    r = run_micropython(script, path=[HERE, out])  # out first: the .mpy, not the source
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"done {len(VECTORS)}"
    assert all(line.startswith("ok ") for line in lines[:-1]), r.stdout


def test_build_layout_and_stale_files(tmp_path: Path) -> None:
    fw = tmp_path / "src"
    (fw / "app" / "hal").mkdir(parents=True)
    (fw / "main.py").write_text("import app\n")
    (fw / "boot.py").write_text("# boot\n")
    (fw / "app" / "__init__.py").write_text("X = 1\n")
    (fw / "app" / "hal" / "pins.py").write_text("LED = 2\n")
    (fw / "app" / "main.py").write_text("Y = 2\n")  # not top level: compiled
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.py").write_text("# not ours: never removed\n")
    (fw / "old").mkdir()
    (fw / "old" / "gone.py").write_text("Z = 0\n")
    assert "old/gone.mpy" in [b.name for b in build(out, fw)]
    (fw / "old" / "gone.py").unlink()
    names = [b.name for b in build(out, fw)]
    assert names == [
        "app/__init__.mpy",
        "app/hal/pins.mpy",
        "app/main.mpy",
        "auxcodec.mpy",
        "auxsms.mpy",
        "boot.py",
        "main.py",
    ]
    assert not (out / "old").exists()  # stale output of a deleted source is gone
    assert (out / "mine.py").exists()
    r = run_micropython("import app.hal.pins as p\nimport app\nprint(p.LED + app.X)", path=[out])
    assert r.stdout.strip() == "3", r.stderr


def test_build_reports_mpy_cross_failure_in_one_line(tmp_path: Path) -> None:
    fw = tmp_path / "src"
    fw.mkdir()
    (fw / "broken.py").write_text("def f(:\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "auxilio.build",
            "--out",
            str(tmp_path / "o"),
            "--firmware",
            str(fw),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: mpy-cross failed on broken.py")
    assert "Traceback" not in r.stderr


def test_make_firmware_entry_point_prints_total(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "auxilio.build", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name != MANIFEST]
    total = sum(p.stat().st_size for p in files)
    assert f"total {total} B" in r.stdout
