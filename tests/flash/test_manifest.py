"""firmware/manifest.py freezes every firmware module (and the codec), and nothing that is not one."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FIRMWARE

SOURCE_ONLY = {"main.py", "manifest.py"}  # run from the filesystem / read by makemanifest


def test_manifest_lists_every_firmware_module() -> None:
    modules: list[tuple[str, str]] = []
    packages: list[str] = []
    includes: list[str] = []
    env = {
        "include": includes.append,
        "module": lambda path, base_path=".", opt=None: modules.append((base_path, path)),
        "package": lambda path, files=None, base_path=".", opt=None: packages.append(path),
    }
    exec((FIRMWARE / "manifest.py").read_text(), env)  # what makemanifest.py does with it
    top = {p.name for p in FIRMWARE.glob("*.py")} - SOURCE_ONLY
    assert {path for base, path in modules if base == "."} == top
    assert ("../protocol", "auxcodec.py") in modules
    assert (FIRMWARE / "../protocol/auxcodec.py").resolve().is_file()
    assert packages == ["hal"] and all(
        p.suffix == ".py" for p in (FIRMWARE / "hal").iterdir() if p.is_file()
    )
    assert includes == ["$(PORT_DIR)/boards/manifest.py"]
    assert not (Path(FIRMWARE) / "boot.py").exists()  # the port's own boot.py stays
