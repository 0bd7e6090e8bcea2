"""`clusterd keygen`: ZeroMQ certificate files with safe modes, and loading them back."""

from __future__ import annotations

import stat

import pytest
import zmq
import zmq.auth

from clusterd.keygen import KEY_FILES, KeyFilesExist, load_keys, write_keys


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_keys_creates_private_dir_and_secret_files_0600(tmp_path):
    directory = tmp_path / "keys"
    paths = write_keys(directory)
    assert sorted(p.name for p in paths) == sorted(KEY_FILES)
    assert sorted(p.name for p in directory.iterdir()) == sorted(KEY_FILES)  # no staging left
    assert mode(directory) == 0o700
    for path in paths:
        if path.name.endswith("_secret"):
            assert mode(path) == 0o600, path
        else:
            assert mode(path) & 0o022 == 0, path


def test_written_files_are_zeromq_certificates(tmp_path):
    write_keys(tmp_path)
    for role in ("master", "worker"):
        public, no_secret = zmq.auth.load_certificate(tmp_path / f"{role}.key")
        same_public, secret = zmq.auth.load_certificate(tmp_path / f"{role}.key_secret")
        assert no_secret is None
        assert public == same_public
        assert zmq.curve_public(secret) == public
    assert len(zmq.auth.load_certificates(tmp_path)) == 2  # master.key and worker.key differ


def test_load_keys_round_trips(tmp_path):
    write_keys(tmp_path)
    keys = load_keys(tmp_path)
    master_public, master_secret = zmq.auth.load_certificate(tmp_path / "master.key_secret")
    worker_public, worker_secret = zmq.auth.load_certificate(tmp_path / "worker.key_secret")
    assert (keys.master_public, keys.master_secret) == (master_public, master_secret)
    assert (keys.worker_public, keys.worker_secret) == (worker_public, worker_secret)
    assert master_secret not in repr(keys).encode()


def test_keys_work_for_a_curve_connection(tmp_path):
    write_keys(tmp_path)
    keys = load_keys(tmp_path)
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.PAIR)
        server.curve_server = True
        server.curve_secretkey = keys.master_secret
        server.curve_publickey = keys.master_public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.PAIR)
        client.curve_serverkey = keys.master_public
        client.curve_publickey = keys.worker_public
        client.curve_secretkey = keys.worker_secret
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert server.poll(5000)
        assert server.recv() == b"hello"
    finally:
        ctx.destroy(linger=0)


def test_write_keys_refuses_to_overwrite(tmp_path):
    write_keys(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in KEY_FILES}
    with pytest.raises(KeyFilesExist) as caught:
        write_keys(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "master.key" in message and "force" in message
    assert {name: (tmp_path / name).read_bytes() for name in KEY_FILES} == before


def test_write_keys_refuses_when_only_one_file_exists(tmp_path):
    (tmp_path / "worker.key_secret").write_text("precious")
    with pytest.raises(KeyFilesExist, match="worker.key_secret"):
        write_keys(tmp_path)
    assert (tmp_path / "worker.key_secret").read_text() == "precious"
    assert not (tmp_path / "master.key").exists()


def test_force_replaces_the_keys(tmp_path):
    write_keys(tmp_path)
    old = load_keys(tmp_path)
    write_keys(tmp_path, force=True)
    new = load_keys(tmp_path)
    assert new.master_public != old.master_public
    assert new.worker_public != old.worker_public
    assert mode(tmp_path / "master.key_secret") == 0o600


def test_agent_host_with_worker_secret_and_master_public_only(tmp_path):
    write_keys(tmp_path)
    full = load_keys(tmp_path)
    (tmp_path / "master.key_secret").unlink()
    (tmp_path / "worker.key").unlink()
    keys = load_keys(tmp_path)
    assert keys.master_secret is None
    assert keys.master_public == full.master_public
    assert keys.worker_public == full.worker_public  # read from the secret file
    assert keys.worker_secret == full.worker_secret


@pytest.mark.parametrize("missing", ["master.key", "worker.key"])
def test_load_keys_names_a_missing_public_key(tmp_path, missing):
    write_keys(tmp_path)
    (tmp_path / missing).unlink()
    (tmp_path / (missing + "_secret")).unlink()
    with pytest.raises(ValueError, match=missing):
        load_keys(tmp_path)


def test_load_keys_on_an_empty_directory_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="master.key"):
        load_keys(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("worker.key", "not a certificate\n"),
        ("worker.key", 'curve\n    public-key = "tooshort"\n'),
        ("master.key_secret", 'curve\n    public-key = "{public}"\n'),  # no secret-key
        ("master.key_secret", 'curve\n    public-key = "{public}"\n    secret-key = "{other}"\n'),
    ],
)
def test_load_keys_names_a_malformed_file(tmp_path, name, content):
    write_keys(tmp_path)
    public, _ = zmq.auth.load_certificate(tmp_path / "master.key")
    _, other = zmq.curve_keypair()
    (tmp_path / name).write_text(content.format(public=public.decode(), other=other.decode()))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_keys(tmp_path)


def test_load_keys_rejects_public_and_secret_files_that_disagree(tmp_path):
    write_keys(tmp_path / "a")
    write_keys(tmp_path / "b")
    (tmp_path / "b" / "worker.key").replace(tmp_path / "a" / "worker.key")
    with pytest.raises(ValueError, match="worker.key"):
        load_keys(tmp_path / "a")
