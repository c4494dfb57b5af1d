# SPDX-License-Identifier: GPL-3.0-or-later
"""The gated switchboard against Mailman's real Switchboard on a temporary
queue directory: entries are handed out one at a time, each right before
its dequeue, only while the gate admits it."""

import glob
import json
import os
import time

import pytest

from conftest import BOOT_ID, is_held, record, write_gate
from mailman.core.switchboard import Switchboard
from mailman.email.message import Message
from mailman_mmsidecar import plugin


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A queue directory, a state directory, and a gated switchboard of
    queue 'in' on them (slice 0 of 1, as the master starts it).  Every
    check stats the record (the plugin allows a view up to 2 ms old,
    test_gate checks that): the tests replace it between checks."""
    monkeypatch.setattr(plugin, 'RECHECK', 0.0)
    queue_dir = tmp_path / 'queue'
    state_dir = queue_dir / '.mmsidecar'
    cls = plugin.gated_switchboard(Switchboard, str(state_dir))
    sb = cls('in', str(queue_dir / 'in'), 0, 1, True)
    return sb, str(state_dir)


def enqueue(sb, n, born=None):
    """n 4 KiB entries; returns their bases, oldest first."""
    bases = []
    for i in range(n):
        msg = Message()
        msg['Message-ID'] = '<{}-{}@example.com>'.format(time.time(), i)
        msg.set_payload('x' * 4096)
        bases.append(sb.enqueue(msg, listid='test.example.com'))
    return bases


def names(sb, ext):
    return sorted(os.path.basename(p)[:-len(ext)] for p in
                  glob.glob(os.path.join(sb.queue_directory, '*' + ext)))


def run_pass(sb, on_each=None):
    """What Runner._one_iteration does with the files: dequeue, process,
    finish each; return (processed, len(files))."""
    files = sb.files
    done = []
    for base in files:
        msg, data = sb.dequeue(base)
        if on_each is not None:
            on_each(base)
        sb.finish(base)
        done.append(base)
    return done, len(files)


def test_missing_record_dequeues_nothing(node):
    sb, _ = node
    bases = enqueue(sb, 3)
    assert run_pass(sb) == ([], 0)                  # len 0: the runner sleeps
    assert names(sb, '.pck') == sorted(bases)
    assert names(sb, '.bak') == []


def test_open_gate_dequeues_everything_in_fifo_order(node):
    sb, state_dir = node
    bases = enqueue(sb, 5)
    write_gate(state_dir, record())
    assert run_pass(sb) == (bases, 5)
    assert names(sb, '.pck') == []


def test_files_is_lazy_and_len_counts_what_was_handed_out(node):
    sb, state_dir = node
    bases = enqueue(sb, 3)
    write_gate(state_dir, record())
    files = sb.files
    assert len(files) == 0
    it = iter(files)
    assert next(it) == bases[0] and len(files) == 1
    write_gate(state_dir, record(admit='none', reason='draining'))
    assert list(it) == [] and len(files) == 1


def test_an_entry_in_hand_finishes_while_the_gate_closes(node):
    sb, state_dir = node
    bases = enqueue(sb, 4)
    write_gate(state_dir, record())
    seen = []

    def close_gate_while_processing(base):
        # The first entry is in hand (a .bak) when the gate closes.
        assert names(sb, '.bak') == [base]
        seen.append(base)
        write_gate(state_dir, record(cutoff=None, deadline_in=-1,
                                     reason='lost'))

    done, count = run_pass(sb, close_gate_while_processing)
    assert done == [bases[0]] and count == 1 and seen == [bases[0]]
    assert names(sb, '.bak') == []                  # finished
    assert names(sb, '.pck') == sorted(bases[1:])   # the rest wait
    assert run_pass(sb) == ([], 0)


def instant_passed():
    """A wall-clock instant every later enqueue is born after."""
    now = time.time()
    while time.time() <= now:
        pass
    return now


@pytest.mark.parametrize('closed', [
    dict(admit='new', slew=0, reason='settling'),               # since
    dict(deadline_in=-0.001, slew=0, reason='lost'),            # expired
    dict(boot_id='00000000-0000-0000-0000-000000000000', slew=0),  # boot
])
def test_a_closed_gate_admits_entries_born_after_its_threshold(node, closed):
    sb, state_dir = node
    old = enqueue(sb, 2)
    threshold = instant_passed()
    new = enqueue(sb, 2)
    write_gate(state_dir, record(since=threshold, cutoff=threshold, **closed))
    assert run_pass(sb) == (new, 2)
    assert names(sb, '.pck') == sorted(old)


def test_deny_list(node):
    sb, state_dir = node
    bases = enqueue(sb, 3)
    write_gate(state_dir, record(deny=['in/' + bases[1], 'out/' + bases[2]]))
    assert run_pass(sb) == ([bases[0], bases[2]], 2)
    assert names(sb, '.pck') == [bases[1]]


@pytest.mark.parametrize('raw', [
    b'', b'{"v":1,"node":"n1"', b'not json', b'{"v":2}', b'[]',
    b'\xef\xbb\xbf{}',
])
def test_malformed_record_dequeues_nothing_and_preserves_nothing(node, raw):
    sb, state_dir = node
    bases = enqueue(sb, 2)
    write_gate(state_dir, raw)
    assert run_pass(sb) == ([], 0)
    assert names(sb, '.pck') == sorted(bases)
    assert names(sb, '.psv') == []


def test_unreadable_record_dequeues_nothing(node):
    sb, state_dir = node
    enqueue(sb, 1)
    os.makedirs(os.path.join(state_dir, 'gate.json'))
    assert run_pass(sb) == ([], 0)


def test_a_name_without_a_birth_is_never_handed_out(node):
    sb, state_dir = node
    write_gate(state_dir, record())
    # Mailman itself would crash on a .pck whose time is not a float; a
    # name it parses but whose time is not Mailman's shape stays put.
    odd = '1e9+' + 'a' * 40
    open(os.path.join(sb.queue_directory, odd + '.pck'), 'wb').close()
    assert run_pass(sb) == ([], 0)


def test_a_gate_closed_to_every_entry_costs_no_listing(node):
    sb, state_dir = node
    # A name Mailman's own listing cannot parse: get_files() raises.
    open(os.path.join(sb.queue_directory, 'x+y.pck'), 'wb').close()
    assert run_pass(sb) == ([], 0)                  # no gate: not listed
    write_gate(state_dir, record(admit='none'))
    assert run_pass(sb) == ([], 0)
    write_gate(state_dir, record(deadline_in=-1, cutoff=None))
    assert run_pass(sb) == ([], 0)
    write_gate(state_dir, record())
    with pytest.raises(ValueError):                 # listed: Mailman's own
        run_pass(sb)                                # behaviour


def test_no_state_dir_keeps_the_gate_closed(tmp_path):
    cls = plugin.gated_switchboard(Switchboard, None,
                                   problem='configuration unreadable')
    sb = cls('in', str(tmp_path / 'in'), 0, 1, True)
    enqueue(sb, 1)
    assert run_pass(sb) == ([], 0)


def test_recovery_still_runs_and_recovered_entries_wait_for_the_gate(
        tmp_path):
    queue = tmp_path / 'queue' / 'in'
    plain = Switchboard('in', str(queue))
    base = enqueue(plain, 1)[0]
    plain.dequeue(base)                              # a runner died holding it
    cls = plugin.gated_switchboard(Switchboard,
                                   str(tmp_path / 'queue' / '.mmsidecar'))
    sb = cls('in', str(queue), 0, 1, True)          # Mailman's recovery
    assert names(sb, '.pck') == [base]
    assert run_pass(sb) == ([], 0)


def test_the_switchboard_keeps_a_locked_runner_record(node):
    sb, state_dir = node
    paths = glob.glob(os.path.join(state_dir, 'runners', '*.json'))
    assert len(paths) == 1
    assert is_held(paths[0])
    with open(paths[0]) as fp:
        body = json.load(fp)
    assert body['v'] == 1 and body['pid'] == os.getpid()
    assert body['runner'] == 'in:0:1' and body['queue'] == 'in'
    assert body['boot_id'] == BOOT_ID and body['plugin'] == '1'
    assert abs(body['started'] - time.time()) < 60
    assert not [p for p in os.listdir(os.path.join(state_dir, 'runners'))
                if p.startswith('.')]
    sb._mmsidecar.record.close()
    assert not is_held(paths[0])
