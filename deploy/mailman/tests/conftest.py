# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared helpers of the plugin's tests (python3 -m pytest deploy/mailman).

The tests need Debian's python3 with mailman3 and python3-pytest; they
write only below pytest's temporary directories.
"""

import base64
import fcntl
import hashlib
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent
REPO = PLUGIN_DIR.parent.parent
FIXTURES = REPO / 'runner' / 'gatefile' / 'testdata' / 'fixtures.json'

sys.path.insert(0, str(PLUGIN_DIR))

from mailman_mmsidecar import gate as gatelib  # noqa: E402

BOOT_ID = gatelib.read_boot_id()


def load_fixtures():
    """The shared cases of runner/gatefile/testdata/fixtures.json."""
    with open(FIXTURES, encoding='utf-8') as fp:
        return json.load(fp)['cases']


def fixture_bytes(case):
    """The record file's bytes of a case, or None for no file."""
    if case.get('raw_b64'):
        data = base64.b64decode(case['raw_b64'])
    elif case['raw'] is not None:
        data = case['raw'].encode('utf-8')
    else:
        return None
    pad_to = case.get('pad_to', 0)
    if pad_to:
        assert pad_to >= len(data)
        data += b' ' * (pad_to - len(data))
    return data


def record(admit='all', deadline_in=60.0, since=None, cutoff=None,
           slew=1.0, reason='live', deny=(), boot_id=None, epoch=3):
    """A record dict as the sidecar writes it, its deadline deadline_in
    seconds from now on CLOCK_BOOTTIME."""
    now = time.time()
    return {
        'v': 1, 'node': 'n1', 'epoch': epoch,
        'boot_id': BOOT_ID if boot_id is None else boot_id,
        'deadline': gatelib.boottime() + deadline_in,
        'admit': admit, 'since': now if since is None else since,
        'cutoff': cutoff, 'slew': slew, 'reason': reason,
        'deny': list(deny), 'written': now,
    }


def write_gate(state_dir, rec):
    """Replace <state_dir>/gate.json atomically, as the sidecar does (rec:
    a dict, or bytes written as they are)."""
    os.makedirs(state_dir, exist_ok=True)
    data = rec if isinstance(rec, bytes) else json.dumps(rec).encode()
    tmp = os.path.join(state_dir, '.gate.json.tmp')
    with open(tmp, 'wb') as fp:
        fp.write(data)
    os.rename(tmp, os.path.join(state_dir, 'gate.json'))


def base_at(when, salt='x'):
    """A Mailman entry base born at wall-clock time `when`."""
    return '{!r}+{}'.format(float(when), hashlib.sha1(
        '{}{}'.format(when, salt).encode()).hexdigest())


def is_held(path):
    """Whether another open file holds path's flock, as the sidecar
    checks it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
