"""Atomic writes, the output folder's checks and the stop request (harness.store)."""

import os
import signal

import pytest

from rgbench.bench import store


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.txt"
    store.write_text(path, "old")

    def broken(temporary):
        temporary.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_prepare_out_refuses_a_file_and_a_non_empty_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(store.OutputError, match="is a file"):
        store.prepare_out(tmp_path / "f")
    with pytest.raises(store.OutputError, match="--resume .* --force"):
        store.prepare_out(tmp_path)
    assert store.prepare_out(tmp_path, resume=True) == tmp_path
    assert store.prepare_out(tmp_path, force=True) == tmp_path
    assert (tmp_path / "f").read_text() == "x"  # --force replaces later, deletes nothing now
    with pytest.raises(store.OutputError, match="exclude"):
        store.prepare_out(tmp_path, resume=True, force=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_out_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(store.OutputError, match="permission denied"):
            store.prepare_out(folder / "run")
    finally:
        folder.chmod(0o755)


def test_prepare_out_refuses_a_full_disk(tmp_path):
    with pytest.raises(store.OutputError, match="MiB free"):
        store.prepare_out(tmp_path / "run", min_free_bytes=2**62)


def test_a_signal_is_a_stop_request_at_the_next_check():
    with store.stop_on_signals():
        store.check_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(store.Interrupted) as caught:
            store.check_stop()
        assert caught.value.exit_code == 143
    store.check_stop()  # the request ends with the block
