"""The watch service trusts no heuristic alone (issue 15): stalled preallocated copies, early and stale
markers, poison files, re-exports with history, one output name per file, the device in health."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import cli, tiny_scan
from vbmd_rt.runtime import pipeline, service
from vbmd_rt.runtime.inference.factory import create
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.model import load_model


@pytest.fixture(scope="module")
def source(phantoms, tmp_path_factory):
    d = tmp_path_factory.mktemp("wsrc")
    tiny_scan(phantoms / "PHANTOM_0000.AIM", d / "TINY.AIM")
    tiny_scan(phantoms / "PHANTOM_0001.AIM", d / "OTHER.AIM", slices=30)
    return d


def _watcher(in_dir, out, **kw):
    model = load_model("classical")
    be = create("auto", model)
    kw.setdefault("log", lambda s: None)
    return service.Watcher(in_dir, out, lambda p: pipeline.run_scan(p, out, model, be, pipeline.RunOptions()), **kw)


def _names(cands):
    return [p.name for p, _ in cands]


def test_a_stalled_preallocated_copy_is_not_taken_until_its_data_is_there(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    raw = (source / "TINY.AIM").read_bytes()
    hdr = aim.read_header(source / "TINY.AIM")
    assert raw[hdr.byte_offset + hdr.data_length - 4096 : hdr.byte_offset + hdr.data_length].count(0) < 4096
    cut = hdr.byte_offset + hdr.data_length // 2
    with open(inp / "P.AIM", "wb") as f:  # preallocated: full size at once, then the copy stalls
        f.truncate(len(raw))
        f.write(raw[:cut])
    w = _watcher(inp, out, stable_for=0.2)
    assert w.candidates() == []
    time.sleep(0.5)  # stable in size and mtime, header complete, but the data ends in zeros
    assert w.candidates() == []
    with open(inp / "P.AIM", "r+b") as f:  # the copy goes on
        f.seek(cut)
        f.write(raw[cut:])
    assert w.candidates() == []  # changed: the clock starts again
    time.sleep(0.3)
    [(p, key)] = w.candidates()
    assert w.handle(p, key)
    w.journal.close()
    w._lock.close()
    model = load_model("classical")
    truth = pipeline.run_scan(source / "TINY.AIM", tmp_path / "direct", model, create("auto", model))
    assert json.loads((out / "P.json").read_text())["d100_mg_ha_cm3"] == truth["d100_mg_ha_cm3"]


def test_a_stable_file_that_never_parses_still_fails_after_a_grace(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "CUT.AIM").write_bytes((source / "TINY.AIM").read_bytes()[:5000])
    w = _watcher(inp, out, stable_for=0.1, poll=0.05)
    t0 = time.monotonic()
    counts = w.run(once=True)
    assert counts.failed == 1 and time.monotonic() - t0 >= service.PARSE_GRACE * 0.1
    assert "truncated" in json.loads((out / "failed" / "CUT.error.json").read_text())["reason"]


def test_a_marker_written_before_the_copy_or_left_from_an_older_export_is_ignored(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "M.AIM.done").write_bytes(b"")  # early marker
    os.utime(inp / "M.AIM.done", ns=(10**18, 10**18 - 10**9))
    (inp / "M.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    os.utime(inp / "M.AIM", ns=(10**18, 10**18))
    w = _watcher(inp, out, stable_for=0)  # markers only
    assert w.candidates() == []
    (inp / "M.AIM.done").touch()  # written after the copy: now it counts
    os.utime(inp / "M.AIM.done", ns=(10**18 + 10**9, 10**18 + 10**9))
    [(p, key)] = w.candidates()
    assert w.handle(p, key)
    (inp / "M.AIM").write_bytes((source / "OTHER.AIM").read_bytes())  # re-export; the old marker stays
    os.utime(inp / "M.AIM", ns=(10**18 + 2 * 10**9, 10**18 + 2 * 10**9))
    assert w.candidates() == []  # the stale marker does not make the new file arrived
    os.utime(inp / "M.AIM.done", ns=(10**18 + 3 * 10**9, 10**18 + 3 * 10**9))
    [(p, key)] = w.candidates()
    assert w.handle(p, key)
    assert w.counts.failed == 0 and w.counts.done == 2
    res = json.loads((out / "M.json").read_text())
    assert res["slices"] != json.loads((out / res["history"][0]["file"]).read_text())["slices"]
    w.journal.close()
    w._lock.close()


def test_a_reexport_is_redone_and_the_old_result_kept(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "R.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    assert _watcher(inp, out, stable_for=0.1, poll=0.05).run(once=True).done == 1
    first = json.loads((out / "R.json").read_text())
    (inp / "R.AIM").write_bytes((source / "OTHER.AIM").read_bytes())
    assert _watcher(inp, out, stable_for=0.1, poll=0.05).run(once=True).done == 1
    res = json.loads((out / "R.json").read_text())
    assert res["d100_mg_ha_cm3"] != first["d100_mg_ha_cm3"] and len(res["history"]) == 1
    assert res["history"][0]["d100_mg_ha_cm3"] == first["d100_mg_ha_cm3"]
    assert (out / res["history"][0]["file"]).is_file()


def test_two_files_with_one_output_name_never_share_outputs(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "Y.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    assert _watcher(inp, out, stable_for=0.1, poll=0.05).run(once=True).done == 1
    (inp / "y.aim").write_bytes((source / "OTHER.AIM").read_bytes())
    counts = _watcher(inp, out, stable_for=0.1, poll=0.05).run(once=True)
    assert counts.done == 0 and counts.failed == 1
    err = json.loads((out / "failed" / "y.error.json").read_text())
    assert "same output name as Y.AIM" in err["reason"]
    assert (
        json.loads((out / "Y.json").read_text())["scan"]["file"] == "Y.AIM" and not (out / ".vbmd-rt/history").exists()
    )


def test_foreign_files_in_out_are_not_replaced_by_the_service(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    (out / "F.png").write_bytes(b"someone else's")
    (inp / "F.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    counts = _watcher(inp, out, stable_for=0.1, poll=0.05).run(once=True)
    assert counts.failed == 1 and (out / "F.png").read_bytes() == b"someone else's"
    assert "not written by vbmd-rt" in json.loads((out / "failed" / "F.error.json").read_text())["reason"]


POISON = textwrap.dedent(
    """
    import os, sys
    from vbmd_rt.runtime import service

    def process(path):
        if path.name == "POISON.AIM":
            os._exit(137)  # as the OOM killer would
        return {"d100_mg_ha_cm3": 1.0}

    w = service.Watcher(sys.argv[1], sys.argv[2], process, stable_for=0.1, poll=0.05)
    w.run(once=True)
    print("counts", w.counts.done, w.counts.failed)
    """
)


def test_a_poison_file_that_kills_the_service_twice_goes_to_failed_and_the_queue_goes_on(source, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "POISON.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    os.utime(inp / "POISON.AIM", ns=(10**18, 10**18))  # the oldest: first in the queue
    (inp / "GOOD.AIM").write_bytes((source / "TINY.AIM").read_bytes())
    codes = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", POISON, inp, out], capture_output=True, text=True)
        codes.append(r.returncode)
    assert codes == [137, 137, 0], r.stderr
    assert "counts 1 1" in r.stdout
    err = json.loads((out / "failed" / "POISON.error.json").read_text())
    assert err["kind"] == "crash" and "died 2 times" in err["reason"]
    r = subprocess.run([sys.executable, "-c", POISON, inp, out], capture_output=True, text=True)
    assert r.returncode == 0 and "counts 0 0" in r.stdout  # never taken again


def test_health_says_which_device(tmp_path):
    (tmp_path / "in").mkdir()
    info = {"name": "onnxruntime-cpu", "precision": "fp32", "device": service.device_of("onnxruntime-cpu")}
    w = service.Watcher(tmp_path / "in", tmp_path / "out", lambda p: {}, backend_info=info, log=lambda s: None)
    w.write_health("idle")
    ok, msg = service.health(tmp_path / "out")
    assert ok and "on cpu, onnxruntime-cpu (fp32)" in msg, msg
    assert service.device_of("tensorrt") == "cuda" and service.device_of("classical") == "cpu"
    w.journal.close()
    w._lock.close()


def test_watch_with_device_cuda_and_no_gpu_exits_2(tmp_path):
    from vbmd_rt.runtime.inference.factory import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a GPU")
    (tmp_path / "in").mkdir()
    r = cli("watch", tmp_path / "in", tmp_path / "out", "--device", "cuda", "--once")
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
