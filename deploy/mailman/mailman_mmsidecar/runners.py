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

"""Runner records (docs/gate.md, "Runner records"): each runner process
that honours the gate holds an exclusive flock on its own record in
<state dir>/runners/ for its whole life, so the sidecar can count them."""

import fcntl
import json
import os
import re
import secrets
import socket

_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')


class RunnerRecord:
    """A runner record this process holds.  Its descriptor, and so its
    lock, lives as long as this object (or until close())."""

    def __init__(self, fd, path):
        self._fd = fd
        self.path = path
        self.name = os.path.basename(path)

    def close(self):
        """Release the lock: the sidecar no longer counts this runner."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def record_name(host=None, pid=None):
    """<host>-<pid>-<random>.json, from [A-Za-z0-9._-] only."""
    host = _UNSAFE.sub('_', socket.gethostname() if host is None else host)
    if host == '' or host.startswith('.'):
        host = 'host' + host
    pid = os.getpid() if pid is None else pid
    return '{}-{}-{}.json'.format(host, pid, secrets.token_hex(6))


def register(directory, body):
    """Write body (a dict; "v" is set) as a new runner record in directory
    (created 0770 if missing) under an exclusive flock taken before the
    rename, and return the RunnerRecord that keeps the lock."""
    os.makedirs(directory, mode=0o770, exist_ok=True)
    data = json.dumps(dict(body, v=1), separators=(',', ':')).encode()
    name = record_name()
    tmp = os.path.join(directory, '.' + name + '.tmp')
    path = os.path.join(directory, name)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC,
                 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass    # the record counts once it exists; durability is a bonus
    return RunnerRecord(fd, path)

