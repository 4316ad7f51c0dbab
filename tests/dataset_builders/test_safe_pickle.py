"""The restricted unpickler: plain data loads, anything naming a global is refused unexecuted."""

from __future__ import annotations

import collections
import os
import pickle

import pytest

from dataset_builders.safe_pickle import UnsafePickleError, load_plain, loads_plain

PLAIN = {
    "refs": [
        {"ref_id": 1, "ann_id": [3, -1], "split": "testA", "score": 0.5, "ok": True, "x": None},
        ("tuple", 2**70, -1.25),
    ],
    "unicode": "café ☃",
}


class _SystemCall:
    """A real exploit: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_round_trip_every_protocol(protocol: int) -> None:
    assert loads_plain(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


@pytest.mark.parametrize("protocol", range(3, pickle.HIGHEST_PROTOCOL + 1))
def test_bytes_load_from_protocol_3(protocol: int) -> None:
    assert loads_plain(pickle.dumps([b"\x00raw"], protocol=protocol)) == [b"\x00raw"]


def test_python3_bytes_below_protocol_3_are_refused() -> None:
    # Python 3 spells bytes as a call to _codecs.encode before protocol 3; no global is trusted.
    with pytest.raises(UnsafePickleError, match=r"_codecs\.encode"):
        loads_plain(pickle.dumps(b"raw", protocol=2))


def test_python2_str_is_read_as_utf8() -> None:
    # What Python 2's cPickle wrote for ["caf\xc3\xa9"]: PROTO 2, EMPTY_LIST, SHORT_BINSTRING, APPEND.
    py2_pickle = b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a."
    assert loads_plain(py2_pickle) == ["café"]


def test_malicious_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"refs": [_SystemCall(f"touch {marker}")]}, protocol=2)

    with pytest.raises(UnsafePickleError, match=r"refused to load global (posix|os|nt)\.system"):
        loads_plain(payload)
    assert not marker.exists()

    # The payload is genuinely dangerous: the standard unpickler does run it.
    pickle.loads(payload)
    assert marker.exists()


def test_file_error_names_the_file_and_the_global(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_SystemCall(f"touch {marker}")]))
    with pytest.raises(UnsafePickleError) as info:
        load_plain(path)
    assert str(path) in str(info.value)
    assert "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [collections.OrderedDict(a=1), collections.Counter("ab"), {1, 2}],
    ids=["OrderedDict", "Counter", "set-protocol-2"],
)
def test_any_class_instance_is_refused(value) -> None:
    with pytest.raises(UnsafePickleError):
        loads_plain(pickle.dumps(value, protocol=2))
