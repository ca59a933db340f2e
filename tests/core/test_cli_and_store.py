"""The core against the real ImageStore (built Matter/Zigbee images) and the `otagw` core commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.clock import ManualClock
from gateway.core.interface import ApplyAction, Available
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.core.conftest import T0, config, matter_dev, zigbee_dev
from tests.store_helpers import matter_image, zigbee_image


@pytest.fixture
async def real(tmp_path: Path):
    store = ImageStore(tmp_path)
    await store.open()
    m = (await store.add_bytes(matter_image(version=5, size=5000), file_name="m5.ota")).entry
    z = (await store.add_bytes(zigbee_image(version=0x200, size=3000), file_name="z.ota")).entry
    yield store, m, z
    await store.close()


async def test_full_transfer_from_real_store(real, tmp_path: Path) -> None:
    store, m, z = real
    clock = ManualClock(T0)
    core = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
    await core.start()
    try:
        res = await core.query(matter_dev(1, version=1), installed=[])
        assert isinstance(res, Available) and res.image.image_id == m.image_id
        reader = core.open_image(res.token)
        blob = b"".join(reader.read(off, 1024) for off in range(0, reader.size, 1024))
        assert len(blob) == m.size and blob == await _file_bytes(store, m)
        # many transfers of one image share one reader: no per-transfer copy or fd
        res2 = await core.query(matter_dev(2, version=1))
        assert isinstance(res2, Available)
        core.open_image(res2.token).read(0, 10)
        assert store.blobs.open_fd_count() == 1
        assert core.image_in_use(m.image_id) and not core.image_in_use(z.image_id)
        for off in range(0, m.size, 1024):
            await core.progress(res.token, off, min(1024, m.size - off))
        await core.download_complete(res.token)
        assert (await core.apply_request(res.token, 5)).action == ApplyAction.PROCEED
        await core.report_version(matter_dev(1).key, 5)
        zres = await core.query(zigbee_dev(1, version=0x100))
        assert isinstance(zres, Available) and zres.image.image_id == z.image_id
    finally:
        await core.stop()
    assert store.blobs.open_fd_count() == 0


async def _file_bytes(store: ImageStore, entry) -> bytes:
    with store.open_reader(entry) as r:
        return r.read(0, r.size)


async def test_cli_devices_plan_and_rollouts(real, tmp_path: Path) -> None:
    store, m, _ = real
    clock = ManualClock(T0)
    gw = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
    await gw.start()
    try:
        for i in range(3):
            await gw.observe(matter_dev(i, version=1))
        res = await gw.query(matter_dev(0, version=1))
        assert isinstance(res, Available)
        cfg_file = tmp_path / "otagw.yaml"
        cfg_file.write_text(f"data_dir: {tmp_path}\npolicy: {{auto_approve: true}}\n")

        def run(_main, args):  # the CLI runs its own event loop: call it from a thread, like a second process
            return asyncio.to_thread(CliRunner().invoke, _main, args)

        out = await run(main, ["-c", str(cfg_file), "devices", "list", "--json"])
        assert out.exit_code == 0, out.output
        recs = json.loads(out.output)
        assert [r["state"] for r in recs] == ["querying", "idle", "idle"]
        out = await run(main, ["-c", str(cfg_file), "devices", "list"])
        assert "querying" in out.output and "DEVICE" in out.output
        out = await run(main, ["-c", str(cfg_file), "devices", "show", "0000000000000000", "--json"])
        assert out.exit_code == 0, out.output
        shown = json.loads(out.output)
        assert shown["device"]["target_image_id"] == m.image_id
        assert [h["new_state"] for h in shown["history"]] == ["querying"]
        out = await run(main, ["-c", str(cfg_file), "devices", "show", "nope"])
        assert out.exit_code == 2 and "no device matching 'nope'" in out.output

        out = await run(main, ["-c", str(cfg_file), "plan", "--json"])
        assert out.exit_code == 0, out.output
        plan = {p["device_id"]: p for p in json.loads(out.output)}
        assert plan[matter_dev(1).key.device_id]["outcome"] == "update"
        assert plan[matter_dev(0).key.device_id]["outcome"] == "in_progress"
        assert "WHY" in (await run(main, ["-c", str(cfg_file), "plan"])).output

        out = await run(
            main,
            [
                "-c",
                str(cfg_file),
                "rollout",
                "create",
                m.image_id[:10],
                "--wave",
                "1",
                "--wave",
                "100%",
                "--soak",
                "30m",
                "--json",
            ],
        )
        assert out.exit_code == 0, out.output
        rid = json.loads(out.output)["rollout_id"]
        assert json.loads(out.output)["soak_s"] == 1800
        out = await run(main, ["-c", str(cfg_file), "rollout", "list"])
        assert rid in out.output and "active" in out.output
        out = await run(main, ["-c", str(cfg_file), "rollout", "pause", rid])
        assert out.exit_code == 0 and f"rollout {rid} is paused" in out.output
        out = await run(main, ["-c", str(cfg_file), "rollout", "show", rid])
        assert "paused by operator (CLI)" in out.output and "MEMBERS" in out.output
        # the running gateway sees the CLI's rollout and pause
        await clock.advance(1)
        await gw.sweep()
        assert gw.get_rollout(rid).status.value == "paused"  # type: ignore[union-attr]
        out = await run(main, ["-c", str(cfg_file), "rollout", "abort", rid, "--reason", "bad build"])
        assert out.exit_code == 0
        out = await run(main, ["-c", str(cfg_file), "rollout", "resume", rid])
        assert out.exit_code == 2 and "is aborted; cannot make it active" in out.output
        out = await run(main, ["-c", str(cfg_file), "rollout", "create", "ffffffffffff"])
        assert out.exit_code == 2 and "error:" in out.output
        out = await run(main, ["-c", str(cfg_file), "rollout", "create", m.image_id, "--wave", "0%"])
        assert out.exit_code == 2 and "more than 0%" in out.output
    finally:
        await gw.stop()
