# SPDX-License-Identifier: GPL-3.0-or-later
"""The reader, the Gate and the state the plugin logs, without Mailman's
runners."""

import json
import os
import re

import pytest

from conftest import BOOT_ID, base_at, record, write_gate
from mailman_mmsidecar import gate as gatelib


def test_reader_keeps_the_decoded_record_while_the_file_is_unchanged(
        tmp_path):
    path = str(tmp_path / 'gate.json')
    reader = gatelib.Reader(path)
    rec, err = reader.read()
    assert rec is None and isinstance(err, FileNotFoundError)

    write_gate(str(tmp_path), record(epoch=3))
    first, err = reader.read()
    assert err is None and first.epoch == 3
    again, _ = reader.read()
    assert again is first                           # a stat, no decode

    held = os.fstat(reader._fp.fileno()).st_ino
    write_gate(str(tmp_path), record(epoch=4))      # same size, new inode
    # The replaced version stays open, so its inode cannot come back as
    # the next version's.
    assert os.fstat(reader._fp.fileno()).st_ino == held
    assert os.stat(path).st_ino != held
    second, _ = reader.read()
    assert second is not first and second.epoch == 4

    with open(path, 'w') as fp:                     # torn, in place
        fp.write('{"v": 1, "node"')
    rec, err = reader.read()
    assert rec is None and isinstance(err, gatelib.Malformed)

    os.unlink(path)
    rec, err = reader.read()
    assert rec is None and isinstance(err, FileNotFoundError)


def test_an_unreadable_record_closes_the_gate(tmp_path):
    path = tmp_path / 'gate.json'
    path.mkdir()                                    # cannot be read as a file
    gate = gatelib.Gate(str(path))
    assert gate.check('in', base_at(1e9)) == (False, gatelib.UNREADABLE)
    assert gate.state() == 'closed (unreadable)'


def test_a_check_never_raises(tmp_path):
    write_gate(str(tmp_path), record())

    def broken_clock():
        raise OSError('no clock')

    gate = gatelib.Gate(str(tmp_path / 'gate.json'), clock=broken_clock)
    assert gate.check('in', base_at(1e9)) == (False, gatelib.CHECK_FAILED)
    assert gate.state().startswith('closed (check failed')
    gate.observe()


def test_read_boot_id():
    assert re.fullmatch(r'[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}', BOOT_ID)
    with open('/proc/sys/kernel/random/boot_id') as fp:
        assert fp.read().strip() == BOOT_ID
    assert gatelib.read_boot_id('/nonexistent/boot_id') == ''


def test_boottime_counts_from_boot():
    with open('/proc/uptime') as fp:
        uptime = float(fp.read().split()[0])
    assert abs(gatelib.boottime() - uptime) < 1.0


@pytest.mark.parametrize('rec,now,boot,want', [
    (None, 0, BOOT_ID, 'closed (no gate)'),
    (record(), 0, BOOT_ID, 'open (record: live, node n1, epoch 3)'),
    (record(admit='new', since=100.0, reason='settling'), 0, BOOT_ID,
     'new entries only, born after 101.0 '
     '(record: settling, node n1, epoch 3)'),
    (record(admit='none', reason='draining'), 0, BOOT_ID,
     'closed (admit none; record: draining, node n1, epoch 3)'),
    (record(cutoff=None, reason='fenced'), 1e12, BOOT_ID,
     'closed (expired, no cutoff; record: fenced, node n1, epoch 3)'),
    (record(cutoff=200.5, reason='lost'), 1e12, BOOT_ID,
     'new entries only, born after 201.5 '
     '(expired; record: lost, node n1, epoch 3)'),
    (record(cutoff=200.5), 0, 'another-boot',
     'new entries only, born after 201.5 '
     '(other boot; record: live, node n1, epoch 3)'),
])
def test_describe(rec, now, boot, want):
    decoded = None if rec is None else gatelib.decode(json.dumps(rec).encode())
    error = FileNotFoundError() if rec is None else None
    # now 0 means "before the deadline": the record's deadline is ahead.
    assert gatelib.describe(decoded, error, now, boot) == want


def test_each_change_of_state_is_reported_once(tmp_path):
    state_dir = str(tmp_path)
    now = [1000.0]
    seen = []
    gate = gatelib.Gate(str(tmp_path / 'gate.json'), boot_id=BOOT_ID,
                        clock=lambda: now[0], on_change=seen.append)
    old, new = base_at(100), base_at(300)

    for _ in range(3):
        assert gate.check('in', old) == (False, gatelib.NO_GATE)
    live = record(cutoff=200.0)
    live['deadline'] = 1010.0
    write_gate(state_dir, live)
    for _ in range(3):
        assert gate.check('in', old) == (True, gatelib.OPEN)
        gate.observe()
    write_gate(state_dir, live)                     # rewritten, same state
    assert gate.check('in', old) == (True, gatelib.OPEN)
    now[0] = 1010.0                                 # the deadline passes
    assert gate.check('in', old) == (False, 'expired, before cutoff')
    assert gate.check('in', new) == (True, 'expired, after cutoff')
    write_gate(state_dir, b'{"v":1')
    assert gate.check('in', new) == (False, gatelib.MALFORMED)
    gate.observe()

    assert seen == [
        'closed (no gate)',
        'open (record: live, node n1, epoch 3)',
        'new entries only, born after 201.0 '
        '(expired; record: live, node n1, epoch 3)',
        'closed (malformed)',
    ]


def test_recheck_bounds_how_old_the_view_of_the_file_is(tmp_path):
    state_dir = str(tmp_path)
    now = [1000.0]
    gate = gatelib.Gate(str(tmp_path / 'gate.json'), boot_id=BOOT_ID,
                        clock=lambda: now[0], recheck=0.001)
    live = record()
    live['deadline'] = 1000.01
    write_gate(state_dir, live)
    old = base_at(100)
    assert gate.check('in', old) == (True, gatelib.OPEN)
    write_gate(state_dir, record(admit='none'))
    now[0] = 1000.0009                  # the view is 0.9 ms old: kept
    assert gate.check('in', old) == (True, gatelib.OPEN)
    now[0] = 1000.0011                  # over 1 ms old: stat'ed again
    assert gate.check('in', old) == (False, gatelib.ADMIT_NONE)

    write_gate(state_dir, live)
    gate.observe()                      # a pass always stats
    assert gate.check('in', old) == (True, gatelib.OPEN)
    now[0] = 1000.0105                  # the deadline, within the 1 ms view
    assert gate.check('in', old) == (False, 'expired, no cutoff')
    now[0] = 999.0                      # a clock that went back re-reads
    os.unlink(str(tmp_path / 'gate.json'))
    assert gate.check('in', old) == (False, gatelib.NO_GATE)
