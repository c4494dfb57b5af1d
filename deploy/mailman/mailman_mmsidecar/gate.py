# mailman_mmsidecar: Mailman 3 runners honour the mmsidecar runner gate.
# Copyright (C) 2026 The mmsidecar authors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License as published by the
# Free Software Foundation, either version 3 of the License, or (at your
# option) any later version.
#
# This program is distributed in the hope that it will be useful, but
# WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the GNU General
# Public License for more details.
#
# You should have received a copy of the GNU General Public License along
# with this program.  If not, see <https://www.gnu.org/licenses/>.
#
# SPDX-License-Identifier: GPL-3.0-or-later

"""The gate record and its rule (docs/gate.md), without Mailman.

`decode` parses a record strictly, `admitted` is the rule, `Reader` keeps
the decoded record for as long as the file's stat says it is unchanged,
and `Gate` puts them together with this process's boot id and
CLOCK_BOOTTIME.  The Go reader (runner/gatefile) and this one are tested
against the same fixtures.
"""

import functools
import json
import math
import os
import re
import time

VERSION = 1
MAX_SIZE = 64 * 1024
MAX_DEPTH = 32
BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id'
MODES = ('all', 'new', 'none')

# The reasons `admitted` returns, exactly as docs/gate.md lists them.
NO_GATE = 'no gate'
UNREADABLE = 'unreadable'
MALFORMED = 'malformed'
DENIED = 'denied'
BAD_NAME = 'bad name'
OPEN = 'open'
AFTER_SINCE = 'after since'
BEFORE_SINCE = 'before since'
ADMIT_NONE = 'admit none'
# An error inside the check itself (a bug, or a clock that cannot be read).
CHECK_FAILED = 'check failed'

_BASE = re.compile(r'([0-9]+(?:\.[0-9]+)?)\+[0-9a-f]{40}')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r'[^\[\]{}]')
_INT64_MAX = 2 ** 63 - 1


class Malformed(ValueError):
    """The record does not decode: treat it as missing (closed)."""


class Record:
    """One decoded gate record; numbers are floats (epoch an int)."""

    __slots__ = ('node', 'epoch', 'boot_id', 'deadline', 'admit', 'since',
                 'cutoff', 'slew', 'reason', 'deny', 'written')

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def __repr__(self):
        return 'Record({})'.format(', '.join(
            '{}={!r}'.format(n, getattr(self, n)) for n in self.__slots__))


def _depth(text):
    """How deeply arrays and objects nest, counting brackets outside
    strings."""
    depth = deepest = 0
    for c in _NOT_BRACKET.sub('', _STRING.sub('', text)):
        if c in '[{':
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _reject_constant(name):
    raise Malformed('{} is not JSON'.format(name))


def _parse_int(digits):
    # Python refuses to turn more than 4,300 digits into an int; Go reads
    # such a number as a float.  Long ones are floats here too (infinite,
    # so refused where a field needs a number; ignored elsewhere).
    return int(digits) if len(digits) <= 1000 else float(digits)


def _is_integer(x):
    return type(x) is int


def _is_number(x):
    return type(x) in (int, float)


def decode(data):
    """Decode a record from bytes; raise Malformed when docs/gate.md says
    it is malformed."""
    if len(data) > MAX_SIZE:
        raise Malformed('{} bytes, more than {}'.format(len(data), MAX_SIZE))
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as error:
        raise Malformed('not UTF-8: {}'.format(error)) from None
    if _depth(text) > MAX_DEPTH:
        raise Malformed('nested more than {} deep'.format(MAX_DEPTH))
    try:
        obj = json.loads(text, parse_constant=_reject_constant,
                         parse_int=_parse_int)
    except Malformed:
        raise
    except (ValueError, RecursionError) as error:
        raise Malformed('json: {}'.format(error)) from None
    if not isinstance(obj, dict):
        raise Malformed('not a JSON object')

    def field(name, check, want):
        if name not in obj:
            raise Malformed('field {} missing'.format(name))
        value = obj[name]
        if not check(value):
            raise Malformed('field {}: want {}, have {!r:.40}'.format(
                name, want, value))
        return value

    def number(name):
        value = field(name, _is_number, 'a number')
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise Malformed('field {}: not finite'.format(name))
        return value

    version = field('v', _is_integer, 'an integer')
    if version != VERSION:
        raise Malformed('version {}, want {}'.format(version, VERSION))
    cutoff = field('cutoff', lambda x: x is None or _is_number(x),
                   'null or a number')
    record = Record(
        node=field('node', lambda x: isinstance(x, str), 'a string'),
        epoch=field('epoch', lambda x: _is_integer(x) and 0 <= x <= _INT64_MAX,
                    'an integer from 0 to 2^63-1'),
        boot_id=field('boot_id', lambda x: isinstance(x, str) and x != '',
                      'a non-empty string'),
        deadline=number('deadline'),
        admit=field('admit', lambda x: x in MODES, 'all, new or none'),
        since=number('since'),
        cutoff=None if cutoff is None else number('cutoff'),
        slew=number('slew'),
        reason=field('reason', lambda x: isinstance(x, str), 'a string'),
        deny=frozenset(field(
            'deny', lambda x: isinstance(x, list) and all(
                isinstance(s, str) for s in x), 'an array of strings')),
        written=number('written'),
    )
    if record.slew < 0:
        raise Malformed('field slew: negative')
    return record


@functools.lru_cache(maxsize=4096)
def birth(base):
    """The wall-clock time Mailman enqueued the entry `base`, or None when
    `base` is not Mailman's `<digits>[.<digits>]+<40 hex>` shape.  Cached:
    a runner checks the same waiting entries pass after pass."""
    m = _BASE.fullmatch(base)
    if m is None or len(m.group(1)) > 32:
        return None
    return float(m.group(1))


def admitted(record, error, queue, base, now_boottime, boot_id):
    """The gate's rule: (admitted, reason) for the entry `base` of `queue`.

    `record` and `error` are what `Reader.read` returned: no record
    (FileNotFoundError, or nothing at all), an unreadable one (another
    OSError), or a malformed one (Malformed) close the gate for every
    entry.
    """
    if record is None:
        if error is None or isinstance(error, FileNotFoundError):
            return False, NO_GATE
        if isinstance(error, Malformed):
            return False, MALFORMED
        return False, UNREADABLE
    if queue + '/' + base in record.deny:
        return False, DENIED
    born = birth(base)
    if born is None:
        return False, BAD_NAME
    if record.boot_id == boot_id and now_boottime < record.deadline:
        if record.admit == 'all':
            return True, OPEN
        if record.admit == 'new':
            if born > record.since + record.slew:
                return True, AFTER_SINCE
            return False, BEFORE_SINCE
        return False, ADMIT_NONE
    why = 'other boot' if record.boot_id != boot_id else 'expired'
    if record.cutoff is None:
        return False, why + ', no cutoff'
    if born > record.cutoff + record.slew:
        return True, why + ', after cutoff'
    return False, why + ', before cutoff'


def closed_to_all(record, error, now_boottime, boot_id):
    """Whether the gate admits no entry at all now, whatever its name: no
    usable record, admit none before the deadline, or no cutoff after
    it."""
    if record is None:
        return True
    if record.boot_id == boot_id and now_boottime < record.deadline:
        return record.admit == 'none'
    return record.cutoff is None


def describe(record, error, now_boottime, boot_id):
    """The gate's state for every entry at once, for the log: open,
    closed, or new entries only (with the birth they must be after), and
    why."""
    if record is None:
        return 'closed ({})'.format(admitted(None, error, '', '', 0, '')[1])
    about = 'record: {}, node {}, epoch {}'.format(
        record.reason or '?', record.node or '?', record.epoch)
    if record.boot_id == boot_id and now_boottime < record.deadline:
        if record.admit == 'all':
            return 'open ({})'.format(about)
        if record.admit == 'new':
            return 'new entries only, born after {!r} ({})'.format(
                record.since + record.slew, about)
        return 'closed (admit none; {})'.format(about)
    why = 'other boot' if record.boot_id != boot_id else 'expired'
    if record.cutoff is None:
        return 'closed ({}, no cutoff; {})'.format(why, about)
    return 'new entries only, born after {!r} ({}; {})'.format(
        record.cutoff + record.slew, why, about)


class Reader:
    """Reads one record file and keeps what it decoded while the file's
    device, inode, size, mtime and ctime stay the same: a check then costs
    one stat.  It keeps the decoded version's file open, so that version's
    inode cannot be freed and handed to a later version (which could then
    match it in every field, timestamps being coarse)."""

    def __init__(self, path):
        self.path = path
        self._key = None
        self._result = None
        self._fp = None

    def read(self):
        """Return (record, None) or (None, error)."""
        try:
            st = os.stat(self.path)
        except OSError as error:
            self._forget()
            return None, error
        if self._key is not None and _key(st) == self._key:
            return self._result
        try:
            fp = open(self.path, 'rb')
        except OSError as error:
            self._forget()
            return None, error
        try:
            key = _key(os.fstat(fp.fileno()))
            data = fp.read(MAX_SIZE + 1)
        except OSError as error:
            fp.close()
            self._forget()
            return None, error
        try:
            result = (decode(data), None)
        except Malformed as error:
            result = (None, error)
        self._forget()
        self._fp, self._key, self._result = fp, key, result
        return result

    def close(self):
        """Close the file the Reader holds; a later read reads afresh."""
        self._forget()

    def __del__(self):
        self._forget()

    def _forget(self):
        if self._fp is not None:
            self._fp.close()
        self._fp = self._key = self._result = None


def _key(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_boot_id(path=BOOT_ID_PATH):
    """This kernel's boot id, trimmed; '' when it cannot be read (no valid
    record carries it, so the record counts as another boot's)."""
    try:
        with open(path, encoding='ascii') as fp:
            return fp.read().strip()
    except (OSError, ValueError):
        return ''


def boottime():
    """CLOCK_BOOTTIME in seconds: it keeps counting while the host is
    suspended, unlike time.monotonic()."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Gate:
    """The gate as one process sees it: its record file, its boot id and
    its clock.

    check() compares the deadline with the clock every time, but stats
    the record file only when the last stat is `recheck` seconds old or
    more (0: every time): a stat costs up to a fifth of the dequeue
    it guards, and a check is never atomic with that dequeue anyway
    (docs/gate.md).  observe() always stats.  on_change, when given, is
    called with describe()'s text whenever the gate is found in a state
    other than the last one reported (a new record, or the deadline
    passing): once per change."""

    def __init__(self, path, boot_id=None, clock=boottime, on_change=None,
                 recheck=0.0):
        self.path = path
        self.reader = Reader(path)
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.clock = clock
        self.on_change = on_change
        self.recheck = recheck
        self._read_at = None
        self._read = (None, None)
        self._seen = self._live = self._text = None

    def _current(self, now, fresh=False):
        if (fresh or self._read_at is None or
                not 0 <= now - self._read_at < self.recheck):
            self._read = self.reader.read()
            self._read_at = now
        return self._read

    def check(self, queue, base):
        """(admitted, reason) for one entry; never raises."""
        try:
            now = self.clock()
            record, error = self._current(now)
            self._note(record, error, now)
            return admitted(record, error, queue, base, now, self.boot_id)
        except Exception:
            return False, CHECK_FAILED

    def observe(self):
        """Stat the record, report the gate's state to on_change if it
        changed, and return whether the gate is closed to every entry
        (closed_to_all); never raises (an error: closed)."""
        try:
            now = self.clock()
            record, error = self._current(now, fresh=True)
            self._note(record, error, now)
            return closed_to_all(record, error, now, self.boot_id)
        except Exception:
            return True

    def state(self):
        """describe() of the gate now; never raises."""
        try:
            record, error = self.reader.read()
            return describe(record, error, self.clock(), self.boot_id)
        except Exception as error:
            return 'closed ({}: {})'.format(CHECK_FAILED, error)

    def _note(self, record, error, now):
        # The state can only change with the record (the Reader keeps one
        # object per version of the file), the kind of error, or the
        # deadline passing; describe() only then.
        if self.on_change is None:
            return
        if record is None:
            seen, live = type(error), None
        else:
            seen = record
            live = record.boot_id == self.boot_id and now < record.deadline
        if seen is self._seen and live is self._live:
            return
        self._seen, self._live = seen, live
        text = describe(record, error, now, self.boot_id)
        if text != self._text:
            self._text = text
            self.on_change(text)
