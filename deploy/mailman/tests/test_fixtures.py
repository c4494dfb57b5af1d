# SPDX-License-Identifier: GPL-3.0-or-later
"""The shared fixtures (runner/gatefile/testdata/fixtures.json): the same
answers as the Go reader, case by case."""

import pytest

from conftest import fixture_bytes, load_fixtures
from mailman_mmsidecar import gate as gatelib

CASES = load_fixtures()


def test_there_are_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize('case', CASES, ids=[c['name'] for c in CASES])
def test_decode_and_admit(case):
    data = fixture_bytes(case)
    record, error = None, FileNotFoundError('no gate record')
    if data is not None:
        try:
            record, error = gatelib.decode(data), None
        except gatelib.Malformed as malformed:
            error = malformed
    got = gatelib.admitted(record, error, case['queue'], case['base'],
                           case['now_boottime'], case['boot_id'])
    assert got == (case['admitted'], case['reason']), error


@pytest.mark.parametrize('case', CASES, ids=[c['name'] for c in CASES])
def test_through_reader_and_gate(case, tmp_path):
    path = tmp_path / 'gate.json'
    data = fixture_bytes(case)
    if data is not None:
        path.write_bytes(data)
    gate = gatelib.Gate(str(path), boot_id=case['boot_id'],
                        clock=lambda: case['now_boottime'])
    assert gate.check(case['queue'], case['base']) == (
        case['admitted'], case['reason'])
